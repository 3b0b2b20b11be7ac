"""The CDS Hooks edge on SQLite and PostgreSQL: JWT security, hooks, prefetch vs server fetch, RiskAssessment,
feedback, configured model services, and bad requests that never become a 500."""

from __future__ import annotations

import time
import uuid
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import ec
from sqlalchemy import select

from medcloud.storage.cds_schema import cds_feedback
from tests.cds.conftest import cv_record


def _hook(pid: str = "p1", hook: str = "patient-view", **extra: Any) -> dict[str, Any]:
    return {"hook": hook, "hookInstance": str(uuid.uuid4()), "context": {"userId": "Practitioner/u1", "patientId": pid},
            **extra}


def _prefetch(pid: str = "p1") -> dict[str, Any]:
    r = cv_record(pid)
    bundle = lambda *xs: {"resourceType": "Bundle", "type": "searchset", "entry": [{"resource": x} for x in xs]}  # noqa: E731
    return {"patient": r[0], "tc": bundle(r[1]), "hdl": bundle(r[2]), "sbp": bundle(r[3]), "smoking": bundle(r[4]),
            "diabetes": bundle(), "medications": bundle()}


def _post(client: Any, sign: Any, service: str, body: Any, **claims: Any) -> Any:
    return client.post(f"/cds-services/{service}", json=body, headers={"Authorization": f"Bearer {sign(service, **claims)}"})


def test_discovery_lists_services_with_prefetch_without_credentials(cds_client: Any) -> None:
    r = cds_client.get("/cds-services")
    assert r.status_code == 200
    services = {s["id"]: s for s in r.json()["services"]}
    assert services["cardiovascular-risk"]["hook"] == "patient-view"
    assert services["cardiovascular-risk-order-select"]["hook"] == "order-select"
    assert "{{context.patientId}}" in services["early-warning"]["prefetch"]["patient"]


def test_valid_jwt_gets_a_card_and_a_written_risk_assessment_with_basis(cds_client: Any, sign: Any) -> None:
    r = _post(cds_client, sign, "cardiovascular-risk", _hook(prefetch=_prefetch()))
    assert r.status_code == 200, r.text
    card = r.json()["cards"][0]
    assert card["summary"].startswith("10-year ASCVD risk 5.4%") and len(card["summary"]) < 140
    assert card["indicator"] == "info" and card["source"]["label"].startswith("medcloud")
    assert "| ln age |" in card["detail"] and "RiskAssessment/" in card["detail"]
    ra_id = card["detail"].split("`RiskAssessment/")[1].split("`")[0]
    ra = cds_client.get(f"/fhir/RiskAssessment/{ra_id}").json()
    assert ra["prediction"][0]["probabilityDecimal"] == pytest.approx(0.054, abs=0.002)
    assert {b["reference"] for b in ra["basis"]} >= {"Observation/p1-tc", "Observation/p1-hdl"}
    assert any(e["url"].endswith("cds-explanation") for e in ra["extension"])


@pytest.mark.parametrize("case", ["wrong-aud", "expired", "unknown-iss", "hs256", "none", "foreign-key",
                                  "jku-not-allowed", "long-lived", "no-token"])
def test_bad_jwts_are_refused_with_401(cds_client: Any, sign: Any, case: str) -> None:
    now = int(time.time())
    svc = "cardiovascular-risk"
    token = {
        "wrong-aud": lambda: sign(svc, aud="https://elsewhere/cds-services/cardiovascular-risk"),
        "expired": lambda: sign(svc, iat=now - 600, exp=now - 300),
        "unknown-iss": lambda: sign(svc, iss="https://evil.example"),
        "hs256": lambda: jwt.encode({"iss": "https://ehr.example.org", "aud": "x", "exp": now + 60, "iat": now,
                                     "jti": "a"}, "secret-secret-secret-secret-secret", algorithm="HS256"),
        "none": lambda: jwt.encode({"iss": "https://ehr.example.org", "exp": now + 60, "iat": now, "jti": "b"}, None,
                                   algorithm="none"),
        "foreign-key": lambda: sign(svc, key=ec.generate_private_key(ec.SECP384R1())),
        "jku-not-allowed": lambda: sign(svc, headers={"jku": "https://evil.example/jwks"}),
        "long-lived": lambda: sign(svc, exp=now + 3600),
        "no-token": lambda: None,
    }[case]()
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    r = cds_client.post(f"/cds-services/{svc}", json=_hook(prefetch=_prefetch()), headers=headers)
    assert r.status_code == 401, r.text
    assert r.json()["message"]


def test_replayed_jti_is_refused(cds_client: Any, sign: Any) -> None:
    token = sign("cardiovascular-risk")
    headers = {"Authorization": f"Bearer {token}"}
    assert cds_client.post("/cds-services/cardiovascular-risk", json=_hook(prefetch=_prefetch()),
                           headers=headers).status_code == 200
    again = cds_client.post("/cds-services/cardiovascular-risk", json=_hook(prefetch=_prefetch()), headers=headers)
    assert again.status_code == 401 and "replay" in again.json()["message"]


