"""``medcloud admin ...`` through typer's CliRunner, and the first-start admin credentials file."""

from __future__ import annotations

import base64
import json
import stat

import pytest
from typer.testing import CliRunner

from medcloud.app import build_services, create_app
from medcloud.cli import app as cli
from medcloud.config import Settings
from medcloud.security.oauth import ensure_admin_client, store


def _run(*args: str, input: str | None = None):
    return CliRunner().invoke(cli, ["admin", *args], input=input)


def _json_out(result) -> dict:
    start = result.stdout.index("{")
    return json.loads(result.stdout[start:])


@pytest.fixture
def where(backend, tmp_path):
    return ["--data-dir", str(tmp_path / "data"), "--db", backend]


def _basic(client_id: str, secret: str) -> dict[str, str]:
    return {"Authorization": "Basic " + base64.b64encode(f"{client_id}:{secret}".encode()).decode()}


def test_client_lifecycle(where, backend, tmp_path):
    r = _run("create-client", "--name", "Lab feed", "--scope", "system/Observation.cruds", *where)
    assert r.exit_code == 0, r.output
    doc = _json_out(r)
    client_id, secret = doc["client_id"], doc["client_secret"]
    assert doc["token_endpoint"].endswith("/auth/token")
    listed = _run("list-clients", *where)
    assert listed.exit_code == 0 and client_id[:8] in listed.stdout and "Lab feed" in listed.stdout
    assert secret not in listed.stdout

    settings = Settings(data_dir=tmp_path / "data", db=backend, auth=True)
    svc = build_services(settings)
    try:
        from starlette.testclient import TestClient

        with TestClient(create_app(settings, svc)) as web:
            form = {"grant_type": "client_credentials"}
            assert web.post("/auth/token", data=form, headers=_basic(client_id, secret)).status_code == 200
            rotated = _run("rotate-secret", client_id, *where)
            assert rotated.exit_code == 0, rotated.output
            new_secret = _json_out(rotated)["client_secret"]
            assert new_secret != secret
            assert web.post("/auth/token", data=form, headers=_basic(client_id, secret)).status_code == 401
            assert web.post("/auth/token", data=form, headers=_basic(client_id, new_secret)).status_code == 200
            revoked = _run("revoke-client", client_id, *where)
            assert revoked.exit_code == 0, revoked.output
            assert web.post("/auth/token", data=form, headers=_basic(client_id, new_secret)).status_code == 401
        assert "revoked" in _run("list-clients", *where).stdout
    finally:
        svc.close()


def test_cli_errors_exit_non_zero_with_a_message(where):
    r = _run("create-client", "--name", "x", "--scope", "system/Bogus.rs", *where)
    assert r.exit_code == 1 and "Bogus" in r.output
    r = _run("create-client", "--name", "x", "--scope", "user/*.rs", "--grant-type", "authorization_code", *where)
    assert r.exit_code == 1 and "redirect URI" in r.output
    r = _run("create-client", "--name", "x", "--scope", "system/*.rs", "--auth-method", "magic", *where)
    assert r.exit_code == 1 and "magic" in r.output
    assert _run("revoke-client", "no-such-client", *where).exit_code == 1
    assert _run("rotate-secret", "no-such-client", *where).exit_code == 1
    r = _run("create-client", "--name", "x", "--scope", "system/*.rs", "--client-id", "dup", *where)
    assert r.exit_code == 0, r.output
    r = _run("create-client", "--name", "x", "--scope", "system/*.rs", "--client-id", "dup", *where)
    assert r.exit_code == 1 and "already exists" in r.output
    r = _run("create-client", "--name", "x", "--scope", "system/*.rs", "--auth-method", "private_key_jwt",
             "--jwks-file", "/nonexistent/jwks.json", *where)
    assert r.exit_code == 1 and "JWK Set" in r.output


def test_private_key_jwt_client_from_a_jwks_file(where, tmp_path):
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).parent))
    from _oauth_helpers import new_key

    jwks = tmp_path / "jwks.json"
    jwks.write_text(json.dumps(new_key("ES384").jwks()))
    r = _run("create-client", "--name", "backend", "--scope", "system/*.rs", "--auth-method", "private_key_jwt",
             "--jwks-file", str(jwks), *where)
    assert r.exit_code == 0, r.output
    assert "client_secret" not in _json_out(r)


def test_create_user_and_rotate_signing_key(where, backend, tmp_path):
    r = _run("create-user", "carol", "--fhir-user", "Practitioner/9", *where, input="pa55word!\npa55word!\n")
    assert r.exit_code == 0, r.output
    assert "pa55word" not in r.stdout
    assert _run("create-user", "carol", "--password", "another-pass", *where).exit_code == 1
    assert _run("create-user", "dave", "--password", "short", *where).exit_code == 1
    first = _run("rotate-signing-key", *where)
    second = _run("rotate-signing-key", *where)
    assert first.exit_code == 0 and second.exit_code == 0, first.output + second.output
    assert _json_out(second)["generation"] == _json_out(first)["generation"] + 1
    settings = Settings(data_dir=tmp_path / "data", db=backend)
    svc = build_services(settings)
    try:
        user = store.get_user(svc.db, "carol")
        assert user is not None and user.fhir_user == "Practitioner/9" and "pa55word" not in user.password_hash
    finally:
        svc.close()


def test_admin_credentials_file_is_0600_and_works(oauth_settings, oauth_services):
    path = ensure_admin_client(oauth_settings, oauth_services.db)
    assert path == oauth_settings.data_dir / "admin-credentials.json"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    doc = json.loads(path.read_text())
    assert doc["client_id"] == "admin" and doc["token_endpoint"] == oauth_settings.auth_issuer + "/token"
    assert ensure_admin_client(oauth_settings, oauth_services.db) is None  # created once
    assert not list(path.parent.glob(".admin-credentials.json.*"))  # no temporary file left behind
    from starlette.testclient import TestClient

    with TestClient(create_app(oauth_settings, oauth_services)) as web:
        r = web.post("/auth/token", data={"grant_type": "client_credentials"},
                     headers=_basic(doc["client_id"], doc["client_secret"]))
        assert r.status_code == 200, r.text
        assert r.json()["scope"] == "system/*.cruds medcloud/admin"
