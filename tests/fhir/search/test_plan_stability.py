"""Search plans that stay cheap without planner statistics, and the statistics hook itself.

Right after a bulk load neither database has statistics; a search that let the planner choose
between "walk every resource of the type" and "look the parameter's rids up" took seconds then
(issue 3 benchmark). These tests pin the query shapes that leave only the cheap plan, and check
that ``Database.analyze`` really produces statistics, also while another connection writes.
"""

from __future__ import annotations

import threading
import time
from typing import Any

from sqlalchemy import event, text

from medcloud.app import _analyze_when_grown
from medcloud.storage.sql.database import Database

P = "http://loinc.org"


def _load(api: Any) -> tuple[str, str]:
    """Two patients; many Observations of one of them, some of a rare code (skew, as in Synthea)."""
    busy = api.create(api.patient("Busy"))
    other = api.create(api.patient("Other"))
    for i in range(12):
        api.create(api.observation(f"Patient/{busy}", "8302-2" if i % 3 == 0 else "29463-7",
                                   when=f"2020-01-{i + 1:02d}"))
    api.create(api.observation(f"Patient/{other}", "8302-2", when="2021-05-05"))
    return busy, other


def _forget_statistics(services: Any) -> None:
    """As right after a bulk load: no statistics (the app's hook analyzed the empty store at start-up,
    and the few resources added since are too few for it to analyze again)."""
    db = services.fhir.db
    if db.is_sqlite:
        with db.engine.connect() as conn:
            conn.exec_driver_sql("DROP TABLE IF EXISTS sqlite_stat1")
            conn.commit()
        db.engine.dispose()  # pooled connections keep the statistics they loaded


def _statements(services: Any, api: Any, path: str, params: dict[str, str]) -> tuple[dict[str, Any], list[Any]]:
    """The search's Bundle and the SELECTs it ran against ``resources`` (SQL text, parameters)."""
    seen: list[Any] = []

    def capture(conn: Any, cursor: Any, statement: str, parameters: Any, context: Any, executemany: bool) -> None:
        if statement.lstrip().upper().startswith("SELECT") and "resource_history" not in statement:
            seen.append((statement, parameters))

    engine = services.fhir.db.engine
    event.listen(engine, "before_cursor_execute", capture)
    try:
        body = api.search(path, params)
    finally:
        event.remove(engine, "before_cursor_execute", capture)
    return body, seen


def _sqlite_plan(services: Any, statement: str, parameters: Any) -> list[str]:
    with services.fhir.db.engine.connect() as conn:
        return [row[-1] for row in conn.exec_driver_sql("EXPLAIN QUERY PLAN " + statement, parameters)]


def _walks_a_type(lines: list[str]) -> list[str]:
    """Plan lines that visit resources by type (every resource of it) or scan a table."""
    return [x for x in lines if "ix_resources_type" in x or x.startswith("SCAN ")]


def test_patient_code_sort_intersects_rid_sets_and_sorts_by_rid_lookups(api, services):
    busy, _ = _load(api)
    _forget_statistics(services)
    body, sql = _statements(services, api, "Observation",
                            {"patient": busy, "code": f"{P}|8302-2", "_sort": "-date", "_total": "accurate"})
    dates = [e["resource"]["effectiveDateTime"] for e in body["entry"]]
    assert body["total"] == 4 and dates == sorted(dates, reverse=True)
    page = next(s for s in sql if "INTERSECT" in s[0] and "max(" in s[0])
    if services.fhir.db.is_sqlite:
        lines = _sqlite_plan(services, *page)
        assert not _walks_a_type(lines), lines
        # the sort key is looked up per matched row by (rid, param), never through (type, param, ...)
        assert [x for x in lines if "idx_date" in x] and all("ix_idx_date_rid_param" in x
                                                              for x in lines if "idx_date" in x), lines
        assert any("COVERING INDEX ix_idx_token_code_system_rid" in x for x in lines), lines


