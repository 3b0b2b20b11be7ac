"""read, vread, create, update, delete, history and conditional reads over HTTP semantics."""

from __future__ import annotations

FHIR = "application/fhir+json"


def _patient(family: str = "Chalmers", **extra):
    return {"resourceType": "Patient", "name": [{"family": family, "given": ["Peter"]}], "gender": "male", **extra}


def test_create_returns_201_with_location_etag_and_stored_body(client):
    r = client.post("/fhir/Patient", json=_patient(), headers={"Content-Type": FHIR})
    assert r.status_code == 201, r.text
    body = r.json()
    assert body["resourceType"] == "Patient" and body["meta"]["versionId"] == "1"
    assert r.headers["location"].endswith(f"/fhir/Patient/{body['id']}/_history/1")
    assert r.headers["etag"] == 'W/"1"'
    assert "last-modified" in r.headers
    assert r.headers["content-type"].startswith("application/fhir+json")


def test_create_ignores_client_supplied_id(client):
    r = client.post("/fhir/Patient", json=_patient(id="mine"))
    assert r.status_code == 201
    assert r.json()["id"] != "mine"


def test_read_returns_current_version(client):
    pid = client.post("/fhir/Patient", json=_patient()).json()["id"]
    r = client.get(f"/fhir/Patient/{pid}")
    assert r.status_code == 200
    assert r.json()["name"][0]["family"] == "Chalmers"
    assert r.headers["etag"] == 'W/"1"'


def test_read_of_unknown_resource_is_404_operation_outcome(client):
    r = client.get("/fhir/Patient/does-not-exist")
    assert r.status_code == 404
    assert r.json()["resourceType"] == "OperationOutcome"


def test_unknown_resource_type_is_404(client):
    r = client.get("/fhir/Patent/1")
    assert r.status_code == 404
    assert r.json()["issue"][0]["code"] == "not-found"


def test_update_creates_new_version_and_vread_returns_each(client):
    pid = client.post("/fhir/Patient", json=_patient()).json()["id"]
    r = client.put(f"/fhir/Patient/{pid}", json=_patient("Windsor", id=pid))
    assert r.status_code == 200, r.text
    assert r.json()["meta"]["versionId"] == "2"
    assert client.get(f"/fhir/Patient/{pid}/_history/1").json()["name"][0]["family"] == "Chalmers"
    assert client.get(f"/fhir/Patient/{pid}/_history/2").json()["name"][0]["family"] == "Windsor"
    assert client.get(f"/fhir/Patient/{pid}/_history/3").status_code == 404


def test_update_as_create_uses_client_id(client):
    r = client.put("/fhir/Patient/p-123", json=_patient(id="p-123"))
    assert r.status_code == 201
    assert client.get("/fhir/Patient/p-123").json()["id"] == "p-123"


def test_update_with_mismatched_or_missing_id_is_400(client):
    assert client.put("/fhir/Patient/a", json=_patient(id="b")).status_code == 400
    assert client.put("/fhir/Patient/a", json=_patient()).status_code == 400


def test_wrong_resource_type_for_url_is_400(client):
    r = client.post("/fhir/Observation", json=_patient())
    assert r.status_code == 400
    assert r.json()["resourceType"] == "OperationOutcome"


def test_if_match_with_stale_version_is_412_and_nothing_changes(client):
    pid = client.post("/fhir/Patient", json=_patient()).json()["id"]
    client.put(f"/fhir/Patient/{pid}", json=_patient("B", id=pid))
    r = client.put(f"/fhir/Patient/{pid}", json=_patient("C", id=pid), headers={"If-Match": 'W/"1"'})
    assert r.status_code == 412
    assert client.get(f"/fhir/Patient/{pid}").json()["name"][0]["family"] == "B"
    r = client.put(f"/fhir/Patient/{pid}", json=_patient("C", id=pid), headers={"If-Match": 'W/"2"'})
    assert r.status_code == 200


