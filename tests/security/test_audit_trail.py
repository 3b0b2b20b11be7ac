"""The stored audit trail: concurrent appends keep one valid chain, writes are durable, close drains."""

from __future__ import annotations

import logging
import os
import threading
import uuid

import orjson
import pytest
from sqlalchemy import create_engine, func, insert, select, text
from sqlalchemy.exc import IntegrityError

from medcloud.security import audit_store
from medcloud.security.audit import AuditRecord, AuditTrail, audit_event, record_columns
from medcloud.storage.migrate import upgrade
from medcloud.storage.schema import audit_head, audit_log
from medcloud.storage.sql.database import Database

T0 = 1_700_000_000_000_000


def _record(i: int, *, durable: bool = False, who: str = "alice", **kw) -> AuditRecord:
    base = dict(recorded=T0 + i, interaction="read", who=who, client_id="app", source_ip="10.0.0.1",
                resource=f"Patient/p{i}", patient=None, status=200, durable=durable)
    base.update(kw)
    return AuditRecord(**base)  # type: ignore[arg-type]


def _count(db: Database) -> int:
    with db.read() as conn:
        return conn.execute(select(func.count()).select_from(audit_log)).scalar_one()


def test_concurrent_appends_from_threads_and_replicas_keep_one_valid_chain(backend, caplog):
    caplog.set_level(logging.ERROR, logger="medcloud.audit")
    upgrade(db0 := Database.connect(backend))
    replicas = [Database.connect(backend), Database.connect(backend)]  # two "processes" on one database
    trails = [AuditTrail(db, flush_every=0.01, max_batch=7) for db in replicas]
    threads, per_thread = 8, 40

    def work(t: int) -> None:
        trail = trails[t % 2]
        for i in range(per_thread):
            trail.record(_record(t * 1000 + i, durable=(i % 5 == 0), who=f"user{t}"))

    workers = [threading.Thread(target=work, args=(t,)) for t in range(threads)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    for trail in trails:
        trail.close()
    try:
        report = audit_store.verify(db0)
        assert report.ok, report.problems
        assert report.entries == threads * per_thread
        assert (report.first_seq, report.last_seq) == (1, threads * per_thread)  # gap-free under the lock
        assert "could not append" not in caplog.text  # no append lost a race and had to retry
        with db0.read() as conn:
            stored_head = conn.execute(select(audit_head.c.seq, audit_head.c.hash)).one()
        assert (stored_head.seq, bytes(stored_head.hash)) == (report.last_seq, report.head_hash)
    finally:
        for db in (db0, *replicas):
            db.dispose()


def test_close_drains_the_buffer(services):
    trail = AuditTrail(services.db, flush_every=3600)  # the timer never fires during the test
    for i in range(250):
        trail.record(_record(i))
    assert _count(services.db) == 0 and trail.pending() == 250
    trail.close()
    assert _count(services.db) == 250 and trail.pending() == 0
    assert audit_store.verify(services.db).ok


def test_a_durable_record_is_committed_when_record_returns_and_takes_the_queue_with_it(services):
    trail = AuditTrail(services.db, flush_every=3600)
    for i in range(3):
        trail.record(_record(i))  # buffered reads
    assert _count(services.db) == 0
    trail.record(_record(10, durable=True, interaction="create", status=201))
    assert _count(services.db) == 4  # group commit: the write flushed the reads queued before it
    trail.record(_record(11, interaction="authenticate", status=401, resource=None))
    assert _count(services.db) == 5  # authentication failures are durable without the flag
    trail.close()


def test_a_failed_append_is_retried_not_lost(services, caplog):
    trail = AuditTrail(services.db, flush_every=3600)
    good = audit_store.append
    calls = {"n": 0}

    def flaky(db, events, **kw):
        calls["n"] += 1
        if calls["n"] == 1:
            raise RuntimeError("database went away")
        return good(db, events, **kw)

    audit_store.append = flaky  # type: ignore[assignment]
    try:
        trail.record(_record(1, durable=True))
        assert _count(services.db) == 0 and trail.pending() == 1
        assert "could not append 1 audit records" in caplog.text
        trail.record(_record(2, durable=True))
        assert _count(services.db) == 2
    finally:
        audit_store.append = good  # type: ignore[assignment]
        trail.close()
    assert audit_store.verify(services.db).ok


def test_write_audit_row_exists_before_the_http_response_and_reads_stay_buffered(client, services):
    trail = AuditTrail(services.db, flush_every=3600)
    services.fhir.guard.audit_trail = trail
    try:
        r = client.post("/fhir/Patient", json={"resourceType": "Patient", "gender": "female"})
        assert r.status_code == 201
        pid = r.json()["id"]
        with services.db.read() as conn:
            rows = conn.execute(select(audit_log.c.subtype, audit_log.c.entity_type, audit_log.c.action)).all()
        assert [tuple(x) for x in rows] == [("create", "Patient", "C")]
        assert client.get(f"/fhir/Patient/{pid}").status_code == 200
        assert _count(services.db) == 1  # the read is still buffered
    finally:
        trail.close()
    assert _count(services.db) == 2


def test_bundle_entries_are_audited_without_deadlocking_sqlite(client, services):
    trail = AuditTrail(services.db, flush_every=3600)
    services.fhir.guard.audit_trail = trail
    try:
        pid = client.post("/fhir/Patient", json={"resourceType": "Patient"}).json()["id"]
        bundle = {"resourceType": "Bundle", "type": "transaction", "entry": [
            {"request": {"method": "PUT", "url": f"Patient/{pid}"},
             "resource": {"resourceType": "Patient", "id": pid, "gender": "male"}},
            {"request": {"method": "POST", "url": "Observation"},
             "resource": {"resourceType": "Observation", "status": "final", "code": {"text": "x"}}},
        ]}
        r = client.post("/fhir", json=bundle)
        assert r.status_code == 200, r.text
        with services.db.read() as conn:
            rows = conn.execute(select(audit_log.c.subtype, audit_log.c.entity_type, audit_log.c.outcome)
                                .order_by(audit_log.c.seq)).all()
        # Every entry (the bulk-written create too), then the Bundle, all committed before the response.
        assert [tuple(x) for x in rows] == [("create", "Patient", "0"), ("update", "Patient", "0"),
                                            ("create", "Observation", "0"), ("batch", None, "0")]
        bundle["type"] = "batch"
        bundle["entry"][1]["resource"]["status"] = "not-a-status"
        r = client.post("/fhir", json=bundle)
        assert r.status_code == 200, r.text
        with services.db.read() as conn:
            rows = conn.execute(select(audit_log.c.subtype, audit_log.c.entity_type, audit_log.c.outcome)
                                .where(audit_log.c.seq > 4).order_by(audit_log.c.seq)).all()
        assert [tuple(x) for x in rows] == [("create", "Observation", "4"), ("update", "Patient", "0"),
                                            ("batch", None, "0")]  # batch order: POST before PUT
    finally:
        trail.close()


def test_the_stored_event_is_a_fhir_auditevent_and_its_columns_match():
    ev = audit_event(AuditRecord(recorded=T0, interaction="update", who="dr-who", client_id="ehr-app",
                                 source_ip="192.168.1.7", resource="Observation/o1", patient="p1", status=200))
    assert ev["action"] == "U" and ev["outcome"] == "0" and ev["outcomeDesc"] == "HTTP 200 OK"
    assert ev["subtype"] == [{"system": "http://hl7.org/fhir/restful-interaction", "code": "update"}]
    assert ev["agent"][0]["requestor"] is True and ev["agent"][0]["network"]["address"] == "192.168.1.7"
    assert ev["agent"][1]["who"]["identifier"]["value"] == "ehr-app"
    assert ev["entity"][1]["role"]["code"] == "1"
    assert audit_store.search_columns(ev) == {
        "action": "U", "outcome": "0", "subtype": "update", "who": "dr-who", "client_id": "ehr-app",
        "patient": "p1", "entity_type": "Observation", "entity_id": "o1", "address": "192.168.1.7"}


@pytest.mark.parametrize("record", [
    _record(1),
    _record(2, who="", client_id=None, source_ip=None, resource=None, patient=None, status=401,
            interaction="authenticate"),
    _record(3, resource="Observation", patient="p9", status=503, interaction="search-type"),
    _record(4, who="x" * 300, resource="Patient/" + "y" * 300, source_ip="2001:db8::1", interaction="$export"),
])
def test_the_writer_columns_equal_what_verify_derives_from_the_json(record):
    # The appender takes the columns from the record (fast); verify re-derives them from the JSON.
    assert record_columns(record) == audit_store.search_columns(orjson.loads(orjson.dumps(audit_event(record))))


# -- migration 0003 chains what older versions wrote -----------------------------------------------------

@pytest.fixture(params=["sqlite", "postgres"])
def fresh_url(request, tmp_path):
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'old.db'}"
        return
    request.getfixturevalue("pg_url")  # skips (or fails in CI) when PostgreSQL is not reachable
    pg_admin = os.environ.get("MEDCLOUD_TEST_PG", "postgresql+psycopg://postgres@127.0.0.1:5432/postgres")
    name = f"medcloud_mig_{uuid.uuid4().hex[:8]}"
    admin = create_engine(pg_admin, isolation_level="AUTOCOMMIT")
    with admin.connect() as c:
        c.execute(text(f'CREATE DATABASE "{name}"'))
    yield pg_admin.rsplit("/", 1)[0] + f"/{name}"
    with admin.connect() as c:
        c.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    admin.dispose()


