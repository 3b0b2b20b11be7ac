"""transaction Bundles (http.html#transaction): atomicity, processing order, links, conditionals, bad input."""

from __future__ import annotations

import base64
import uuid

import orjson
import pytest

FHIR = "application/fhir+json"


def _patient(family: str = "Chalmers", **extra):
    return {"resourceType": "Patient", "name": [{"family": family}], **extra}


def _obs(subject: str, **extra):
    return {"resourceType": "Observation", "status": "final", "code": {"text": "weight"},
            "subject": {"reference": subject}, **extra}


def _post(resource, full_url=None, **request):
    e = {"resource": resource, "request": {"method": "POST", "url": resource["resourceType"], **request}}
    if full_url:
        e["fullUrl"] = full_url
    return e


def _tx(*entries, kind="transaction"):
    return {"resourceType": "Bundle", "type": kind, "entry": list(entries)}


def _urn():
    return f"urn:uuid:{uuid.uuid4()}"


def _id(entry):
    return entry["response"]["location"].split("/_history/")[0].rsplit("/", 1)[1]


def _count(client, path):
    return len(client.get(f"/fhir/{path}").json().get("entry", []))


def test_transaction_creates_entries_and_rewrites_urn_references(client):
    p = _urn()
    r = client.post("/fhir", json=_tx(_post(_patient(), p), _post(_obs(p))), headers={"Content-Type": FHIR})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["type"] == "transaction-response"
    pe, oe = body["entry"]
    assert pe["response"]["status"].startswith("201") and oe["response"]["status"].startswith("201")
    assert pe["response"]["etag"] == 'W/"1"' and "lastModified" in pe["response"]
    pid, oid = _id(pe), _id(oe)
    assert client.get(f"/fhir/Observation/{oid}").json()["subject"]["reference"] == f"Patient/{pid}"
    assert pe["resource"]["id"] == pid and pe["fullUrl"].endswith(f"/Patient/{pid}")


def test_links_are_rewritten_deep_in_arrays_uris_and_narrative(client):
    p = _urn()
    o = _urn()
    prov = {"resourceType": "Provenance", "recorded": "2024-01-01T00:00:00Z",
            "agent": [{"who": {"reference": p}}], "target": [{"reference": p}, {"reference": o}]}
    pat = _patient(text={"status": "generated",
                         "div": f'<div xmlns="http://www.w3.org/1999/xhtml"><a href="{o}">obs</a></div>'})
    r = client.post("/fhir", json=_tx(_post(prov), _post(pat, p), _post(_obs(p), o)))
    assert r.status_code == 200, r.text
    prov_e, pat_e, obs_e = r.json()["entry"]
    stored = client.get(f"/fhir/Provenance/{_id(prov_e)}").json()
    assert [t["reference"] for t in stored["target"]] == [f"Patient/{_id(pat_e)}", f"Observation/{_id(obs_e)}"]
    assert stored["agent"][0]["who"]["reference"] == f"Patient/{_id(pat_e)}"
    div = client.get(f"/fhir/Patient/{_id(pat_e)}").json()["text"]["div"]
    assert f'href="Observation/{_id(obs_e)}"' in div


def test_provenance_targeting_thousands_of_entries_is_rewritten(client):
    p = _urn()
    obs = [(_urn(), _obs(p)) for _ in range(2000)]
    prov = {"resourceType": "Provenance", "recorded": "2024-01-01T00:00:00Z",
            "agent": [{"who": {"display": "x"}}], "target": [{"reference": u} for u, _ in obs]}
    r = client.post("/fhir", json=_tx(_post(_patient(), p), *[_post(o, u) for u, o in obs], _post(prov)))
    assert r.status_code == 200, r.text[:500]
    entries = r.json()["entry"]
    ids = [_id(e) for e in entries[1:-1]]
    stored = client.get(f"/fhir/Provenance/{_id(entries[-1])}").json()
    assert [t["reference"] for t in stored["target"]] == [f"Observation/{i}" for i in ids]


def test_oid_and_absolute_full_urls_are_link_targets_and_get_queries_use_them(client):
    oid, url = "urn:oid:1.2.3.4", "http://example.org/fhir/Patient/abc"
    r = client.post("/fhir", json=_tx(
        _post(_patient("Oid"), oid), _post(_patient("Url"), url), _post(_obs(oid)), _post(_obs(url)),
        {"request": {"method": "GET", "url": f"Observation?subject={oid}"}},
    ))
    assert r.status_code == 200, r.text
    p1, p2, o1, o2, found = r.json()["entry"]
    assert client.get(f"/fhir/Observation/{_id(o1)}").json()["subject"]["reference"] == f"Patient/{_id(p1)}"
    assert client.get(f"/fhir/Observation/{_id(o2)}").json()["subject"]["reference"] == f"Patient/{_id(p2)}"
    assert [e["resource"]["id"] for e in found["resource"]["entry"]] == [_id(o1)]