@pytest.mark.parametrize(("service", "body", "status", "words"), [
    ("no-such-service", _hook(), 404, "no CDS service"),
    ("cardiovascular-risk", _hook(hook="order-sign"), 400, "patient-view"),
    ("cardiovascular-risk", {"hook": "patient-view"}, 400, "hookInstance"),
    ("cardiovascular-risk", _hook() | {"context": {"userId": "x"}}, 400, "patientId"),
    ("cardiovascular-risk", [1, 2], 400, "JSON object"),
    ("cardiovascular-risk", _hook(prefetch={"patient": "oops"}), 400, "prefetch.patient"),
    ("cardiovascular-risk", _hook(fhirAuthorization={"access_token": "t"}), 400, "fhirAuthorization"),
    ("cardiovascular-risk-order-sign", _hook(hook="order-sign"), 400, "draftOrders"),
    ("cardiovascular-risk", _hook(), 412, "fhirServer"),
])
def test_bad_requests_get_clear_errors_never_500(cds_client: Any, sign: Any, service: str, body: Any, status: int,
                                                  words: str) -> None:
    r = _post(cds_client, sign, service, body)
    assert r.status_code == status, r.text
    assert words in r.json()["message"]


def test_body_that_is_not_json_is_400(cds_client: Any, sign: Any) -> None:
    r = cds_client.post("/cds-services/early-warning", content=b"{nope",
                        headers={"Authorization": f"Bearer {sign('early-warning')}"})
    assert r.status_code == 400


def test_server_side_fetch_gives_the_same_card_as_prefetch(cds_client: Any, sign: Any) -> None:
    for resource in cv_record("p7"):
        put = cds_client.put(f"/fhir/{resource['resourceType']}/{resource['id']}", json=resource)
        assert put.status_code in (200, 201), put.text
    prefetched = _post(cds_client, sign, "cardiovascular-risk", _hook("p7", prefetch=_prefetch("p7"))).json()
    fetched = _post(cds_client, sign, "cardiovascular-risk", _hook("p7", fhirServer="http://testserver/fhir",
                                                                    fhirAuthorization={"access_token": "x",
                                                                                       "token_type": "Bearer",
                                                                                       "scope": "patient/*.rs",
                                                                                       "subject": "ehr"})).json()
    a, b = prefetched["cards"][0], fetched["cards"][0]
    assert a["summary"] == b["summary"]
    assert a["detail"].split("Recorded as")[0] == b["detail"].split("Recorded as")[0]


def test_order_select_shows_risk_only_for_a_selected_statin(cds_client: Any, sign: Any) -> None:
    statin = {"resourceType": "MedicationRequest", "id": "d1", "status": "draft", "intent": "order",
              "medicationCodeableConcept": {"text": "atorvastatin 20 MG Oral Tablet"}}
    context = {"userId": "Practitioner/u1", "patientId": "p1", "selections": ["MedicationRequest/d1"],
               "draftOrders": {"resourceType": "Bundle", "type": "collection", "entry": [{"resource": statin}]}}
    body = {"hook": "order-select", "hookInstance": str(uuid.uuid4()), "context": context, "prefetch": _prefetch()}
    r = _post(cds_client, sign, "cardiovascular-risk-order-select", body)
    assert r.status_code == 200 and "atorvastatin" in r.json()["cards"][0]["detail"]
    context["selections"] = []
    r = _post(cds_client, sign, "cardiovascular-risk-order-select", body)
    assert r.status_code == 200 and r.json()["cards"] == []


def test_feedback_is_stored(cds_client: Any, sign: Any, cds_services: Any) -> None:
    body = {"feedback": [{"card": "c0ffee", "outcome": "overridden", "outcomeTimestamp": "2026-11-27T12:00:00Z",
                          "overrideReason": {"reason": {"code": "data-outdated"}, "userComment": "old lab"}}]}
    r = cds_client.post("/cds-services/cardiovascular-risk/feedback", json=body,
                        headers={"Authorization": f"Bearer {sign('cardiovascular-risk')}"})
    assert r.status_code == 200 and r.json() == {"stored": 1}
    with cds_services.db.read() as conn:
        row = conn.execute(select(cds_feedback)).one()
    assert (row.service, row.card, row.outcome, row.client) == ("cardiovascular-risk", "c0ffee", "overridden",
                                                                "https://ehr.example.org")
    bad = cds_client.post("/cds-services/cardiovascular-risk/feedback", json={"feedback": [{"card": "x"}]},
                          headers={"Authorization": f"Bearer {sign('cardiovascular-risk')}"})
    assert bad.status_code == 400 and "outcome" in bad.json()["message"]


def test_fetch_from_another_fhir_server_over_http(cds_client: Any, sign: Any, live_server: str, services: Any) -> None:
    from medcloud.fhir import router
    from medcloud.fhir.exchange import FhirRequest

    for r in cv_record("p8"):
        assert router.handle(services.fhir, FhirRequest("PUT", f"{r['resourceType']}/{r['id']}", body=r)).status in (200, 201)
    auth = {"access_token": "t", "token_type": "Bearer", "scope": "patient/*.rs", "subject": "ehr"}
    fetched = _post(cds_client, sign, "cardiovascular-risk", _hook("p8", fhirServer=live_server, fhirAuthorization=auth))
    prefetched = _post(cds_client, sign, "cardiovascular-risk", _hook("p8", prefetch=_prefetch("p8")))
    assert fetched.status_code == 200, fetched.text
    assert fetched.json()["cards"][0]["summary"] == prefetched.json()["cards"][0]["summary"]
    down = _post(cds_client, sign, "cardiovascular-risk", _hook("p8", fhirServer="http://127.0.0.1:9/fhir",
                                                                fhirAuthorization=auth))
    assert down.status_code == 412 and "failed" in down.json()["message"]
