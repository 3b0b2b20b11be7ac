"""``GET /fhir/AuditEvent``: admins search the audit trail; nobody writes it through the API."""

from __future__ import annotations

import orjson
import pytest
from sqlalchemy import func, select

from medcloud.fhir import router
from medcloud.fhir.exchange import FhirRequest, Principal
from medcloud.security.audit import AuditRecord
from medcloud.security.audit_api import is_admin
from medcloud.storage.schema import audit_log, resources

T2020 = 1_577_880_000_000_000  # 2020-01-01T12:00:00Z
T2021 = 1_623_758_400_000_000  # 2021-06-15T12:00:00Z
ADMIN = Principal(subject="root", scopes=("system/AuditEvent.rs", "medcloud/admin"), source_ip="127.0.0.1")


def _seed(services) -> None:
    """Events with known fields (recorded through the guard, as the edge and router do)."""
    rec = services.fhir.guard.record
    rec(AuditRecord(T2020, "read", "alice", "ehr-app", "10.0.0.5", "Patient/p1", None, 200, durable=True))
    rec(AuditRecord(T2020 + 60_000_000, "create", "alice", "ehr-app", "10.0.0.5", "Observation/o1", "p1", 201,
                    durable=True))
    rec(AuditRecord(T2021, "delete", "bob", "lab-app", "192.168.7.9", "Observation/o2", "p2", 404, durable=True))
    rec(AuditRecord(T2021 + 1, "authenticate", "unknown", None, "203.0.113.4", None, None, 401))
    rec(AuditRecord(T2021 + 2, "search-type", "carol", None, "10.0.1.1", "Condition", "p1", 500, durable=True))


def _ids(client, query: str) -> list[str]:
    r = client.get(f"/fhir/AuditEvent?{query}")
    assert r.status_code == 200, r.text
    b = r.json()
    assert b["resourceType"] == "Bundle" and b["type"] == "searchset"
    return [e["resource"]["subtype"][0]["code"] + ":" + e["resource"]["agent"][0]["who"]["display"]
            for e in b.get("entry", [])]


@pytest.fixture
def seeded(client, services):
    _seed(services)
    return client


CASES = [
    ("who=alice", ["create:alice", "read:alice"]),
    ("agent=lab-app", ["delete:bob"]),  # the client app is an agent too
    ("agent=carol,bob", ["search-type:carol", "delete:bob"]),
    ("client=ehr-app", ["create:alice", "read:alice"]),
    ("date=2020", ["create:alice", "read:alice"]),
    ("date=2020-01-01T12:00:00Z", ["read:alice"]),
    ("date=ge2021-06-15&who=bob,unknown,carol", ["search-type:carol", "authenticate:unknown", "delete:bob"]),
    ("date=lt2021&who=alice", ["create:alice", "read:alice"]),
    ("date=gt2020-01-01T12:00:30Z&date=le2020-12-31&who=alice", ["create:alice"]),
    ("date=sa2020&who=alice,bob", ["delete:bob"]),
    ("entity=Observation/o1", ["create:alice"]),
    ("entity=Patient/p1", ["search-type:carol", "create:alice", "read:alice"]),  # read of p1 and p1 as patient
    ("entity=o2", ["delete:bob"]),
    ("entity-type=Condition", ["search-type:carol"]),
    ("patient=p2", ["delete:bob"]),
    ("patient=Patient/p1", ["search-type:carol", "create:alice", "read:alice"]),
    ("action=D", ["delete:bob"]),
    ("action=http://hl7.org/fhir/audit-event-action|C", ["create:alice"]),
    ("outcome=8", ["search-type:carol"]),
    ("outcome=4&who=bob,unknown", ["authenticate:unknown", "delete:bob"]),
    ("subtype=authenticate", ["authenticate:unknown"]),
    ("subtype=http://hl7.org/fhir/restful-interaction|delete", ["delete:bob"]),
    ("subtype=other-system|delete", []),
    ("address=10.0.0", ["create:alice", "read:alice"]),
    ("address:exact=10.0.0", []),
    ("address:exact=192.168.7.9", ["delete:bob"]),
    ("_id=3", ["delete:bob"]),
    ("_id=999,abc", []),
    ("who=alice&_sort=date", ["read:alice", "create:alice"]),
]


@pytest.mark.parametrize(("query", "expected"), CASES, ids=[c[0] for c in CASES])
def test_search_by_each_parameter(seeded, query, expected):
    assert _ids(seeded, query) == expected


def test_read_by_id_and_total(seeded):
    r = seeded.get("/fhir/AuditEvent/3")
    assert r.status_code == 200
    ev = r.json()
    assert ev["resourceType"] == "AuditEvent" and ev["id"] == "3" and ev["action"] == "D"
    assert ev["entity"][1]["what"]["reference"] == "Patient/p2"
    assert ev["meta"]["lastUpdated"].startswith("2021-06-15T12:00:00")
    assert seeded.get("/fhir/AuditEvent/999").status_code == 404
    assert seeded.get("/fhir/AuditEvent/abc").status_code == 404
    b = seeded.get("/fhir/AuditEvent?who=alice&_total=accurate&_count=1").json()
    assert b["total"] == 2 and len(b["entry"]) == 1


def test_keyset_paging_follows_next_links(client, services):
    for i in range(7):
        services.fhir.guard.record(AuditRecord(T2020 + i, "read", "pager", None, None, f"Patient/{i}", None, 200,
                                               durable=True))
    url, seen = "/fhir/AuditEvent?who=pager&_count=3", []
    pages = 0
    while url:
        b = client.get(url).json()
        pages += 1
        seen += [e["resource"]["entity"][0]["what"]["reference"] for e in b["entry"]]
        url = next((link["url"] for link in b["link"] if link["relation"] == "next"), None)
    assert pages == 3
    assert seen == [f"Patient/{i}" for i in reversed(range(7))]  # newest first, each once
    # The cursor carries the search: it cannot be bent to another one, nor be forged.
    assert client.get("/fhir/AuditEvent?_cursor=AAAA").status_code == 400


