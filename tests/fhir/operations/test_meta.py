"""$meta (system/type/instance), $meta-add and $meta-delete (no new version)."""

from __future__ import annotations

TAG = {"system": "http://example.org/tags", "code": "vip"}
SEC = {"system": "http://terminology.hl7.org/CodeSystem/v3-Confidentiality", "code": "R"}
PROFILE = "http://example.org/StructureDefinition/my-patient"


def _meta(r):
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["resourceType"] == "Parameters" and body["parameter"][0]["name"] == "return"
    return body["parameter"][0]["valueMeta"]


def _params(meta):
    return {"resourceType": "Parameters", "parameter": [{"name": "meta", "valueMeta": meta}]}


def _seed(client):
    client.put("/fhir/Patient/p1", json={"resourceType": "Patient", "id": "p1", "meta": {"tag": [TAG], "profile": [PROFILE]}})
    client.put("/fhir/Observation/o1", json={"resourceType": "Observation", "id": "o1", "status": "final",
                                             "code": {"text": "x"}, "meta": {"security": [SEC]}})


def test_meta_at_system_type_and_instance_level(client):
    _seed(client)
    assert _meta(client.get("/fhir/$meta")) == {"tag": [TAG], "security": [SEC], "profile": [PROFILE]}
    assert _meta(client.get("/fhir/Patient/$meta")) == {"tag": [TAG], "profile": [PROFILE]}
    assert _meta(client.get("/fhir/Observation/o1/$meta")) == {"security": [SEC]}
    assert client.get("/fhir/Observation/none/$meta").status_code == 404


def test_meta_add_changes_meta_without_a_new_version(client):
    _seed(client)
    new_tag = {"system": "http://example.org/tags", "code": "study-1"}
    m = _meta(client.post("/fhir/Patient/p1/$meta-add", json=_params({"tag": [new_tag, TAG], "security": [SEC]})))
    assert m["tag"] == [TAG, new_tag] and m["security"] == [SEC] and m["profile"] == [PROFILE]
    r = client.get("/fhir/Patient/p1")
    assert r.json()["meta"]["versionId"] == "1" and r.headers["etag"] == 'W/"1"'
    assert r.json()["meta"]["tag"] == [TAG, new_tag]
    assert len(client.get("/fhir/Patient/p1/_history").json()["entry"]) == 1
    assert {"system": "http://example.org/tags", "code": "study-1"} in _meta(client.get("/fhir/$meta"))["tag"]


def test_meta_delete_removes_matching_codings_and_profiles(client):
    _seed(client)
    m = _meta(client.post("/fhir/Patient/p1/$meta-delete", json=_params({"tag": [TAG], "profile": [PROFILE]})))
    assert m == {}
    stored = client.get("/fhir/Patient/p1").json()
    assert "tag" not in stored["meta"] and stored["meta"]["versionId"] == "1"
    assert "tag" not in _meta(client.get("/fhir/Patient/$meta"))


def test_meta_add_errors(client):
    _seed(client)
    assert client.post("/fhir/Patient/p1/$meta-add", json={"resourceType": "Patient"}).status_code == 400
    assert client.post("/fhir/Patient/p1/$meta-add", json=_params({"tag": [{"system": "s"}]})).status_code == 400
    assert client.post("/fhir/Patient/p1/$meta-add", json=_params({"tag": "x"})).status_code == 400
    assert client.post("/fhir/Patient/zz/$meta-add", json=_params({"tag": [TAG]})).status_code == 404
    assert client.get("/fhir/Patient/p1/$meta-add").status_code == 405
    assert client.post("/fhir/Patient/$meta-add", json=_params({"tag": [TAG]})).status_code == 404