def test_has_chain_and_include_look_rids_up_without_statistics(api, services):
    busy, other = _load(api)
    _forget_statistics(services)
    has = {"_has:Observation:patient:code": f"{P}|29463-7"}
    body, sql = _statements(services, api, "Patient", has)
    assert {e["resource"]["id"] for e in body["entry"]} == {busy}
    chained, sql2 = _statements(services, api, "Observation", {"subject:Patient.name": "Other"})
    assert [e["resource"]["subject"]["reference"] for e in chained["entry"]] == [f"Patient/{other}"]
    inc, sql3 = _statements(services, api, "Observation", {"code": f"{P}|8302-2", "_include": "Observation:patient"})
    assert {e["resource"]["id"] for e in inc["entry"] if e["search"]["mode"] == "include"} == {busy, other}
    if services.fhir.db.is_sqlite:
        for statement, params in [*sql, *sql2, *sql3]:
            if "count(" in statement:
                continue
            lines = _sqlite_plan(services, statement, params)
            assert not _walks_a_type(lines), (statement, lines)
            # _has and _include reach idx_reference through the matched rids, not by scanning a type's references
            assert not [x for x in lines if "idx_reference" in x and "(type=? AND param=?)" in x], (statement, lines)


def test_postgres_never_switches_searches_to_generic_plans(services):
    db = services.fhir.db
    with db.engine.connect() as conn:
        if db.is_sqlite:
            return
        assert conn.execute(text("SHOW plan_cache_mode")).scalar_one() == "force_custom_plan"


def test_analyze_creates_statistics_even_while_another_connection_writes(api, services):
    _load(api)
    db: Database = services.fhir.db
    if not db.is_sqlite:
        db.analyze()
        db.analyze(vacuum=True)
        with db.engine.connect() as conn:
            n = conn.execute(text("SELECT count(*) FROM pg_stats WHERE tablename = 'idx_token'")).scalar_one()
        assert n > 0
        return
    with db.engine.connect() as conn:
        conn.exec_driver_sql("DROP TABLE IF EXISTS sqlite_stat1")
        conn.commit()
    released = threading.Event()

    def writer() -> None:
        with db.write() as conn:  # holds SQLite's write lock for a while, then commits a change
            conn.execute(text("UPDATE resources SET last_updated = last_updated + 1 WHERE rid = 1"))
            released.wait(5)
            time.sleep(0.3)

    t = threading.Thread(target=writer)
    t.start()
    try:
        time.sleep(0.1)
        released.set()
        db.analyze()  # waits for the writer instead of failing with "database is locked"
    finally:
        t.join()
    with db.engine.connect() as conn:
        tables = {r[0] for r in conn.exec_driver_sql("SELECT tbl FROM sqlite_stat1")}
    assert {"resources", "idx_token", "idx_reference"} <= tables


class _Spy:
    def __init__(self, db: Database):
        self.db = db
        self.calls: list[bool] = []

    def read(self) -> Any:
        return self.db.read()

    def analyze(self, *, vacuum: bool = False) -> None:
        self.calls.append(vacuum)


def test_statistics_hook_analyzes_on_growth_and_vacuums_once_growth_stops(api, services):
    spy = _Spy(services.fhir.db)
    check = _analyze_when_grown(spy)  # type: ignore[arg-type]
    check()
    assert spy.calls == [False]  # start-up: statistics, no vacuum
    check()
    assert spy.calls == [False]  # nothing grew, nothing to settle
    # grow by more than a fifth and 1,000 resources (one transaction)
    entries = [{"resource": api.patient(f"P{i}"), "request": {"method": "POST", "url": "Patient"}}
               for i in range(1100)]
    r = api.client.post("/fhir", json={"resourceType": "Bundle", "type": "transaction", "entry": entries})
    assert r.status_code == 200, r.text[:300]
    check()
    assert spy.calls == [False, False]  # grown: analyze
    check()
    assert spy.calls == [False, False, True]  # settled: vacuum (and analyze) once
    check()
    assert spy.calls == [False, False, True]
