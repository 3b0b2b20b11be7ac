"""The stored audit trail: append AuditEvents to the hash chain, stream them back, verify the chain.

Appending reads and advances the chain head under a lock: PostgreSQL takes a transaction-level
advisory lock (``Dialect.lock_key``), SQLite's ``BEGIN IMMEDIATE`` already admits one writer, so
every replica and every thread extends the same head and ``seq`` has no gaps. ``verify`` streams
the log in ``seq`` order one page at a time (constant memory, whatever the size of the log) and
checks every entry against its own hash, its link to the previous entry, the search columns
against the content, and the end of the log against the head.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import orjson
from sqlalchemy import Connection, Row, func, insert, select, update

from medcloud.security.audit_chain import GENESIS, Entry, Problem, link
from medcloud.storage.schema import audit_head, audit_log
from medcloud.storage.sql.database import Database

CHAIN_LOCK = "audit-chain"
HEAD_ID = 1
PAGE = 1000

# Search columns copied from the AuditEvent; the order is the check order of verify.
SEARCH_COLUMNS = ("action", "outcome", "subtype", "who", "client_id", "patient", "entity_type", "entity_id",
                  "address")
_LIMITS = {"action": 16, "outcome": 8, "subtype": 32, "who": 256, "client_id": 256, "patient": 64,
           "entity_type": 64, "entity_id": 256, "address": 64}
# DICOM "Application" (DCM 110150): the agent that stands for the client app (SMART client_id).
APPLICATION = "110150"
PATIENT_ROLE = "1"  # http://terminology.hl7.org/CodeSystem/object-role#1 (Patient)


def search_columns(event: dict[str, Any]) -> dict[str, str | None]:
    """The indexed copies of an AuditEvent's fields (the row layout of ``audit_log``)."""
    # Tolerant of any JSON: verify runs this on content an attacker may have rewritten.
    event = _obj(event)
    cols: dict[str, str | None] = dict.fromkeys(SEARCH_COLUMNS)
    cols["action"] = _str(event.get("action")) or "E"
    cols["outcome"] = _str(event.get("outcome")) or "0"
    subtypes = _list(event.get("subtype"))
    cols["subtype"] = _str(_obj(subtypes[0]).get("code")) if subtypes else None
    for agent in map(_obj, _list(event.get("agent"))):
        who = _obj(agent.get("who"))
        ident = _str(_obj(who.get("identifier")).get("value")) or _str(who.get("display"))
        codes = [_obj(c).get("code") for c in _list(_obj(agent.get("type")).get("coding"))]
        if agent.get("requestor") is True and cols["who"] is None:
            cols["who"] = ident
            cols["address"] = _str(_obj(agent.get("network")).get("address"))
            cols["client_id"] = cols["client_id"] or _str(agent.get("altId"))  # records before 0003
        elif APPLICATION in codes:
            cols["client_id"] = ident
    for entity in map(_obj, _list(event.get("entity"))):
        what = _obj(entity.get("what"))
        role = _obj(entity.get("role")).get("code")
        ref = _str(what.get("reference"))
        if role == PATIENT_ROLE and ref and ref.startswith("Patient/"):
            cols["patient"] = ref[len("Patient/"):]
        elif cols["entity_type"] is None:
            if ref and "/" in ref:
                cols["entity_type"], cols["entity_id"] = ref.split("/", 1)
            else:
                cols["entity_type"] = _str(_obj(entity.get("type")).get("code")) or _str(what.get("display"))
    return clip(cols)


def _str(v: Any) -> str | None:
    return v if isinstance(v, str) and v else None


def _obj(v: Any) -> dict[str, Any]:
    return v if isinstance(v, dict) else {}


def _list(v: Any) -> list[Any]:
    return v if isinstance(v, list) else []


# -- append --------------------------------------------------------------------------------------


# One entry to append: (recorded_us, AuditEvent JSON, its search columns or None to derive them).
Item = tuple[int, bytes, Mapping[str, str | None] | None]
_ROW = ("seq", "recorded", "content", "prev_hash", "hash", *SEARCH_COLUMNS)


def append(db: Database, items: Sequence[Item], *, key: bytes | None = None) -> int:
    """Chain and insert AuditEvents in one transaction, after the current head; returns the last seq."""
    with db.write() as conn:
        return append_on(conn, db, items, key=key)


