"""batch Bundles (http.html#transaction): independent entries, per-entry status and outcome."""

from __future__ import annotations

import uuid


def _patient(family: str = "Batch", **extra):
    return {"resourceType": "Patient", "name": [{"family": family}], **extra}


def _batch(*entries):
    return {"resourceType": "Bundle", "type": "batch", "entry": list(entries)}


def _post(resource, full_url=None):
    e = {"resource": resource, "request": {"method": "POST", "url": resource["resourceType"]}}
    if full_url:
        e["fullUrl"] = full_url
    return e


def test_failing_entry_does_not_affect_the_others(client):
    r = client.post("/fhir", json=_batch(
        _post(_patient("One")),
        _post({"resourceType": "Patient", "gender": 12}),
        {"resource": _patient("Two", id="b-2"), "request": {"method": "PUT", "url": "Patient/b-2"}},
        {"request": {"method": "GET", "url": "Patient/missing"}},
    ))
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["type"] == "batch-response"
    ok1, bad, ok2, missing = body["entry"]
    assert ok1["response"]["status"].startswith("201")
    assert bad["response"]["status"][:3] in ("400", "422")
    assert bad["response"]["outcome"]["resourceType"] == "OperationOutcome"
    assert ok2["response"]["status"].startswith("201")
    assert missing["response"]["status"].startswith("404")
    assert missing["response"]["outcome"]["issue"][0]["code"] == "not-found"
    assert client.get("/fhir/Patient/b-2").status_code == 200
    assert client.get("/fhir/" + ok1["response"]["location"].split("/fhir/", 1)[1]).status_code == 200


def test_malformed_entry_fails_alone(client):
    r = client.post("/fhir", json=_batch(
        {"resource": _patient()},
        {"resource": _patient(), "request": {"method": "FETCH", "url": "Patient"}},
        {"resource": _patient(), "request": {"method": "POST", "url": "Patent"}},
        _post(_patient("Fine")),
    ))
    assert r.status_code == 200
    statuses = [e["response"]["status"][:3] for e in r.json()["entry"]]
    assert statuses == ["400", "400", "400", "201"]


def test_entries_may_not_refer_to_each_other(client):
    p = f"urn:uuid:{uuid.uuid4()}"
    obs = {"resourceType": "Observation", "status": "final", "code": {"text": "x"}, "subject": {"reference": p}}
    r = client.post("/fhir", json=_batch(_post(_patient(), p), _post(obs)))
    assert r.status_code == 200
    pat_e, obs_e = r.json()["entry"]
    assert pat_e["response"]["status"].startswith("201")
    assert obs_e["response"]["status"].startswith("400")
    assert "another entry" in obs_e["response"]["outcome"]["issue"][0]["diagnostics"]


def test_batch_reads_updates_and_deletes(client):
    client.put("/fhir/Patient/b-read", json=_patient(id="b-read"))
    client.put("/fhir/Patient/b-del", json=_patient(id="b-del"))
    r = client.post("/fhir", json=_batch(
        {"request": {"method": "GET", "url": "Patient/b-read"}},
        {"request": {"method": "DELETE", "url": "Patient/b-del"}},
        {"resource": _patient("Upd", id="b-read"), "request": {"method": "PUT", "url": "Patient/b-read",
                                                              "ifMatch": 'W/"1"'}},
        {"resource": _patient("Stale", id="b-read"), "request": {"method": "PUT", "url": "Patient/b-read",
                                                                "ifMatch": 'W/"1"'}},
    ))
    read_e, del_e, upd_e, stale_e = r.json()["entry"]
    assert del_e["response"]["status"].startswith("204")
    assert upd_e["response"]["status"].startswith("200") and upd_e["response"]["etag"] == 'W/"2"'
    assert stale_e["response"]["status"].startswith("412")
    # GETs run last (http.html#trules), so the read sees the update.
    assert read_e["resource"]["name"][0]["family"] == "Upd"
    assert client.get("/fhir/Patient/b-del").status_code == 410


def test_batch_with_conditional_create(client):
    client.post("/fhir/Patient", json=_patient(identifier=[{"system": "s", "value": "bc"}]))
    e = _post(_patient(identifier=[{"system": "s", "value": "bc"}]))
    e["request"]["ifNoneExist"] = "identifier=s|bc"
    r = client.post("/fhir", json=_batch(e))
    assert r.json()["entry"][0]["response"]["status"].startswith("200")
    assert client.get("/fhir/Patient?identifier=s|bc").json()["total"] == 1


def test_empty_batch(client):
    r = client.post("/fhir", json=_batch())
    assert r.status_code == 200 and r.json()["type"] == "batch-response"
