"""Bad input gets a clear OperationOutcome with the right status, never a 500 and never a partial write."""

from __future__ import annotations

import pytest

from medcloud.app import build_services, create_app
from medcloud.config import Settings

FHIR = {"Content-Type": "application/fhir+json"}


def _count_versions(client) -> int:
    return len(client.get("/fhir/_history", params={"_count": 1000}).json().get("entry", []))


def _assert_outcome(r, status: int):
    assert r.status_code == status, r.text
    body = r.json()
    assert body["resourceType"] == "OperationOutcome"
    assert body["issue"] and body["issue"][0]["severity"] in ("error", "fatal")
    return body


@pytest.mark.parametrize(
    "payload",
    [b"{", b"", b"[1,2,3]", b"null", b'{"resourceType": "Patient",}', b"\xff\xfe\x00"],
    ids=["truncated", "empty", "array", "null", "trailing-comma", "not-utf8"],
)
def test_malformed_bodies_are_400_and_write_nothing(client, payload):
    before = _count_versions(client)
    _assert_outcome(client.post("/fhir/Patient", content=payload, headers=FHIR), 400)
    assert _count_versions(client) == before


def test_resource_type_not_matching_url_is_400(client):
    _assert_outcome(client.put("/fhir/Patient/x", json={"resourceType": "Observation", "id": "x"}), 400)


def test_unknown_resource_type_in_body_is_rejected(client):
    r = client.post("/fhir/Patient", json={"resourceType": "Spaceship"})
    assert r.status_code in (400, 422)


def test_invalid_date_is_reported_at_its_element(client):
    body = _assert_outcome(client.post("/fhir/Patient", json={"resourceType": "Patient", "birthDate": "2023-02-30"}), 422)
    assert any("Patient.birthDate" in i.get("expression", []) for i in body["issue"])


def test_invalid_quantity_value_is_reported(client):
    obs = {
        "resourceType": "Observation", "status": "final", "code": {"text": "weight"},
        "valueQuantity": {"value": "heavy", "unit": "kg"},
    }
    body = _assert_outcome(client.post("/fhir/Observation", json=obs), 422)
    assert any("Observation.valueQuantity.value" in e for i in body["issue"] for e in i.get("expression", []))


def test_unknown_element_and_missing_required_element_are_422(client):
    body = _assert_outcome(client.post("/fhir/Observation", json={"resourceType": "Observation", "colour": "red"}), 422)
    exprs = {e for i in body["issue"] for e in i.get("expression", [])}
    assert {"Observation.colour", "Observation.status", "Observation.code"} <= exprs


def test_bad_reference_syntax_is_422(client):
    obs = {"resourceType": "Observation", "status": "final", "code": {"text": "x"}, "subject": {"reference": "not a ref"}}
    body = _assert_outcome(client.post("/fhir/Observation", json=obs), 422)
    assert any("Observation.subject.reference" in e for i in body["issue"] for e in i.get("expression", []))


@pytest.mark.parametrize("depth", [200, 5000])
def test_deeply_nested_json_is_refused_cleanly(client, depth):
    nested = '{"resourceType": "Basic", "code": {"text": "x"}, "extension": [' + '{"extension": [' * depth + "]}" * depth + "]}"
    r = client.post("/fhir/Basic", content=nested.encode(), headers=FHIR)
    assert r.status_code in (400, 422), r.text
    assert r.json()["resourceType"] == "OperationOutcome"


def test_body_over_the_configured_limit_is_413(backend, tmp_path):
    from starlette.testclient import TestClient

    settings = Settings(data_dir=tmp_path / "small", db=backend, max_body_bytes=2048, auth=False)
    svc = build_services(settings)
    try:
        with TestClient(create_app(settings, svc)) as c:
            big = {"resourceType": "Patient", "name": [{"family": "x" * 5000}]}
            _assert_outcome(c.post("/fhir/Patient", json=big), 413)
            # Without Content-Length (chunked), the streamed size is enforced too.
            chunks = (b'{"resourceType":"Patient","name":[{"family":"' + b"y" * 1000, b"y" * 2000, b'"}]}')
            _assert_outcome(c.post("/fhir/Patient", content=iter(chunks), headers=FHIR), 413)
            assert c.get("/fhir/Patient/_history").json().get("entry") is None
    finally:
        svc.close()


def test_invalid_ids_in_urls_are_rejected(client):
    _assert_outcome(client.put("/fhir/Patient/bad id!", json={"resourceType": "Patient", "id": "bad id!"}), 400)
    r = client.get("/fhir/Patient/" + "x" * 300)
    assert r.status_code in (400, 404)


def test_history_with_bad_since_is_400(client):
    _assert_outcome(client.get("/fhir/_history", params={"_since": "yesterday"}), 400)
    _assert_outcome(client.get("/fhir/_history", params={"_count": "-1"}), 400)


def test_tampered_or_garbage_paging_cursor_is_400(client):
    for i in range(3):
        client.post("/fhir/Patient", json={"resourceType": "Patient", "gender": "male", "name": [{"family": f"p{i}"}]})
    page = client.get("/fhir/Patient/_history", params={"_count": 1}).json()
    nxt = next(link["url"] for link in page["link"] if link["relation"] == "next")
    token = nxt.split("_cursor=")[1]
    _assert_outcome(client.get("/fhir/Patient/_history", params={"_cursor": token[:-3] + "AAA"}), 400)
    _assert_outcome(client.get("/fhir/Patient/_history", params={"_cursor": "' OR 1=1 --"}), 400)


def test_expired_paging_cursor_is_410(client, services):
    for i in range(3):
        client.post("/fhir/Patient", json={"resourceType": "Patient", "name": [{"family": f"e{i}"}]})
    page = client.get("/fhir/Patient/_history", params={"_count": 1}).json()
    nxt = next(link["url"] for link in page["link"] if link["relation"] == "next")
    real_clock = services.fhir.clock
    services.fhir.clock = lambda: real_clock() + (services.settings.cursor_ttl + 5) * 1_000_000
    try:
        _assert_outcome(client.get(nxt), 410)
    finally:
        services.fhir.clock = real_clock