def test_bad_search_input_is_a_400_operation_outcome(seeded):
    for q in ("foo=bar", "date=yesterday", "_count=-1", "_sort=who", "who:exact=alice", "action=a|b|c"):
        r = seeded.get(f"/fhir/AuditEvent?{q}")
        assert r.status_code == 400, q
        assert r.json()["resourceType"] == "OperationOutcome"


def test_post_search_reads_form_parameters(seeded):
    r = seeded.post("/fhir/AuditEvent/_search", data={"who": "bob"})
    assert r.status_code == 200
    assert [e["resource"]["id"] for e in r.json()["entry"]] == ["3"]


def test_non_admins_get_404_as_if_nothing_were_there(seeded, services):
    nobody = Principal(subject="mallory", scopes=("system/*.cruds",), source_ip="10.9.9.9")
    assert not is_admin(nobody) and is_admin(ADMIN)
    for path, query in (("AuditEvent", []), ("AuditEvent", [("who", "alice")]), ("AuditEvent/1", [])):
        resp = router.handle(services.fhir, FhirRequest("GET", path, query=query, principal=nobody))
        assert resp.status == 404 and resp.resource is not None
        assert resp.resource["resourceType"] == "OperationOutcome"
    ok = router.handle(services.fhir, FhirRequest("GET", "AuditEvent", query=[("who", "alice")], principal=ADMIN))
    assert ok.status == 200 and ok.resource is not None and len(ok.resource["entry"]) == 2


def _stored_auditevents(services) -> tuple[int, int]:
    with services.db.read() as conn:
        in_resources = conn.execute(select(func.count()).select_from(resources)
                                    .where(resources.c.type == "AuditEvent")).scalar_one()
        forged = sum(b"forged-by-test" in bytes(c) for c in conn.scalars(select(audit_log.c.content)))
    return in_resources, forged


FORGED = {"resourceType": "AuditEvent", "id": "1", "recorded": "2020-01-01T00:00:00Z", "action": "D",
          "type": {"code": "rest"}, "agent": [{"requestor": True, "who": {"display": "forged-by-test"}}],
          "source": {"observer": {"display": "forged-by-test"}}}


def test_writes_to_auditevent_are_405_and_store_nothing(seeded, services):
    patch = orjson.dumps([{"op": "replace", "path": "/action", "value": "R"}])
    attempts = [
        seeded.post("/fhir/AuditEvent", json=FORGED),
        seeded.put("/fhir/AuditEvent/1", json=FORGED),
        seeded.put("/fhir/AuditEvent?who=alice", json=FORGED),
        seeded.patch("/fhir/AuditEvent/1", content=patch, headers={"content-type": "application/json-patch+json"}),
        seeded.delete("/fhir/AuditEvent/1"),
        seeded.delete("/fhir/AuditEvent?who=alice"),
    ]
    for r in attempts:
        assert r.status_code == 405, r.request
        assert r.json()["resourceType"] == "OperationOutcome"
    # (A conditional delete inside a transaction searches the resources table first: with a parameter
    # that table does not know for AuditEvent, such as who, the answer is 400; nothing is written either way.)
    for method, url in (("POST", "AuditEvent"), ("PUT", "AuditEvent/1"), ("DELETE", "AuditEvent/1"),
                        ("DELETE", "AuditEvent?_id=1")):
        entry = {"request": {"method": method, "url": url}}
        if method != "DELETE":
            entry["resource"] = FORGED
        tx = seeded.post("/fhir", json={"resourceType": "Bundle", "type": "transaction", "entry": [entry]})
        assert tx.status_code == 405, (method, url, tx.text)
        batch = seeded.post("/fhir", json={"resourceType": "Bundle", "type": "batch", "entry": [entry]})
        assert batch.status_code == 200
        assert batch.json()["entry"][0]["response"]["status"].startswith("405"), (method, url)
    services.audit.flush()
    assert _stored_auditevents(services) == (0, 0)
    assert seeded.get("/fhir/AuditEvent/1").json()["agent"][0]["who"]["display"] == "alice"  # untouched


def test_an_auth_failure_is_searchable(seeded, services):
    # As the edge records it: durable although the record does not say so.
    services.fhir.guard.record(AuditRecord(T2021 + 5, "authenticate", "eve", "stolen-client", "198.51.100.3",
                                           None, None, 401))
    with services.db.read() as conn:  # committed before record() returned
        assert conn.execute(select(audit_log.c.seq).where(audit_log.c.who == "eve")).first() is not None
    b = seeded.get("/fhir/AuditEvent?subtype=authenticate&outcome=4&address=198.51").json()
    assert [e["resource"]["agent"][0]["who"]["display"] for e in b["entry"]] == ["eve"]
    assert b["entry"][0]["resource"]["outcomeDesc"] == "HTTP 401 Unauthorized"


def test_auditevent_searches_are_audited_themselves(seeded, services):
    assert seeded.get("/fhir/AuditEvent?who=alice").status_code == 200
    services.audit.flush()
    with services.db.read() as conn:
        rows = conn.execute(select(audit_log.c.subtype, audit_log.c.who)
                            .where(audit_log.c.entity_type == "AuditEvent")).all()
    assert [tuple(r) for r in rows] == [("search-type", "anonymous")]
