"""Every interaction passes the one authorization seam and leaves one AuditEvent-shaped record."""

from __future__ import annotations

import orjson
from sqlalchemy import select

from medcloud.storage.schema import audit_log


def _audit_rows(services):
    services.audit.close()  # flush the buffered trail
    with services.db.read() as conn:
        return [orjson.loads(r.content) for r in conn.execute(select(audit_log.c.content).order_by(audit_log.c.seq))]


def test_each_interaction_writes_one_audit_event_with_outcome(client, services):
    pid = client.post("/fhir/Patient", json={"resourceType": "Patient", "gender": "female"}).json()["id"]
    client.get(f"/fhir/Patient/{pid}")
    client.get("/fhir/Patient/missing")
    events = _audit_rows(services)
    subtypes = [e["subtype"][0]["code"] for e in events]
    assert subtypes == ["create", "read", "read"]
    assert events[0]["action"] == "C" and events[0]["outcome"] == "0"
    assert events[1]["entity"][0]["what"]["reference"] == f"Patient/{pid}"
    assert events[2]["outcome"] == "4"  # 404 is a minor failure
    assert all(e["resourceType"] == "AuditEvent" for e in events)
    assert events[0]["agent"][0]["network"]["address"]


def test_a_policy_refusal_reads_as_not_found(client, services):
    class DenyPatients:
        def may(self, principal, interaction, rtype):
            return rtype != "Patient"

        def may_read(self, principal, stored):
            return stored.type != "Patient"

        def may_write(self, principal, rtype, resource):
            return rtype != "Patient"

    pid = client.post("/fhir/Patient", json={"resourceType": "Patient"}).json()["id"]
    services.fhir.guard.policy = DenyPatients()
    r = client.get(f"/fhir/Patient/{pid}")
    assert r.status_code == 404 and r.json()["resourceType"] == "OperationOutcome"
    assert client.post("/fhir/Patient", json={"resourceType": "Patient"}).status_code == 404
    assert client.post("/fhir/Organization", json={"resourceType": "Organization", "name": "x"}).status_code == 201
