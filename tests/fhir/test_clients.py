"""Real FHIR client libraries read what the server returns (SMART's fhirclient, fhir.resources)."""

from __future__ import annotations

import httpx
import pytest

pytestmark = pytest.mark.integration


def test_fhirclient_creates_reads_and_parses_capabilities(live_server):
    from fhirclient import client
    from fhirclient.models import humanname, patient

    smart = client.FHIRClient(settings={"app_id": "medcloud-test", "api_base": live_server})
    assert smart.server.capabilityStatement.fhirVersion == "4.0.1"
    p = patient.Patient()
    name = humanname.HumanName()
    name.family = "Fhirclient"
    name.given = ["Ana"]
    p.name = [name]
    p.gender = "female"
    p.birthDate = None
    created = p.create(smart.server)
    assert created is not None and created["resourceType"] == "Patient"
    read = patient.Patient.read(created["id"], smart.server)
    assert read.name[0].family == "Fhirclient" and read.gender == "female"
    assert read.meta.versionId == "1"


def test_fhir_resources_parses_resources_bundles_and_outcomes(live_server):
    from fhir.resources.R4B.bundle import Bundle
    from fhir.resources.R4B.capabilitystatement import CapabilityStatement
    from fhir.resources.R4B.operationoutcome import OperationOutcome
    from fhir.resources.R4B.patient import Patient

    with httpx.Client(base_url=live_server, timeout=30) as http:
        cs = CapabilityStatement.model_validate_json(http.get("/metadata").content)
        assert cs.fhirVersion == "4.0.1"
        r = http.post("/Patient", json={"resourceType": "Patient", "name": [{"family": "Parsed"}], "birthDate": "1970-02-03"})
        pat = Patient.model_validate_json(r.content)
        assert pat.name[0].family == "Parsed" and str(pat.birthDate) == "1970-02-03"
        http.put(f"/Patient/{pat.id}", json={"resourceType": "Patient", "id": pat.id, "active": True})
        hist = Bundle.model_validate_json(http.get(f"/Patient/{pat.id}/_history").content)
        assert hist.type == "history" and len(hist.entry) == 2
        oo = OperationOutcome.model_validate_json(http.get("/Patient/nope").content)
        assert oo.issue[0].code == "not-found"