def test_delete_then_read_is_410_and_history_keeps_versions(client):
    pid = client.post("/fhir/Patient", json=_patient()).json()["id"]
    assert client.delete(f"/fhir/Patient/{pid}").status_code == 204
    assert client.get(f"/fhir/Patient/{pid}").status_code == 410
    assert client.get(f"/fhir/Patient/{pid}/_history/1").status_code == 200
    assert client.get(f"/fhir/Patient/{pid}/_history/2").status_code == 410
    h = client.get(f"/fhir/Patient/{pid}/_history").json()
    assert h["type"] == "history" and len(h["entry"]) == 2
    assert h["entry"][0]["request"]["method"] == "DELETE"
    # Deleting again is a success without a new version; a recreate continues the version line.
    assert client.delete(f"/fhir/Patient/{pid}").status_code == 204
    r = client.put(f"/fhir/Patient/{pid}", json=_patient(id=pid))
    assert r.status_code == 201 and r.json()["meta"]["versionId"] == "3"


def test_if_none_match_and_if_modified_since_give_304(client):
    r = client.post("/fhir/Patient", json=_patient())
    pid = r.json()["id"]
    assert client.get(f"/fhir/Patient/{pid}", headers={"If-None-Match": 'W/"1"'}).status_code == 304
    assert client.get(f"/fhir/Patient/{pid}", headers={"If-None-Match": 'W/"0"'}).status_code == 200
    lm = r.headers["last-modified"]
    assert client.get(f"/fhir/Patient/{pid}", headers={"If-Modified-Since": lm}).status_code == 304
    assert client.get(f"/fhir/Patient/{pid}", headers={"If-Modified-Since": "Mon, 01 Jan 2001 00:00:00 GMT"}).status_code == 200


def test_history_type_and_system_levels_page_with_count(client):
    ids = [client.post("/fhir/Patient", json=_patient(f"F{i}")).json()["id"] for i in range(5)]
    client.post("/fhir/Organization", json={"resourceType": "Organization", "name": "Acme"})
    h = client.get("/fhir/Patient/_history", params={"_count": 2}).json()
    assert len(h["entry"]) == 2
    seen = [e["resource"]["id"] for e in h["entry"]]
    nxt = next(link["url"] for link in h["link"] if link["relation"] == "next")
    while nxt:
        page = client.get(nxt).json()
        seen += [e["resource"]["id"] for e in page["entry"]]
        nxt = next((link["url"] for link in page["link"] if link["relation"] == "next"), None)
    assert sorted(seen) == sorted(ids)
    system = client.get("/fhir/_history", params={"_count": 100}).json()
    assert {e["resource"]["resourceType"] for e in system["entry"]} == {"Patient", "Organization"}


def test_prefer_return_minimal_and_operation_outcome(client):
    r = client.post("/fhir/Patient", json=_patient(), headers={"Prefer": "return=minimal"})
    assert r.status_code == 201 and r.content == b"" and r.headers["location"]
    r = client.post("/fhir/Patient", json=_patient(), headers={"Prefer": "return=OperationOutcome"})
    assert r.json()["resourceType"] == "OperationOutcome"


def test_format_and_accept_negotiation(client):
    assert client.get("/fhir/metadata", params={"_format": "json"}).status_code == 200
    assert client.get("/fhir/metadata", params={"_format": "xml"}).status_code == 406
    assert client.get("/fhir/metadata", headers={"Accept": "application/fhir+xml"}).status_code == 406
    r = client.get("/fhir/metadata", headers={"Accept": "application/json"})
    assert r.status_code == 200 and r.headers["content-type"].startswith("application/json")


def test_metadata_is_a_capability_statement_listing_search_params(client):
    cs = client.get("/fhir/metadata").json()
    assert cs["resourceType"] == "CapabilityStatement" and cs["fhirVersion"] == "4.0.1"
    obs = next(r for r in cs["rest"][0]["resource"] if r["type"] == "Observation")
    names = {p["name"] for p in obs["searchParam"]}
    assert {"code", "patient", "date", "value-quantity", "code-value-quantity"} <= names


def test_malformed_json_is_400_and_unsupported_media_is_415(client):
    r = client.post("/fhir/Patient", content=b"{not json", headers={"Content-Type": FHIR})
    assert r.status_code == 400 and r.json()["resourceType"] == "OperationOutcome"
    r = client.post("/fhir/Patient", content=b"<Patient/>", headers={"Content-Type": "application/fhir+xml"})
    assert r.status_code == 415


def test_method_not_allowed_is_405(client):
    assert client.delete("/fhir/metadata").status_code == 405
