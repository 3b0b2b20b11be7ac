"""End to end over HTTP with real tokens: a patient app and a backend service against the FHIR API.

The leak matrix (tests/security/test_leak_matrix.py) tries every path with every scope kind in
process; this file checks that tokens from /auth become exactly those principals at the edge.
"""

from __future__ import annotations

from typing import Any

import pytest
from _oauth_helpers import REDIRECT, authorize_params, client_credentials, exchange, login, redirect_query

from medcloud.security.oauth import store


def _put(web: Any, token: str, resource: dict[str, Any]) -> None:
    r = web.put(f"/fhir/{resource['resourceType']}/{resource['id']}", json=resource,
                headers={"Authorization": f"Bearer {token}"})
    assert r.status_code in (200, 201), r.text


@pytest.fixture
def admin_token(web: Any, make_client: Any) -> str:
    admin = make_client("system/*.cruds medcloud/admin")
    r = client_credentials(web, admin)
    assert r.status_code == 200, r.text
    token: str = r.json()["access_token"]
    for pid in ("alice", "bob"):
        _put(web, token, {"resourceType": "Patient", "id": pid, "name": [{"family": pid.title()}]})
        _put(web, token, {"resourceType": "Observation", "id": f"obs-{pid}", "status": "final",
                          "code": {"text": "weight"}, "subject": {"reference": f"Patient/{pid}"}})
    return token


def test_a_patient_app_sees_its_patient_only(web: Any, oauth_services: Any, make_client: Any, admin_token: str) -> None:
    app = make_client("launch/patient patient/*.rs", auth_method="none",
                      grant_types=("authorization_code",), redirect_uris=(REDIRECT,))
    store.create_user(oauth_services.db, "alice", "alice's password", patient="alice")
    q = redirect_query(login(web, authorize_params(app.client_id, "launch/patient patient/*.rs"), "alice",
                             "alice's password"))
    body = exchange(web, app.client_id, q["code"]).json()
    assert body["patient"] == "alice"
    auth = {"Authorization": f"Bearer {body['access_token']}"}
    assert web.get("/fhir/Patient/alice", headers=auth).status_code == 200
    assert web.get("/fhir/Observation/obs-alice", headers=auth).status_code == 200
    for path in ("/fhir/Patient/bob", "/fhir/Observation/obs-bob", "/fhir/Patient/bob/$everything"):
        r = web.get(path, headers=auth)
        assert r.status_code == 404 and r.json()["resourceType"] == "OperationOutcome", path
    bundle = web.get("/fhir/Observation", params={"_total": "accurate"}, headers=auth).json()
    assert bundle["total"] == 1 and [e["resource"]["id"] for e in bundle["entry"]] == ["obs-alice"]
    # read-only scopes: writes are refused without revealing anything
    r = web.put("/fhir/Observation/obs-alice", headers=auth,
                json={"resourceType": "Observation", "id": "obs-alice", "status": "amended", "code": {"text": "x"},
                      "subject": {"reference": "Patient/alice"}})
    assert r.status_code == 404
    # the audit trail is for administrators
    assert web.get("/fhir/AuditEvent", headers=auth).status_code == 404
    events = web.get("/fhir/AuditEvent", params={"patient": "alice", "_count": "100"},
                     headers={"Authorization": f"Bearer {admin_token}"}).json()
    assert any(e["resource"]["agent"][0]["who"].get("display") == "alice" for e in events.get("entry", []))


def test_a_backend_service_gets_its_types_only(web: Any, make_client: Any, admin_token: str) -> None:
    service = make_client("system/Patient.rs")
    token = client_credentials(web, service).json()["access_token"]
    auth = {"Authorization": f"Bearer {token}"}
    assert {e["resource"]["id"] for e in web.get("/fhir/Patient", headers=auth).json()["entry"]} == {"alice", "bob"}
    assert web.get("/fhir/Observation/obs-bob", headers=auth).status_code == 404
    assert web.get("/fhir/Observation", headers=auth).status_code == 404
    # a paging link is bound to the token's principal
    first = web.get("/fhir/Patient", params={"_count": "1"}, headers=auth).json()
    nxt = next(lk["url"] for lk in first["link"] if lk["relation"] == "next").replace("http://testserver", "")
    assert web.get(nxt, headers=auth).status_code == 200
    assert web.get(nxt, headers={"Authorization": f"Bearer {admin_token}"}).status_code == 403


def test_no_token_means_401_but_discovery_stays_public(web: Any) -> None:
    r = web.get("/fhir/Patient")
    assert r.status_code == 401 and r.json()["resourceType"] == "OperationOutcome"
    assert r.headers["www-authenticate"].startswith("Bearer")
    meta = web.get("/fhir/metadata")
    assert meta.status_code == 200
    security = meta.json()["rest"][0]["security"]
    assert security["service"][0]["coding"][0]["code"] == "SMART-on-FHIR"
    uris = {e["url"]: e["valueUri"] for e in security["extension"][0]["extension"]}
    assert uris["token"].endswith("/auth/token") and uris["authorize"].endswith("/auth/authorize")
    assert web.get("/fhir/.well-known/smart-configuration").status_code == 200