def append_on(conn: Connection, db: Database, items: Sequence[Item], *, key: bytes | None = None) -> int:
    db.dialect.lock_key(conn, CHAIN_LOCK)
    seq, prev = head(conn)
    rows = []
    for recorded, content, columns in items:
        seq += 1
        h = link(prev, Entry(seq, recorded, content), key)
        cols = columns if columns is not None else search_columns(orjson.loads(content))
        rows.append((seq, recorded, content, prev, h, *(cols[c] for c in SEARCH_COLUMNS)))
        prev = h
    if rows:
        # The driver's executemany / COPY: SQLAlchemy's per-row processing would double the cost.
        db.dialect.bulk_insert(conn, audit_log, _ROW, rows)
        conn.execute(update(audit_head).where(audit_head.c.id == HEAD_ID).values(seq=seq, hash=prev))
    return seq


def clip(columns: dict[str, str | None]) -> dict[str, str | None]:
    """Cut values to their column sizes (PostgreSQL refuses longer ones; the JSON keeps them whole)."""
    return {k: (v[:_LIMITS[k]] if v is not None else None) for k, v in columns.items()}


def head(conn: Connection) -> tuple[int, bytes]:
    """The chain head ``(seq, hash)`` to append after; creates the head row when it is missing.

    Call under the chain lock. ``seq`` continues after the larger of the head and the log's last
    row: a row slipped in without the lock must not make every later append fail on the primary
    key (verify reports it instead).
    """
    last_seq = select(func.max(audit_log.c.seq)).scalar_subquery()
    row = conn.execute(select(audit_head.c.seq, audit_head.c.hash, last_seq.label("last"))
                       .where(audit_head.c.id == HEAD_ID)).first()
    if row is None:
        tail = conn.execute(select(audit_log.c.seq, audit_log.c.hash).order_by(audit_log.c.seq.desc()).limit(1)).first()
        seq, prev = (int(tail.seq), bytes(tail.hash)) if tail is not None else (0, GENESIS)
        conn.execute(insert(audit_head).values(id=HEAD_ID, seq=seq, hash=prev))
        return seq, prev
    return max(int(row.seq), int(row.last or 0)), bytes(row.hash)


# -- read ----------------------------------------------------------------------------------------


def rows(db: Database, *, after: int = 0, since_us: int | None = None, page: int = PAGE) -> Iterator[Row[Any]]:
    """Every entry in ``seq`` order, fetched a page at a time (keyset), each page its own snapshot."""
    while True:
        stmt = select(audit_log).where(audit_log.c.seq > after).order_by(audit_log.c.seq).limit(page)
        if since_us is not None:
            stmt = stmt.where(audit_log.c.recorded >= since_us)
        with db.read() as conn:
            batch = conn.execute(stmt).all()
        yield from batch
        if len(batch) < page:
            return
        after = batch[-1].seq


def as_resource(seq: int, content: bytes) -> dict[str, Any]:
    """The stored AuditEvent as served: the log position is its id.

    Content that is not a JSON object (only tampering makes it so) is served as an AuditEvent
    that says so, rather than failing the whole search or export.
    """
    try:
        ev = orjson.loads(content)
    except orjson.JSONDecodeError:
        ev = None
    if not isinstance(ev, dict):
        ev = {"outcome": "12", "outcomeDesc": "the stored content is not an AuditEvent: run `medcloud audit verify`"}
    return {"resourceType": "AuditEvent", "id": str(seq), **{k: v for k, v in ev.items() if k != "resourceType"}}


# -- verify --------------------------------------------------------------------------------------


@dataclass(slots=True)
class Report:
    """The outcome of ``verify``: ``problems`` holds the first ``limit`` findings, ``problem_count`` all."""

    entries: int = 0
    first_seq: int | None = None
    last_seq: int | None = None
    head_hash: bytes = GENESIS
    problems: list[Problem] = field(default_factory=list)
    problem_count: int = 0

    @property
    def ok(self) -> bool:
        return self.problem_count == 0


