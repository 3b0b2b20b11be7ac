"""SmartPolicy behind the real guard and router, in process (principals built by hand)."""

from __future__ import annotations

import orjson
import pytest

from medcloud.fhir import router
from medcloud.fhir.exchange import SYSTEM, FhirRequest, Principal
from medcloud.security.policy import SmartPolicy


def _call(services, method, path, body=None, query=(), principal=SYSTEM):
    resp = router.handle(services.fhir, FhirRequest(method, path, list(query), body=body, principal=principal))
    if resp.resource is None and resp.raw:
        resp.resource = orjson.loads(resp.raw)
    elif resp.resource is not None:  # search entries are pre-serialised fragments
        resp.resource = orjson.loads(orjson.dumps(resp.resource))
    return resp


@pytest.fixture
def world(services):
    ids = {}
    for p in ("p1", "p2"):
        ids[p] = _call(services, "POST", "Patient", {"resourceType": "Patient", "gender": "female"}).resource["id"]
        ids[f"obs-{p}"] = _call(services, "POST", "Observation", {
            "resourceType": "Observation", "status": "final", "code": {"text": "x"},
            "subject": {"reference": f"Patient/{ids[p]}"}}).resource["id"]
    services.fhir.guard.policy = SmartPolicy()
    return ids


def _patient(ids, scopes="patient/*.rs"):
    return Principal(subject="app", scopes=tuple(scopes.split()), patient=ids["p1"])


def test_patient_scope_reads_its_own_compartment_and_gets_404_elsewhere(services, world):
    me = _patient(world)
    assert _call(services, "GET", f"Observation/{world['obs-p1']}", principal=me).status == 200
    assert _call(services, "GET", f"Patient/{world['p1']}", principal=me).status == 200
    for path in (f"Observation/{world['obs-p2']}", f"Patient/{world['p2']}", "Observation/does-not-exist"):
        r = _call(services, "GET", path, principal=me)
        assert r.status == 404 and r.resource["resourceType"] == "OperationOutcome"


def test_patient_scope_search_returns_only_compartment_matches(services, world):
    r = _call(services, "GET", "Observation", principal=_patient(world))
    assert r.status == 200
    ids = {e["resource"]["id"] for e in r.resource.get("entry", [])}
    assert ids == {world["obs-p1"]}


def test_writes_need_a_write_scope_and_stay_in_the_compartment(services, world):
    reader = _patient(world)
    body = {"resourceType": "Observation", "status": "final", "code": {"text": "y"},
            "subject": {"reference": f"Patient/{world['p1']}"}}
    assert _call(services, "POST", "Observation", body, principal=reader).status == 404
    writer = _patient(world, "patient/Observation.cruds")
    assert _call(services, "POST", "Observation", body, principal=writer).status == 201
    other = dict(body, subject={"reference": f"Patient/{world['p2']}"})
    assert _call(services, "POST", "Observation", other, principal=writer).status == 404
    assert _call(services, "DELETE", f"Observation/{world['obs-p2']}", principal=writer).status == 404
    assert _call(services, "GET", f"Observation/{world['obs-p2']}", principal=Principal(scopes=())).status == 404
    assert _call(services, "GET", f"Observation/{world['obs-p2']}",
                 principal=Principal(scopes=("system/*.rs",))).status == 200


def test_no_scope_means_no_access_but_metadata_stays_public(services, world):
    nobody = Principal(subject="x", scopes=("openid", "fhirUser"))
    assert _call(services, "GET", f"Patient/{world['p1']}", principal=nobody).status == 404
    assert _call(services, "GET", "Patient", principal=nobody).status == 404
    assert _call(services, "GET", "metadata", principal=nobody).status == 200