def test_put_entry_full_url_is_a_link_target(client):
    p = _urn()
    r = client.post("/fhir", json=_tx(
        _post(_obs(p)),
        {"fullUrl": p, "resource": _patient(id="tx-put-1"), "request": {"method": "PUT", "url": "Patient/tx-put-1"}},
    ))
    assert r.status_code == 200, r.text
    obs_e, pat_e = r.json()["entry"]
    assert pat_e["response"]["status"].startswith("201")
    assert client.get(f"/fhir/Observation/{_id(obs_e)}").json()["subject"]["reference"] == "Patient/tx-put-1"


def test_failing_entry_fails_the_whole_transaction_and_nothing_is_written(client):
    r = client.post("/fhir", json=_tx(
        {"resource": _patient(id="keep-out-1"), "request": {"method": "PUT", "url": "Patient/keep-out-1"}},
        _post(_patient("Good")),
        _post({"resourceType": "Patient", "gender": 12}),
    ))
    assert r.status_code in (400, 422), r.text
    outcome = r.json()
    assert outcome["resourceType"] == "OperationOutcome"
    assert "Bundle.entry[2]" in outcome["issue"][0]["diagnostics"]
    assert client.get("/fhir/Patient/keep-out-1").status_code == 404
    assert client.get("/fhir/Patient?family=Good").json().get("total", 0) == 0


@pytest.mark.parametrize(
    ("entry", "status"),
    [
        ({"request": {"method": "GET", "url": "Patient/nope"}}, 404),
        ({"request": {"method": "DELETE", "url": "Patient/existing"}, "ifMatch": 'W/"7"'}, 412),
        ({"resource": _patient(id="existing"), "request": {"method": "PUT", "url": "Patient/existing",
                                                          "ifMatch": 'W/"7"'}}, 412),
        ({"resource": _patient(id="other"), "request": {"method": "PUT", "url": "Patient/existing"}}, 400),
    ],
)
def test_transaction_answers_with_the_failing_entrys_status(client, entry, status):
    client.put("/fhir/Patient/existing", json=_patient(id="existing"))
    if "ifMatch" in entry:
        entry = {"request": {**entry["request"], "ifMatch": entry["ifMatch"]}}
    r = client.post("/fhir", json=_tx(_post(_patient("Ghost")), entry))
    assert r.status_code == status, r.text
    assert r.json()["resourceType"] == "OperationOutcome"
    assert client.get("/fhir/Patient?family=Ghost").json().get("total", 0) == 0
    assert client.get("/fhir/Patient/existing").json()["meta"]["versionId"] == "1"


def test_response_lists_entries_in_request_order_and_gets_see_the_writes(client):
    r = client.post("/fhir", json=_tx(
        {"request": {"method": "GET", "url": "Patient/ord-1"}},
        {"resource": _patient("Ordered", id="ord-1"), "request": {"method": "PUT", "url": "Patient/ord-1"}},
        {"request": {"method": "GET", "url": "Patient?family=Ordered"}},
    ))
    assert r.status_code == 200, r.text
    get_e, put_e, search_e = r.json()["entry"]
    assert get_e["response"]["status"].startswith("200") and get_e["resource"]["id"] == "ord-1"
    assert put_e["response"]["status"].startswith("201")
    assert search_e["resource"]["resourceType"] == "Bundle"
    assert [e["resource"]["id"] for e in search_e["resource"]["entry"]] == ["ord-1"]


def test_get_entry_that_pages_on_a_fresh_server(client):
    r = client.post("/fhir", json=_tx(_post(_patient("Pager")), _post(_patient("Pager")),
                                      {"request": {"method": "GET", "url": "Patient?family=Pager&_count=1"}}))
    assert r.status_code == 200, r.text
    page = r.json()["entry"][2]["resource"]
    assert len(page["entry"]) == 1 and any(link["relation"] == "next" for link in page["link"])


def test_deletes_run_before_creates_whatever_their_position(client):
    client.put("/fhir/Patient/del-1", json=_patient("Doomed", id="del-1", identifier=[{"system": "s", "value": "d1"}]))
    r = client.post("/fhir", json=_tx(
        _post(_patient("Reborn", identifier=[{"system": "s", "value": "d1"}]), ifNoneExist="identifier=s|d1"),
        {"request": {"method": "DELETE", "url": "Patient/del-1"}},
    ))
    assert r.status_code == 200, r.text
    post_e, del_e = r.json()["entry"]
    # The delete ran first, so the conditional create found nothing and created.
    assert post_e["response"]["status"].startswith("201")
    assert del_e["response"]["status"].startswith("204")
    assert client.get("/fhir/Patient/del-1").status_code == 410


