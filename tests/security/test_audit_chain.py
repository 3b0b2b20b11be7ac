"""The audit hash chain catches an altered, removed, reordered or truncated log."""

from __future__ import annotations

import orjson
import pytest

from medcloud.security.audit_chain import GENESIS, Entry, chain, link, verify


def _log(n: int = 10) -> list[Entry]:
    return [Entry(seq=i, recorded=1_700_000_000_000_000 + i,
                  content=orjson.dumps({"resourceType": "AuditEvent", "action": "R", "n": i}))
            for i in range(1, n + 1)]


def _rows(entries, key=None):
    hashes = chain(entries, key=key)
    return [(e, h, p) for e, h, p in zip(entries, hashes, [GENESIS, *hashes[:-1]], strict=True)]


def _split(rows):
    return [r[0] for r in rows], [r[1] for r in rows], [r[2] for r in rows]


@pytest.fixture(params=["with-prev-column", "hash-only"])
def check(request):
    def run(rows, **kw):
        entries, hashes, prevs = _split(rows)
        return verify(entries, hashes, prevs if request.param == "with-prev-column" else None, **kw)
    return run


def test_intact_log_has_no_problems(check):
    assert check(_rows(_log())) == []


def test_altered_entry_is_caught_at_its_seq(check):
    rows = _rows(_log())
    e = rows[3][0]
    rows[3] = (Entry(e.seq, e.recorded, e.content.replace(b'"R"', b'"D"')), rows[3][1], rows[3][2])
    problems = check(rows)
    assert [(p.seq, p.kind) for p in problems] == [(4, "altered")]


def test_altered_timestamp_is_caught(check):
    rows = _rows(_log())
    e = rows[0][0]
    rows[0] = (Entry(e.seq, e.recorded + 1, e.content), rows[0][1], rows[0][2])
    assert [(p.seq, p.kind) for p in check(rows)] == [(1, "altered")]


def test_removed_entry_is_caught_at_the_next_seq(check):
    rows = _rows(_log())
    del rows[4]
    assert [(p.seq, p.kind) for p in check(rows)] == [(6, "removed")]


def test_two_reordered_entries_are_caught(check):
    rows = _rows(_log())
    # swap the seq numbers of entries 4 and 5: ordered by seq, 5's content now comes first
    a, b = rows[3], rows[4]
    rows[3] = (Entry(4, b[0].recorded, b[0].content), b[1], b[2])
    rows[4] = (Entry(5, a[0].recorded, a[0].content), a[1], a[2])
    problems = check(rows)
    assert problems and all(p.kind == "reordered" for p in problems)
    assert {p.seq for p in problems} <= {4, 5, 6}


def test_removed_newest_entries_need_the_checkpointed_head(check):
    rows = _rows(_log())
    head = rows[-1][1]
    assert check(rows[:-2]) == []  # indistinguishable from never written...
    problems = check(rows[:-2], head=head)
    assert [(p.seq, p.kind) for p in problems] == [(None, "truncated")]  # ...unless a checkpoint exists


def test_rewritten_chain_after_an_edit_is_caught_by_the_key_or_the_head():
    entries = _log()
    key = b"k" * 32
    hashes = chain(entries, key=key)
    forged = list(entries)
    forged[2] = Entry(3, entries[2].recorded, b'{"forged":true}')
    rehashed = chain(forged)  # the forger does not know the key
    assert [(p.seq, p.kind) for p in verify(forged, rehashed, key=key)][0] == (1, "altered")
    assert verify(forged, rehashed) == []  # unkeyed and without a checkpoint it would pass
    assert verify(forged, rehashed, head=hashes[-1])[0].kind == "truncated"


def test_verifying_a_slice_starts_from_the_previous_hash():
    entries = _log()
    hashes = chain(entries)
    assert verify(entries[5:], hashes[5:], anchor=hashes[4]) == []
    assert verify(entries[5:], hashes[5:])[0].kind in ("altered", "reordered")


def test_link_depends_on_predecessor_and_content():
    e = _log(1)[0]
    assert link(GENESIS, e) != link(b"\x01" * 32, e)
    assert link(GENESIS, e) != link(GENESIS, Entry(e.seq, e.recorded, e.content + b" "))
    assert link(GENESIS, e) == link(GENESIS, Entry(99, e.recorded, e.content))  # seq is not hashed
