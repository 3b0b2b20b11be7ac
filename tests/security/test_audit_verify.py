"""``medcloud audit verify`` catches every kind of tampering with the stored chain; ``audit export`` writes it."""

from __future__ import annotations

from pathlib import Path

import orjson
import pytest
from sqlalchemy import delete, select, update
from typer.testing import CliRunner

from medcloud.cli import app
from medcloud.security import audit_store
from medcloud.security.audit import AuditRecord, audit_event
from medcloud.storage.migrate import upgrade
from medcloud.storage.schema import audit_head, audit_log
from medcloud.storage.sql.database import Database

T0 = 1_700_000_000_000_000  # 2023-11-14T22:13:20Z
N = 12


@pytest.fixture
def db(backend):
    database = Database.connect(backend)
    upgrade(database)
    events = []
    for i in range(1, N + 1):
        r = AuditRecord(recorded=T0 + i * 1_000_000, interaction="read", who=f"user{i % 3}", client_id="app",
                        source_ip="10.1.2.3", resource=f"Patient/p{i}", patient=None, status=200)
        events.append((r.recorded, orjson.dumps(audit_event(r)), None))
    audit_store.append(database, events[:5])  # two appends: the second continues the first's head
    audit_store.append(database, events[5:])
    yield database
    database.dispose()


def _verify(backend: str) -> tuple[int, str]:
    result = CliRunner().invoke(app, ["audit", "verify", "--db", backend])
    return result.exit_code, result.output


def _row(db: Database, seq: int):
    with db.read() as conn:
        return conn.execute(select(audit_log).where(audit_log.c.seq == seq)).one()


def _set(db: Database, seq: int, **values) -> None:
    with db.write() as conn:
        conn.execute(update(audit_log).where(audit_log.c.seq == seq).values(**values))


def test_an_intact_chain_exits_0_with_a_summary(db, backend):
    code, output = _verify(backend)
    assert code == 0, output
    assert f"intact: {N} entries (seq 1..{N})" in output
    assert _row(db, N).hash.hex() in output


def test_an_empty_log_is_intact(backend):
    database = Database.connect(backend)
    upgrade(database)
    database.dispose()
    code, output = _verify(backend)
    assert code == 0 and "intact: 0 entries" in output, output


def test_altered_content_is_named(db, backend):
    ev = orjson.loads(_row(db, 5).content)
    ev["outcome"] = "8"
    _set(db, 5, content=orjson.dumps(ev))
    code, output = _verify(backend)
    assert code == 1
    assert "first bad entry seq 5: altered" in output


@pytest.mark.parametrize("content", [b"[]", b"not json", b'{"agent": "x", "subtype": {}, "entity": [1, null]}'])
def test_garbage_content_is_named_not_a_crash(db, backend, tmp_path: Path, content: bytes):
    _set(db, 4, content=content)
    code, output = _verify(backend)
    assert code == 1 and "first bad entry seq 4: altered" in output
    out = tmp_path / "x.ndjson"  # and export still writes every entry
    result = CliRunner().invoke(app, ["audit", "export", "--out", str(out), "--db", backend])
    assert result.exit_code == 0, result.output
    assert len(out.read_bytes().splitlines()) == N


def test_an_altered_time_is_named(db, backend):
    _set(db, 7, recorded=_row(db, 7).recorded + 1)
    code, output = _verify(backend)
    assert code == 1 and "first bad entry seq 7: altered" in output


def test_a_removed_entry_is_named(db, backend):
    with db.write() as conn:
        conn.execute(delete(audit_log).where(audit_log.c.seq == 6))
    code, output = _verify(backend)
    assert code == 1
    assert "first bad entry seq 7: removed: seq 6 missing" in output


def test_removing_the_first_entries_is_named(db, backend):
    with db.write() as conn:
        conn.execute(delete(audit_log).where(audit_log.c.seq <= 2))
    code, output = _verify(backend)
    assert code == 1 and "first bad entry seq 3: removed" in output


def test_two_reordered_entries_are_named(db, backend):
    a, b = _row(db, 4), _row(db, 5)
    cols = ("recorded", "content", "prev_hash", "hash", *audit_store.SEARCH_COLUMNS)
    _set(db, 4, **{c: getattr(b, c) for c in cols})
    _set(db, 5, **{c: getattr(a, c) for c in cols})
    code, output = _verify(backend)
    assert code == 1
    assert "first bad entry seq 4: reordered: the entry chains from seq 5, not from seq 3" in output


