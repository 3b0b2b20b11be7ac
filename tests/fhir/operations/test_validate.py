"""$validate at type and instance level: resource or Parameters body, modes, always 200."""

from __future__ import annotations

PATIENT = {"resourceType": "Patient", "name": [{"family": "Ok"}], "gender": "female"}


def _issues(r):
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["resourceType"] == "OperationOutcome"
    return body["issue"]


def test_valid_resource_gets_all_ok(client):
    issues = _issues(client.post("/fhir/Patient/$validate", json=PATIENT))
    assert issues == [{"severity": "information", "code": "informational", "diagnostics": "All OK"}]


def test_invalid_resource_gets_200_with_error_issues_pointing_at_the_element(client):
    bad = {"resourceType": "Patient", "gender": "robot", "birthDate": "1999-02-31", "nonsense": 1}
    issues = _issues(client.post("/fhir/Patient/$validate", json=bad))
    assert all(i["severity"] == "error" for i in issues)
    expressions = {e for i in issues for e in i.get("expression", [])}
    assert "Patient.gender" in expressions and "Patient.birthDate" in expressions
    # Nothing was stored.
    assert client.get("/fhir/Patient/_history").json().get("entry") is None


def test_wrong_type_for_url_is_an_issue(client):
    issues = _issues(client.post("/fhir/Observation/$validate", json=PATIENT))
    assert issues[0]["severity"] == "error"


def test_parameters_body_with_mode_update_checks_the_id(client):
    body = {"resourceType": "Parameters", "parameter": [
        {"name": "resource", "resource": {**PATIENT, "id": "other"}}, {"name": "mode", "valueCode": "update"}]}
    issues = _issues(client.post("/fhir/Patient/p1/$validate", json=body))
    assert issues[0]["severity"] == "error" and "does not match" in issues[0]["diagnostics"]
    body["parameter"][0]["resource"]["id"] = "p1"
    assert _issues(client.post("/fhir/Patient/p1/$validate", json=body))[0]["diagnostics"] == "All OK"


def test_mode_create_warns_about_a_client_id(client):
    body = {"resourceType": "Parameters", "parameter": [
        {"name": "resource", "resource": {**PATIENT, "id": "x"}}, {"name": "mode", "valueCode": "create"}]}
    issues = _issues(client.post("/fhir/Patient/$validate", json=body))
    assert [i["severity"] for i in issues] == ["warning"]


def test_mode_delete_checks_that_the_instance_exists(client):
    client.put("/fhir/Patient/p1", json={**PATIENT, "id": "p1"})
    ok = _issues(client.post("/fhir/Patient/p1/$validate", params={"mode": "delete"}))
    assert ok[0]["diagnostics"] == "All OK"
    missing = _issues(client.post("/fhir/Patient/zz/$validate", params={"mode": "delete"}))
    assert missing[0]["code"] == "not-found"


def test_get_on_an_instance_validates_the_stored_version(client):
    client.put("/fhir/Patient/p1", json={**PATIENT, "id": "p1"})
    assert _issues(client.get("/fhir/Patient/p1/$validate"))[0]["diagnostics"] == "All OK"
    assert client.get("/fhir/Patient/none/$validate").status_code == 404


def test_profile_parameter_is_answered_with_a_warning(client):
    body = {"resourceType": "Parameters", "parameter": [
        {"name": "resource", "resource": PATIENT}, {"name": "profile", "valueUri": "http://example.org/p"}]}
    issues = _issues(client.post("/fhir/Patient/$validate", json=body))
    assert issues[0]["severity"] == "warning" and issues[0]["code"] == "not-supported"


def test_missing_resource_or_bad_mode_is_400(client):
    assert client.post("/fhir/Patient/$validate", json={"resourceType": "Parameters"}).status_code == 400
    assert client.post("/fhir/Patient/$validate", params={"mode": "frobnicate"}, json=PATIENT).status_code == 400
    assert client.post("/fhir/Patient/$validate", json=[1, 2]).status_code == 400