def verify(db: Database, *, key: bytes | None = None, page: int = PAGE, limit: int = 100) -> Report:
    """Check the whole stored chain, streaming it; entries appended while it runs are checked too."""
    report = Report()
    prev_seq, prev_hash = 0, GENESIS

    def problem(p: Problem) -> None:
        report.problem_count += 1
        if len(report.problems) < limit:
            report.problems.append(p)

    stored_head: Any = None  # Row | None
    while True:
        with db.read() as conn:
            # The head first, then the rows: every row the head counts was committed with it, so
            # when no rows are left the head read here must name the last row verified.
            stored_head = conn.execute(select(audit_head.c.seq, audit_head.c.hash)
                                       .where(audit_head.c.id == HEAD_ID)).first()
            batch = conn.execute(select(audit_log).where(audit_log.c.seq > prev_seq)
                                 .order_by(audit_log.c.seq).limit(page)).all()
            for row in batch:
                for p in _check(conn, row, prev_seq, prev_hash, key):
                    problem(p)
                prev_seq, prev_hash = int(row.seq), bytes(row.hash)
                report.entries += 1
                report.first_seq = report.first_seq if report.first_seq is not None else prev_seq
        if len(batch) < page:
            break
    report.last_seq = prev_seq if report.entries else None
    report.head_hash = prev_hash
    for p in _check_head(stored_head, report.entries, prev_seq, prev_hash):
        problem(p)
    return report


def _check(conn: Connection, row: Row[Any], prev_seq: int, prev_hash: bytes, key: bytes | None) -> list[Problem]:
    seq, content, stored_prev = int(row.seq), bytes(row.content), bytes(row.prev_hash)
    out = []
    if link(stored_prev, Entry(seq, int(row.recorded), content), key) != bytes(row.hash):
        out.append(Problem(seq, "altered", "the entry does not match its hash (content, time or hash changed)"))
    if stored_prev != prev_hash:
        out.append(_broken(conn, seq, stored_prev, prev_seq))
    elif seq != prev_seq + 1:
        gap = f"seq {prev_seq + 1}" if seq == prev_seq + 2 else f"seq {prev_seq + 1}..{seq - 1}"
        out.append(Problem(seq, "removed", f"{gap} missing (the chain was rebuilt over the gap)"))
    try:
        derived = search_columns(orjson.loads(content))
    except orjson.JSONDecodeError:
        out.append(Problem(seq, "altered", "the content is not JSON"))
        return out
    for name in SEARCH_COLUMNS:
        if getattr(row, name) != derived[name]:
            out.append(Problem(seq, "altered", f"column {name} is {getattr(row, name)!r} but the AuditEvent says "
                                               f"{derived[name]!r}"))
            break
    return out


def _broken(conn: Connection, seq: int, stored_prev: bytes, prev_seq: int) -> Problem:
    """Classify an entry whose ``prev_hash`` is not the hash of the entry before it."""
    if seq != prev_seq + 1:
        missing = f"seq {prev_seq + 1}" if seq == prev_seq + 2 else f"seq {prev_seq + 1}..{seq - 1}"
        if prev_seq == 0:
            missing = f"the entries before seq {seq}"
        return Problem(seq, "removed", f"{missing} missing: the entry links to a hash that is not in the log")
    other = conn.execute(select(audit_log.c.seq).where(audit_log.c.hash == stored_prev, audit_log.c.seq != seq)
                         .limit(1)).scalar()
    if other is not None:
        return Problem(seq, "reordered", f"the entry chains from seq {other}, not from seq {prev_seq}")
    if stored_prev == GENESIS and prev_seq:
        return Problem(seq, "reordered", "the entry starts the chain but is not the first")
    return Problem(seq, "broken-link", f"the entry links to a hash no entry has (seq {prev_seq} was rewritten "
                                       "or replaced)")


def _check_head(stored: Row[Any] | None, entries: int, last_seq: int, last_hash: bytes) -> list[Problem]:
    if stored is None:
        return [Problem(None, "truncated", "the chain head row is missing")] if entries else []
    h_seq, h_hash = int(stored.seq), bytes(stored.hash)
    if h_seq > last_seq:
        return [Problem(None, "truncated", f"the chain head is at seq {h_seq} but the log ends at seq {last_seq}: "
                                           "the newest entries were removed")]
    if h_seq < last_seq:
        return [Problem(h_seq + 1, "broken-link", f"entries after the chain head (seq {h_seq}) were added without "
                                                  "extending it")]
    if h_hash != last_hash:
        return [Problem(last_seq, "altered", "the last entry's hash differs from the chain head")]
    return []
