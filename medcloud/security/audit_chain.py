"""Hash chain over the audit log: any altered, removed, inserted or reordered entry is detected.

Each entry's hash covers the previous entry's hash and the entry itself::

    hash_i = SHA-256(hash_{i-1} || canonical(entry_i))        hash_0's predecessor = GENESIS

(HMAC-SHA-256 keyed with a server secret when ``key`` is given: then someone who can write the
table but not read the key cannot recompute a consistent chain after editing it.)

``canonical`` covers ``recorded`` and ``content`` but not ``seq``: the chain, not the row
number, is the order of record, and PostgreSQL sequences skip numbers when a transaction rolls
back, so a gap in ``seq`` alone is no evidence. Moving a row to another ``seq`` therefore shows
up as a broken link ("reordered"), not as altered content.

The writer (next session) must append under a lock (``SELECT ... FOR UPDATE`` on the chain head
in PostgreSQL, the write lock in SQLite), computing ``hash`` from the head's ``hash``; see the
schema proposal in docs/security.md (``prev_hash``/``hash`` columns on ``audit_log``).
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

GENESIS = bytes(32)
_DOMAIN = b"medcloud-audit-v1\x00"


@dataclass(frozen=True, slots=True)
class Entry:
    seq: int
    recorded: int  # microseconds since epoch
    content: bytes  # the stored AuditEvent JSON


@dataclass(frozen=True, slots=True)
class Problem:
    """One finding: ``kind`` is altered, reordered, removed, broken-link or truncated."""

    seq: int | None
    kind: str
    detail: str


def canonical(entry: Entry) -> bytes:
    return _DOMAIN + entry.recorded.to_bytes(8, "big", signed=True) + len(entry.content).to_bytes(8, "big") + entry.content


def link(prev_hash: bytes, entry: Entry, key: bytes | None = None) -> bytes:
    """The hash of ``entry`` when it follows an entry whose hash is ``prev_hash``."""
    data = prev_hash + canonical(entry)
    if key is not None:
        return hmac.new(key, data, hashlib.sha256).digest()
    return hashlib.sha256(data).digest()


def chain(entries: Iterable[Entry], *, anchor: bytes = GENESIS, key: bytes | None = None) -> list[bytes]:
    """Hashes of ``entries`` in order, starting after ``anchor``."""
    out, prev = [], anchor
    for e in entries:
        prev = link(prev, e, key)
        out.append(prev)
    return out


def verify(
    entries: Sequence[Entry],
    stored_hashes: Sequence[bytes],
    stored_prev_hashes: Sequence[bytes] | None = None,
    *,
    anchor: bytes = GENESIS,
    key: bytes | None = None,
    head: bytes | None = None,
) -> list[Problem]:
    """Check entries (ordered by ``seq``) against their stored hashes; [] means the log is intact.

    With ``stored_prev_hashes`` (the proposed ``prev_hash`` column) every finding is located
    exactly; without it a failing entry is classified by trying it after the other entries.
    ``head`` is the last hash recorded elsewhere (a checkpoint): without it, deleting the newest
    entries cannot be told from their never having been written.
    """
    if len(stored_hashes) != len(entries) or (stored_prev_hashes is not None and len(stored_prev_hashes) != len(entries)):
        raise ValueError("entries and stored hashes differ in length")
    problems: list[Problem] = []
    position = {h: i for i, h in enumerate(stored_hashes)}
    for i, e in enumerate(entries):
        before = stored_hashes[i - 1] if i else anchor
        if i and e.seq <= entries[i - 1].seq:
            problems.append(Problem(e.seq, "reordered", "entries are not in seq order"))
        if stored_prev_hashes is not None:
            prev = stored_prev_hashes[i]
            if link(prev, e, key) != stored_hashes[i]:
                problems.append(Problem(e.seq, "altered", "content does not match its hash"))
            if prev != before:
                problems.append(_broken(e, i, prev, position, entries))
            continue
        if link(before, e, key) == stored_hashes[i]:
            continue
        # No prev_hash column: find out whether the entry is intact but follows another one.
        follows = next((j for j, h in enumerate(stored_hashes) if j != i - 1 and link(h, e, key) == stored_hashes[i]), None)
        if follows is None and i == 0 and anchor != GENESIS and link(GENESIS, e, key) == stored_hashes[i]:
            follows = -1
        if follows is not None:
            problems.append(Problem(e.seq, "reordered", f"entry belongs after seq {entries[follows].seq}"
                                    if follows >= 0 else "entry belongs at the start of the chain"))
        elif i and e.seq != entries[i - 1].seq + 1:
            problems.append(Problem(e.seq, "removed", f"seq gap after {entries[i - 1].seq} and the chain breaks"))
        else:
            problems.append(Problem(e.seq, "altered", "content or hash does not match the chain"))
    if head is not None and (not stored_hashes or stored_hashes[-1] != head):
        where = "is not in the log" if head not in position else f"is at seq {entries[position[head]].seq}, not last"
        problems.append(Problem(None, "truncated", f"the checkpointed head hash {where}"))
    return problems


def _broken(e: Entry, i: int, prev: bytes, position: dict[bytes, int], entries: Sequence[Entry]) -> Problem:
    j = position.get(prev)
    if j is not None:
        return Problem(e.seq, "reordered", f"entry follows seq {entries[j].seq} in the chain, not its predecessor")
    if i and e.seq != entries[i - 1].seq + 1:
        return Problem(e.seq, "removed", f"seq gap after {entries[i - 1].seq} and the chain breaks")
    return Problem(e.seq, "broken-link", "the preceding entry is missing or was rewritten")
