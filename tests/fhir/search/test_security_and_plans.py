"""The authorization seam on matches and includes, and that typical searches are answered from indexes."""

from __future__ import annotations

import pytest
from sqlalchemy import select, text

from medcloud.fhir.search.parse import WarnFn
from medcloud.fhir.search.plan import Planner, base_conditions, page_query
from medcloud.storage.schema import resources


class _HideOne:
    """Allows everything except reading Patient/hidden (as a security policy would)."""

    def may(self, principal, interaction, rtype):
        return True

    def may_read(self, principal, stored):
        return not (stored.type == "Patient" and stored.id == "hidden")

    def may_write(self, principal, rtype, resource):
        return True

    def may_delete(self, principal, stored):
        return True

    def read_filter(self, principal, rtype):
        return None  # no SQL restriction: exercises the per-resource filter behind it


def test_matches_and_includes_the_guard_refuses_are_left_out(api, services):
    api.put(api.patient("Seen", id="seen"))
    api.put(api.patient("Hidden", id="hidden"))
    api.create(api.observation("Patient/hidden", "x"))
    api.create(api.observation("Patient/seen", "x"))
    services.fhir.guard.policy = _HideOne()
    assert api.ids("Patient") == {"seen"}
    b = api.search("Observation", {"_include": "Observation:subject"})
    included = {e["resource"]["id"] for e in b["entry"] if e["search"]["mode"] == "include"}
    assert included == {"seen"}
    assert api.ids("", {"_type": "Patient"}) == {"seen"}
    assert api.ids("Patient", {"_has:Observation:subject:code": "x"}) == {"seen"}
    b = api.search("Observation", {"_revinclude": "Observation:subject", "_include": "Observation:patient"})
    assert "hidden" not in {e["resource"]["id"] for e in b["entry"]}
    # a conditional update that only the hidden patient matches must not reveal or touch it
    r = api.client.put("/fhir/Patient?family=hidden", json=api.patient("New"))
    assert r.status_code == 201


TYPICAL = [
    ("Patient", [("name", "chal")]),
    ("Observation", [("patient", "p1"), ("code", "http://loinc.org|8302-2")]),
    ("Observation", [("date", "ge2010-01-01"), ("date", "lt2011-01-01")]),
    ("Observation", [("patient.name", "chal"), ("code", "8302-2")]),
    ("Patient", [("_has:Observation:patient:code", "8302-2")]),
    ("Observation", [("code-value-quantity", "http://loinc.org|8302-2$gt100")]),
    ("Patient", [("identifier", "urn:mrn|1")]),
    ("Observation", [("subject:identifier", "urn:mrn|1")]),
]


@pytest.mark.parametrize(("rtype", "query"), TYPICAL, ids=[f"{t}?{q[0][0]}" for t, q in TYPICAL])
def test_typical_searches_use_the_index_tables_indexes(services, rtype, query):
    db = services.fhir.db
    planner = Planner(base="http://x", now_us=0, warn=WarnFn(strict=True))
    conds = base_conditions(resources, (rtype,)) + planner.conditions(resources, (rtype,), query)
    stmt = page_query(select(resources.c.rid).where(*conds), resources.c.rid, [], None, 51)
    with db.engine.connect() as conn:
        compiled = stmt.compile(conn)
        if db.is_sqlite:
            plan = conn.exec_driver_sql("EXPLAIN QUERY PLAN " + str(compiled), compiled.positiontup and
                                        tuple(compiled.params[k] for k in compiled.positiontup)).all()
            lines = [row[-1] for row in plan]
            assert not [x for x in lines if x.startswith("SCAN idx_") or x.startswith("SCAN resources")], lines
        else:
            conn.execute(text("SET enable_seqscan = off"))
            sql = str(stmt.compile(conn, compile_kwargs={"literal_binds": True}))
            lines = [row[0] for row in conn.execute(text("EXPLAIN " + sql))]
            assert not [x for x in lines if "Seq Scan on idx_" in x or "Seq Scan on resources" in x], lines