def test_conditional_create_resolves_links_to_the_existing_resource(client):
    pid = client.post("/fhir/Patient", json=_patient(identifier=[{"system": "s", "value": "cc1"}])).json()["id"]
    p = _urn()
    r = client.post("/fhir", json=_tx(
        _post(_patient("Dup", identifier=[{"system": "s", "value": "cc1"}]), p, ifNoneExist="identifier=s|cc1"),
        _post(_obs(p)),
    ))
    assert r.status_code == 200, r.text
    pat_e, obs_e = r.json()["entry"]
    assert pat_e["response"]["status"].startswith("200") and _id(pat_e) == pid
    assert client.get(f"/fhir/Observation/{_id(obs_e)}").json()["subject"]["reference"] == f"Patient/{pid}"
    assert client.get("/fhir/Patient?identifier=s|cc1").json()["total"] == 1


def test_identical_conditional_creates_in_one_transaction_create_once(client):
    a, b = _urn(), _urn()
    pat = _patient(identifier=[{"system": "s", "value": "twice"}])
    r = client.post("/fhir", json=_tx(_post(pat, a, ifNoneExist="identifier=s|twice"),
                                      _post(dict(pat), b, ifNoneExist="identifier=s|twice"), _post(_obs(b))))
    assert r.status_code == 200, r.text
    first, second, obs = r.json()["entry"]
    assert _id(first) == _id(second)
    assert client.get("/fhir/Patient?identifier=s|twice").json()["total"] == 1
    assert client.get(f"/fhir/Observation/{_id(obs)}").json()["subject"]["reference"] == f"Patient/{_id(first)}"


def test_conditional_create_matching_several_is_412(client):
    for _ in range(2):
        client.post("/fhir/Patient", json=_patient(identifier=[{"system": "s", "value": "many"}]))
    r = client.post("/fhir", json=_tx(_post(_patient(), ifNoneExist="identifier=s|many")))
    assert r.status_code == 412


def test_conditional_reference_is_resolved_by_search(client):
    pid = client.post("/fhir/Patient", json=_patient(identifier=[{"system": "s", "value": "cr1"}])).json()["id"]
    r = client.post("/fhir", json=_tx(_post(_obs("Patient?identifier=s|cr1"))))
    assert r.status_code == 200, r.text
    oid = _id(r.json()["entry"][0])
    assert client.get(f"/fhir/Observation/{oid}").json()["subject"]["reference"] == f"Patient/{pid}"


@pytest.mark.parametrize("copies", [0, 2])
def test_conditional_reference_matching_none_or_several_is_412(client, copies):
    for _ in range(copies):
        client.post("/fhir/Patient", json=_patient(identifier=[{"system": "s", "value": "cr2"}]))
    r = client.post("/fhir", json=_tx(_post(_obs("Patient?identifier=s|cr2"))))
    assert r.status_code == 412, r.text
    assert client.get("/fhir/Observation?code:text=weight").json().get("total", 0) == 0


def test_conditional_update_and_delete_entries(client):
    client.post("/fhir/Patient", json=_patient("Old", identifier=[{"system": "s", "value": "cu1"}]))
    client.post("/fhir/Patient", json=_patient("Gone", identifier=[{"system": "s", "value": "cd1"}]))
    r = client.post("/fhir", json=_tx(
        {"resource": _patient("New", identifier=[{"system": "s", "value": "cu1"}]),
         "request": {"method": "PUT", "url": "Patient?identifier=s|cu1"}},
        {"request": {"method": "DELETE", "url": "Patient?identifier=s|cd1"}},
        {"resource": _patient("Fresh", identifier=[{"system": "s", "value": "cu2"}]),
         "request": {"method": "PUT", "url": "Patient?identifier=s|cu2"}},
    ))
    assert r.status_code == 200, r.text
    upd, dele, created = r.json()["entry"]
    assert upd["response"]["status"].startswith("200") and upd["response"]["etag"] == 'W/"2"'
    assert dele["response"]["status"].startswith("204")
    assert created["response"]["status"].startswith("201")
    assert client.get("/fhir/Patient?identifier=s|cu1").json()["entry"][0]["resource"]["name"][0]["family"] == "New"
    assert client.get("/fhir/Patient?identifier=s|cd1").json().get("total", 0) == 0


def test_two_entries_on_the_same_resource_are_400(client):
    r = client.post("/fhir", json=_tx(
        {"resource": _patient(id="twice"), "request": {"method": "PUT", "url": "Patient/twice"}},
        {"request": {"method": "DELETE", "url": "Patient/twice"}},
    ))
    assert r.status_code == 400
    assert client.get("/fhir/Patient/twice").status_code == 404


def test_if_none_match_on_a_get_entry_answers_304(client):
    client.put("/fhir/Patient/inm", json=_patient(id="inm"))
    r = client.post("/fhir", json=_tx({"request": {"method": "GET", "url": "Patient/inm", "ifNoneMatch": 'W/"1"'}}))
    assert r.status_code == 200
    assert r.json()["entry"][0]["response"]["status"].startswith("304")