def test_an_altered_hash_is_named(db, backend):
    _set(db, 8, hash=bytes(32))
    code, output = _verify(backend)
    assert code == 1
    assert "first bad entry seq 8: altered" in output
    assert "also seq 9: broken-link" in output  # and the next entry no longer links to it


def test_a_rewritten_search_column_is_named(db, backend):
    _set(db, 3, who="someone-else")  # content and hashes untouched: only the search copy lies
    code, output = _verify(backend)
    assert code == 1
    assert "first bad entry seq 3: altered: column who is 'someone-else'" in output


def test_removing_the_newest_entries_is_caught_by_the_head(db, backend):
    with db.write() as conn:
        conn.execute(delete(audit_log).where(audit_log.c.seq >= N - 1))
    code, output = _verify(backend)
    assert code == 1
    assert f"truncated: the chain head is at seq {N} but the log ends at seq {N - 2}" in output


def test_a_forged_rechained_tail_without_the_head_is_caught(db, backend):
    with db.write() as conn:
        conn.execute(delete(audit_head))
    code, output = _verify(backend)
    assert code == 1 and "the chain head row is missing" in output


def test_a_row_appended_without_extending_the_head_is_caught(db, backend):
    from medcloud.security.audit_chain import Entry, link

    last = _row(db, N)
    content = bytes(last.content)
    h = link(bytes(last.hash), Entry(N + 1, last.recorded, content))
    cols = {c: getattr(last, c) for c in audit_store.SEARCH_COLUMNS}
    with db.write() as conn:  # a perfectly chained row, but the head was not advanced (no lock taken)
        conn.execute(audit_log.insert().values(seq=N + 1, recorded=last.recorded, content=content,
                                               prev_hash=bytes(last.hash), hash=h, **cols))
    code, output = _verify(backend)
    assert code == 1
    assert f"first bad entry seq {N + 1}: broken-link: entries after the chain head (seq {N})" in output


def test_appends_after_tampering_keep_the_damage_visible(db, backend):
    with db.write() as conn:
        conn.execute(delete(audit_log).where(audit_log.c.seq == N))
    r = AuditRecord(recorded=T0, interaction="read", who="x", client_id=None, source_ip=None, resource=None,
                    patient=None, status=200)
    audit_store.append(db, [(r.recorded, orjson.dumps(audit_event(r)), None)])
    code, output = _verify(backend)
    assert code == 1 and f"first bad entry seq {N + 1}: removed: seq {N} missing" in output


def test_a_database_that_is_not_there_exits_2(tmp_path: Path):
    result = CliRunner().invoke(app, ["audit", "verify", "--data-dir", str(tmp_path / "nothing")])
    assert result.exit_code == 2 and "no database" in result.output


def test_export_writes_ndjson_auditevents(db, backend, tmp_path: Path):
    out = tmp_path / "audit" / "events.ndjson"
    result = CliRunner().invoke(app, ["audit", "export", "--out", str(out), "--db", backend])
    assert result.exit_code == 0, result.output
    lines = [orjson.loads(x) for x in out.read_bytes().splitlines()]
    assert [e["id"] for e in lines] == [str(i) for i in range(1, N + 1)]
    assert all(e["resourceType"] == "AuditEvent" and e["subtype"][0]["code"] == "read" for e in lines)
    since = "2023-11-14T22:13:30Z"  # T0 + 10 s: entries 10, 11, 12
    result = CliRunner().invoke(app, ["audit", "export", "--out", str(out), "--since", since, "--db", backend])
    assert result.exit_code == 0, result.output
    assert [orjson.loads(x)["id"] for x in out.read_bytes().splitlines()] == ["10", "11", "12"]


def test_export_refuses_a_bad_since(backend, tmp_path: Path):
    result = CliRunner().invoke(app, ["audit", "export", "--out", str(tmp_path / "x.ndjson"), "--since", "yesterday",
                                      "--db", backend])
    assert result.exit_code == 2 and "invalid --since" in result.output
    assert not (tmp_path / "x.ndjson").exists()


def test_verify_streams_in_pages(db):
    report = audit_store.verify(db, page=5)  # pages of 5 over 12 entries: the links across pages hold
    assert report.ok and report.entries == N
    _set(db, 6, hash=bytes(32))  # the first entry of the second page
    report = audit_store.verify(db, page=5)
    assert [(p.seq, p.kind) for p in report.problems] == [(6, "altered"), (7, "broken-link")]
