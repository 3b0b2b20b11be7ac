"""Who may store and run ViewDefinitions: SMART scopes behind the real guard and router (both backends)."""

from __future__ import annotations

import json

import orjson
import pytest

from medcloud.fhir import router
from medcloud.fhir.exchange import SYSTEM, FhirRequest, Principal
from medcloud.security.policy import SmartPolicy

OBS_VIEW = {
    "resourceType": "ViewDefinition", "name": "obs", "status": "active", "resource": "Observation",
    "select": [{"column": [{"name": "id", "path": "getResourceKey()"},
                           {"name": "patient", "path": "subject.getReferenceKey(Patient)"}]}],
}
PATIENT_VIEW = {**OBS_VIEW, "name": "pats", "resource": "Patient",
                "select": [{"column": [{"name": "id", "path": "getResourceKey()"}]}]}


def _call(services, method, path, body=None, query=(), principal=SYSTEM):
    return router.handle(services.fhir, FhirRequest(method, path, list(query), body=body, principal=principal))


def _json(resp):
    if resp.stream is not None:
        return json.loads(b"".join(resp.stream))
    return orjson.loads(resp.raw) if resp.raw else orjson.loads(orjson.dumps(resp.resource))


@pytest.fixture
def world(services):
    ids = {}
    for p in ("p1", "p2"):
        ids[p] = _json(_call(services, "POST", "Patient", {"resourceType": "Patient"}))["id"]
        ids[f"obs-{p}"] = _json(_call(services, "POST", "Observation", {
            "resourceType": "Observation", "status": "final", "code": {"text": "x"},
            "subject": {"reference": f"Patient/{ids[p]}"}}))["id"]
    ids["view"] = _json(_call(services, "POST", "ViewDefinition", OBS_VIEW))["id"]
    ids["pview"] = _json(_call(services, "POST", "ViewDefinition", PATIENT_VIEW))["id"]
    services.fhir.guard.policy = SmartPolicy()
    return ids


def _who(ids, scopes, patient=None):
    return Principal(subject="app", scopes=tuple(scopes.split()), patient=ids[patient] if patient else None)


def _run(services, ids, principal, view="view", query=()):
    return _call(services, "GET", f"ViewDefinition/{ids[view]}/$run", query=[("_format", "json"), *query],
                 principal=principal)


def test_patient_scoped_token_sees_only_its_compartment(services, world):
    me = _who(world, "patient/*.rs", "p1")
    r = _run(services, world, me)
    assert r.status == 200
    assert _json(r) == [{"id": world["obs-p1"], "patient": world["p1"]}]
    r = _run(services, world, me, "pview")
    assert [row["id"] for row in _json(r)] == [world["p1"]]
    # asking for another patient's rows does not widen the compartment
    r = _run(services, world, me, query=[("patient", f"Patient/{world['p2']}")])
    assert r.status == 400  # that patient is not readable: "not found", like search


def test_user_scope_sees_every_row_and_a_patient_filter_narrows(services, world):
    who = _who(world, "user/Observation.rs user/ViewDefinition.rs user/Patient.rs")
    assert sorted(row["id"] for row in _json(_run(services, world, who))) == sorted(
        [world["obs-p1"], world["obs-p2"]])
    narrowed = _run(services, world, who, query=[("patient", world["p2"])])
    assert [row["id"] for row in _json(narrowed)] == [world["obs-p2"]]


def test_no_scope_on_the_data_is_403_and_none_on_view_definition_is_404(services, world):
    r = _run(services, world, _who(world, "user/ViewDefinition.rs user/Patient.rs"))
    assert r.status == 403 and _json(r)["resourceType"] == "OperationOutcome"
    r = _run(services, world, _who(world, "user/Observation.rs"))
    assert r.status == 404  # the guard's default deny: no scope on ViewDefinition at all
    r = _run(services, world, _who(world, "openid fhirUser"))
    assert r.status == 404


def test_restricted_scope_rows_are_checked_one_by_one(services, world):
    final = _json(_call(services, "POST", "Observation", {
        "resourceType": "Observation", "status": "preliminary", "code": {"text": "y"},
        "subject": {"reference": f"Patient/{world['p1']}"}}))["id"]
    who = _who(world, "user/Observation.rs?status=preliminary user/ViewDefinition.rs")
    assert [row["id"] for row in _json(_run(services, world, who))] == [final]


def test_writing_view_definitions_needs_a_write_scope(services, world):
    reader = _who(world, "user/ViewDefinition.rs")
    assert _call(services, "POST", "ViewDefinition", OBS_VIEW, principal=reader).status == 404
    writer = _who(world, "user/ViewDefinition.cruds")
    assert _call(services, "POST", "ViewDefinition", OBS_VIEW, principal=writer).status == 201
    search = _call(services, "GET", "ViewDefinition", query=[("name", "obs")], principal=reader)
    assert search.status == 200 and len(_json(search)["entry"]) == 2