def test_patch_entries_with_json_patch_binary_and_fhirpath_parameters(client):
    client.put("/fhir/Patient/pt-1", json=_patient(id="pt-1"))
    client.put("/fhir/Patient/pt-2", json=_patient(id="pt-2"))
    ops = orjson.dumps([{"op": "replace", "path": "/name/0/family", "value": "Json"}])
    params = {"resourceType": "Parameters", "parameter": [{"name": "operation", "part": [
        {"name": "type", "valueCode": "replace"}, {"name": "path", "valueString": "Patient.name[0].family"},
        {"name": "value", "valueString": "Path"}]}]}
    r = client.post("/fhir", json=_tx(
        {"resource": {"resourceType": "Binary", "contentType": "application/json-patch+json",
                      "data": base64.b64encode(ops).decode()}, "request": {"method": "PATCH", "url": "Patient/pt-1"}},
        {"resource": params, "request": {"method": "PATCH", "url": "Patient/pt-2"}},
    ))
    assert r.status_code == 200, r.text
    assert client.get("/fhir/Patient/pt-1").json()["name"][0]["family"] == "Json"
    assert client.get("/fhir/Patient/pt-2").json()["name"][0]["family"] == "Path"


def test_prefer_minimal_and_operation_outcome_shape_entries(client):
    r = client.post("/fhir", json=_tx(_post(_patient())), headers={"Prefer": "return=minimal"})
    e = r.json()["entry"][0]
    assert "resource" not in e and e["response"]["status"].startswith("201")
    r = client.post("/fhir", json=_tx(_post(_patient())), headers={"Prefer": "return=OperationOutcome"})
    e = r.json()["entry"][0]
    assert "resource" not in e and e["response"]["outcome"]["resourceType"] == "OperationOutcome"


def test_empty_transaction_answers_an_empty_response(client):
    r = client.post("/fhir", json=_tx())
    assert r.status_code == 200 and r.json()["type"] == "transaction-response"


@pytest.mark.parametrize(
    "body",
    [
        _patient(),
        {"resourceType": "Bundle", "type": "collection", "entry": []},
        {"resourceType": "Bundle", "type": "transaction", "entry": {"not": "a list"}},
        _tx({"resource": _patient()}),
        _tx({"resource": _patient(), "request": {"url": "Patient"}}),
        _tx({"resource": _patient(), "request": {"method": "FETCH", "url": "Patient"}}),
        _tx({"resource": _patient(), "request": {"method": "POST"}}),
        _tx({"resource": _patient(), "request": {"method": "POST", "url": "Patent"}}),
        _tx({"resource": _patient(), "request": {"method": "PUT", "url": "Patient"}}),
        _tx({"request": {"method": "POST", "url": "Patient"}}),
        _tx({"resource": _tx(), "request": {"method": "POST", "url": ""}}),
        _tx({"resource": _patient(), "request": {"method": "POST", "url": "http://elsewhere.org/fhir/Patient"}}),
        _tx(_post(_patient(), "urn:uuid:same"), _post(_patient(), "urn:uuid:same")),
        _tx({"resource": _obs("x"), "request": {"method": "POST", "url": "Patient"}}),
    ],
    ids=["not-a-bundle", "wrong-type", "entry-not-list", "no-request", "no-method", "unknown-method", "no-url",
         "unknown-type", "put-without-id", "post-without-resource", "nested-transaction", "foreign-url",
         "duplicate-full-url", "type-mismatch"],
)
def test_bad_transaction_input_is_400(client, body):
    r = client.post("/fhir", json=body)
    assert r.status_code == 400, r.text
    assert r.json()["resourceType"] == "OperationOutcome"


def test_nested_bundle_is_fine_as_a_resource(client):
    doc = {"resourceType": "Bundle", "type": "collection",
           "entry": [{"fullUrl": "urn:uuid:inner", "resource": _patient()}]}
    r = client.post("/fhir", json=_tx(_post(doc)))
    assert r.status_code == 200, r.text
    assert client.get(f"/fhir/Bundle/{_id(r.json()['entry'][0])}").json()["type"] == "collection"


@pytest.mark.slow
def test_ten_thousand_entry_transaction(client):
    p = _urn()
    entries = [_post(_patient(), p)] + [_post(_obs(p)) for _ in range(9999)]
    r = client.post("/fhir", json=_tx(*entries), headers={"Prefer": "return=minimal"})
    assert r.status_code == 200, r.text[:500]
    out = r.json()["entry"]
    assert len(out) == 10_000 and all(e["response"]["status"].startswith("201") for e in out)
    assert client.get("/fhir/Observation?_summary=count").json()["total"] == 9999
