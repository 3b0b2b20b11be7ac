"""Helpers and fixtures for the authorization server tests: an app with auth ON, on SQLite and PostgreSQL."""

from __future__ import annotations

import base64
import re
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from jwt.algorithms import ECAlgorithm, RSAAlgorithm
from starlette.testclient import TestClient

from medcloud.app import Services, build_services, create_app
from medcloud.config import Settings
from medcloud.fhir import router
from medcloud.fhir.exchange import FhirRequest
from medcloud.security.oauth import store
from medcloud.security.oauth.grants import s256

FORM = {"Content-Type": "application/x-www-form-urlencoded"}
REDIRECT = "https://app.example.org/callback"
VERIFIER = "v" * 20 + "-._~" + "A1" * 10  # 44 characters of the RFC 7636 alphabet


@pytest.fixture
def oauth_settings(backend: str, tmp_path: Path) -> Settings:
    return Settings(data_dir=tmp_path / "data", db=backend, auth=True)


@pytest.fixture
def oauth_services(oauth_settings: Settings) -> Iterator[Services]:
    svc = build_services(oauth_settings)
    yield svc
    svc.close()


@pytest.fixture
def web(oauth_settings: Settings, oauth_services: Services) -> Iterator[TestClient]:
    with TestClient(create_app(oauth_settings, oauth_services), base_url="http://testserver",
                    follow_redirects=False) as c:
        yield c


@dataclass
class Registered:
    client_id: str
    secret: str | None

    @property
    def basic(self) -> dict[str, str]:
        raw = f"{self.client_id}:{self.secret}".encode()
        return {"Authorization": "Basic " + base64.b64encode(raw).decode()}


@pytest.fixture
def make_client(oauth_services: Services) -> Any:
    def make(scopes: str = "system/*.rs", *, grant_types: tuple[str, ...] = ("client_credentials",),
             auth_method: str = "client_secret_basic", redirect_uris: tuple[str, ...] = (),
             jwks: dict[str, Any] | None = None, jwks_uri: str | None = None, name: str = "test app") -> Registered:
        client, secret = store.create_client(oauth_services.db, name=name, auth_method=auth_method, scopes=scopes,
                                             grant_types=grant_types, redirect_uris=redirect_uris, jwks=jwks,
                                             jwks_uri=jwks_uri)
        return Registered(client.client_id, secret)
    return make


def token_url(settings: Settings) -> str:
    return settings.auth_issuer + "/token"


def client_credentials(web: TestClient, client: Registered, scope: str | None = None) -> Any:
    data = {"grant_type": "client_credentials", **({"scope": scope} if scope else {})}
    return web.post("/auth/token", data=data, headers=client.basic)


def put_patient(services: Services, pid: str) -> None:
    resp = router.handle(services.fhir, FhirRequest("PUT", f"Patient/{pid}", body={"resourceType": "Patient", "id": pid}))
    assert resp.status in (200, 201), resp.resource


def assert_oauth_error(resp: Any, status: int, error: str) -> dict[str, Any]:
    assert resp.status_code == status, resp.text
    assert resp.headers["content-type"].startswith("application/json"), resp.headers
    body: dict[str, Any] = resp.json()
    assert body["error"] == error, body
    assert isinstance(body.get("error_description"), str)
    return body


# -- client keys (private_key_jwt) ------------------------------------------------------------

@dataclass
class ClientKey:
    alg: str
    private: Any
    kid: str

    def jwks(self) -> dict[str, Any]:
        algo = RSAAlgorithm if self.alg.startswith("RS") else ECAlgorithm
        jwk: dict[str, Any] = algo.to_jwk(self.private.public_key(), as_dict=True)
        jwk.update(kid=self.kid, alg=self.alg, use="sig")
        return {"keys": [jwk]}

    def assertion(self, client_id: str, aud: str, *, lifetime: int = 240, jti: str | None = None,
                  **extra: Any) -> str:
        now = int(time.time())
        claims = {"iss": client_id, "sub": client_id, "aud": aud, "exp": now + lifetime, "iat": now,
                  "jti": jti or uuid.uuid4().hex, **extra}
        return jwt.encode(claims, self.private, algorithm=self.alg, headers={"kid": self.kid})


def new_key(alg: str) -> ClientKey:
    private = rsa.generate_private_key(65537, 2048) if alg.startswith("RS") else ec.generate_private_key(ec.SECP384R1())
    return ClientKey(alg, private, f"{alg.lower()}-{uuid.uuid4().hex[:8]}")


def assertion_form(assertion: str, scope: str = "system/*.rs") -> dict[str, str]:
    return {"grant_type": "client_credentials", "scope": scope,
            "client_assertion_type": "urn:ietf:params:oauth:client-assertion-type:jwt-bearer",
            "client_assertion": assertion}


# -- the code flow through the login page -----------------------------------------------------

def authorize_params(client_id: str, scope: str, **over: str) -> dict[str, str]:
    params = {"response_type": "code", "client_id": client_id, "redirect_uri": REDIRECT, "scope": scope,
              "state": "st-123", "code_challenge": s256(VERIFIER), "code_challenge_method": "S256"}
    params.update(over)
    return {k: v for k, v in params.items() if v != ""}


def hidden_fields(html: str) -> dict[str, str]:
    return dict(re.findall(r'<input type="hidden" name="([^"]+)" value="([^"]*)">', html))


def login(web: TestClient, params: dict[str, str], username: str, password: str, *,
          decision: str = "approve", patient: str | None = None) -> Any:
    """GET the consent page, then post its form as a browser would (cookie + hidden fields)."""
    page = web.get("/auth/authorize", params=params)
    assert page.status_code == 200, page.text
    form = {**hidden_fields(page.text), "username": username, "password": password, "decision": decision}
    if patient is not None:
        form["patient"] = patient
    import html as html_module

    form = {k: html_module.unescape(v) for k, v in form.items()}
    return web.post("/auth/authorize", data=form)


def redirect_query(resp: Any) -> dict[str, str]:
    assert resp.status_code == 303, resp.text
    location = resp.headers["location"]
    assert location.startswith(REDIRECT), location
    return {k: v[0] for k, v in parse_qs(urlsplit(location).query).items()}


def exchange(web: TestClient, client_id: str, code: str, verifier: str | None = VERIFIER,
             redirect_uri: str = REDIRECT) -> Any:
    data = {"grant_type": "authorization_code", "code": code, "redirect_uri": redirect_uri, "client_id": client_id}
    if verifier is not None:
        data["code_verifier"] = verifier
    return web.post("/auth/token", data=data)