def test_migration_chains_and_renumbers_rows_written_before_it(fresh_url):
    db = Database.connect(fresh_url)
    try:
        upgrade(db, "0002")
        old = [
            # the AuditEvent of revision 0001: who.display, client in altId, HTTP status in outcome
            {"seq": 3, "recorded": T0 + 1, "action": "create", "outcome": "201", "content": orjson.dumps({
                "resourceType": "AuditEvent", "subtype": [{"code": "create"}], "action": "C", "outcome": "0",
                "agent": [{"who": {"display": "bob"}, "requestor": True, "altId": "cli",
                           "network": {"address": "127.0.0.1", "type": "2"}}],
                "entity": [{"what": {"reference": "Patient/x"}}]})},
            {"seq": 7, "recorded": T0 + 2, "action": "read", "outcome": "404", "content": orjson.dumps({
                "resourceType": "AuditEvent", "subtype": [{"code": "read"}], "action": "R", "outcome": "4",
                "agent": [{"who": {"display": "bob"}, "requestor": True}]})},
        ]
        old_log = text("INSERT INTO audit_log (seq, recorded, action, outcome, content) "
                       "VALUES (:seq, :recorded, :action, :outcome, :content)")
        with db.engine.begin() as conn:
            conn.execute(old_log, old)
        upgrade(db)
        with db.read() as conn:
            rows = conn.execute(select(audit_log).order_by(audit_log.c.seq)).all()
        assert [(r.seq, r.subtype, r.action, r.outcome, r.who, r.client_id, r.entity_type, r.entity_id)
                for r in rows] == [(1, "create", "C", "0", "bob", "cli", "Patient", "x"),
                                   (2, "read", "R", "4", "bob", None, None, None)]
        report = audit_store.verify(db)
        assert report.ok and report.entries == 2, report.problems
        audit_store.append(db, [(T0 + 3, orjson.dumps(audit_event(_record(3))), None)])
        assert audit_store.verify(db).entries == 3 and audit_store.verify(db).ok
        # and the audit_log insert of revision 0001 (no chain columns) is refused now
        with pytest.raises(IntegrityError), db.engine.begin() as conn:
            conn.execute(insert(audit_log).values(recorded=1, action="R", outcome="0", content=b"{}"))
    finally:
        db.dispose()
