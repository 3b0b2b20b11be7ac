"""CDS security beyond the JWT basics: fhirAuthorization scopes honoured on server-side fetch (auth on),
allow-listed jku, RS384, client service allow-list, answer-only mode."""

from __future__ import annotations

import base64
import json
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import rsa
from starlette.testclient import TestClient

from medcloud.app import Services, build_services, create_app
from medcloud.cds.auth import ClientVerifier, InvalidClientToken
from medcloud.config import Settings
from medcloud.errors import Forbidden
from medcloud.fhir import router
from medcloud.fhir.exchange import FhirRequest
from medcloud.security.oauth import store
from tests.cds.conftest import ISS, cv_record


@pytest.fixture
def secured(backend: str, tmp_path: Path, ehr_jwks: dict[str, Any]) -> Iterator[tuple[Services, TestClient]]:
    s = Settings(data_dir=tmp_path / "data", db=backend, auth=True, cds_clients=[{"iss": ISS, "jwks": ehr_jwks}])
    svc = build_services(s)
    for r in cv_record("p9"):
        assert router.handle(svc.fhir, FhirRequest("PUT", f"{r['resourceType']}/{r['id']}", body=r)).status in (200, 201)
    with TestClient(create_app(s, svc), base_url="http://testserver") as c:
        yield svc, c
    svc.close()


def _token(svc: Services, web: TestClient, scopes: str) -> str:
    client, secret = store.create_client(svc.db, name="ehr", auth_method="client_secret_basic", scopes=scopes,
                                         grant_types=("client_credentials",), redirect_uris=(), jwks=None,
                                         jwks_uri=None)
    basic = base64.b64encode(f"{client.client_id}:{secret}".encode()).decode()
    r = web.post("/auth/token", data={"grant_type": "client_credentials", "scope": scopes},
                 headers={"Authorization": f"Basic {basic}"})
    assert r.status_code == 200, r.text
    return str(r.json()["access_token"])


@pytest.mark.parametrize(("scopes", "status"), [("system/*.rs", 200), ("system/Patient.rs", 412)])
def test_server_side_fetch_honours_the_fhir_authorization_scopes(secured: Any, sign: Any, scopes: str,
                                                                  status: int) -> None:
    svc, web = secured
    token = _token(svc, web, scopes)
    body = {"hook": "patient-view", "hookInstance": str(uuid.uuid4()),
            "context": {"userId": "Practitioner/u", "patientId": "p9"}, "fhirServer": "http://testserver/fhir",
            "fhirAuthorization": {"access_token": token, "token_type": "Bearer", "scope": scopes, "subject": "ehr"}}
    r = web.post("/cds-services/cardiovascular-risk", json=body,
                 headers={"Authorization": f"Bearer {sign('cardiovascular-risk')}"})
    assert r.status_code == status, r.text
    if status == 200:
        assert "10-year ASCVD risk" in r.json()["cards"][0]["summary"]
    else:
        assert "refused by this server (404)" in r.json()["message"] and "Observation" in r.json()["message"]


def _verifier(services: Services, settings: Settings, client: dict[str, Any], fetched: dict[str, bytes]) -> ClientVerifier:
    return ClientVerifier(settings.with_overrides(cds_clients=[client]), services.db, fetch=lambda url: fetched[url])


def _jwt(key: Any, alg: str, aud: str, headers: dict[str, Any]) -> str:
    now = int(time.time())
    return jwt.encode({"iss": ISS, "aud": aud, "iat": now, "exp": now + 60, "jti": str(uuid.uuid4())}, key,
                      algorithm=alg, headers=headers)


def test_allow_listed_jku_and_rs384_are_accepted(services: Services, settings: Settings) -> None:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    jwk = json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(key.public_key()))
    jwk.update(kid="r1", alg="RS384")
    url = "https://ehr.example.org/jwks"
    v = _verifier(services, settings, {"iss": ISS, "jku_allow": [url], "services": ["early-warning"]},
                  {url: json.dumps({"keys": [jwk]}).encode()})
    aud = v.audience("early-warning")
    assert v.verify("Bearer " + _jwt(key, "RS384", aud, {"kid": "r1", "jku": url}), "early-warning").iss == ISS
    with pytest.raises(InvalidClientToken, match="no keys configured"):
        v.verify("Bearer " + _jwt(key, "RS384", aud, {"kid": "r1"}), "early-warning")  # no jku, no configured keys
    with pytest.raises(InvalidClientToken, match="not accepted"):
        v.verify("Bearer " + _jwt(key, "RS256", aud, {"kid": "r1", "jku": url}), "early-warning")
    with pytest.raises(Forbidden, match="may not call"):
        v.verify("Bearer " + _jwt(key, "RS384", v.audience("cardiovascular-risk"), {"kid": "r1", "jku": url}),
                 "cardiovascular-risk")


def test_answer_only_mode_offers_the_risk_assessment_as_a_suggestion(settings: Settings, ehr_jwks: dict[str, Any],
                                                                     sign: Any) -> None:
    s = settings.with_overrides(cds_clients=[{"iss": ISS, "jwks": ehr_jwks}], cds_write_risk_assessments=False)
    svc = build_services(s)
    try:
        with TestClient(create_app(s, svc)) as c:
            r = cv_record()
            bundle = lambda *xs: {"resourceType": "Bundle", "entry": [{"resource": x} for x in xs]}  # noqa: E731
            pre = {"patient": r[0], "tc": bundle(r[1]), "hdl": bundle(r[2]), "sbp": bundle(r[3]),
                   "smoking": bundle(r[4]), "diabetes": None, "medications": None}
            body = {"hook": "patient-view", "hookInstance": str(uuid.uuid4()),
                    "context": {"userId": "Practitioner/u", "patientId": "p1"}, "prefetch": pre}
            card = c.post("/cds-services/cardiovascular-risk", json=body,
                          headers={"Authorization": f"Bearer {sign('cardiovascular-risk')}"}).json()["cards"][0]
            action = card["suggestions"][0]["actions"][0]
            assert card["selectionBehavior"] == "at-most-one" and action["type"] == "create"
            assert action["resource"]["resourceType"] == "RiskAssessment" and "Recorded as" not in card["detail"]
            assert c.get("/fhir/RiskAssessment").json().get("total", 0) == 0
    finally:
        svc.close()
