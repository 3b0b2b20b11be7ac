"""Authentication at the HTTP edges with auth ON: 401 OperationOutcomes, external OIDC, serve, TLS.

The rest of the suite runs with ``auth=False`` (tests/conftest.py); here the same apps require a
Bearer token on FHIR and DICOMweb, on SQLite and PostgreSQL.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import ipaddress
import logging
import os
import signal
import socket
import ssl
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
from starlette.testclient import TestClient
from typer.testing import CliRunner

sys.path.insert(0, str(Path(__file__).parent))  # tests/security/_oidc_idp.py

from _oidc_idp import IdP, hs256_with_public_key, unsigned_token  # noqa: E402

from medcloud.app import build_services, create_app  # noqa: E402
from medcloud.cli import app as cli  # noqa: E402
from medcloud.config import OidcIssuer  # noqa: E402
from medcloud.security.startup import optional  # noqa: E402

AUD = "medcloud-fhir"
ENTRA_ISS = "https://login.microsoftonline.com/72f988bf-86f1-41af-91ab-2d7cd011db47/v2.0"
FHIR = {"Content-Type": "application/fhir+json"}


@pytest.fixture
def idp() -> Any:
    provider = IdP()
    provider.add_key("k1")
    yield provider
    provider.close()


@pytest.fixture
def broken_idp() -> Any:
    """An issuer whose key set is garbage."""
    provider = IdP("/realms/broken")
    provider.add_key("k1")
    provider.jwks_override = b'{"keys": [{"kty": "RSA", "kid": "k1", "n": "%%%", "e": "AQAB"}]}'
    yield provider
    provider.close()


@pytest.fixture
def secured(settings, idp, broken_idp) -> Any:
    """The app with authentication on, trusting a Keycloak-like and an Entra-like issuer."""
    s = settings.with_overrides(auth=True, oidc_issuers=[
        OidcIssuer(issuer=idp.issuer, audience=AUD),
        OidcIssuer(issuer=ENTRA_ISS, audience="api://medcloud", jwks_uri=idp.jwks_uri, subject_claim="oid"),
        OidcIssuer(issuer=broken_idp.issuer, audience=AUD),
    ])
    svc = build_services(s)
    recorded: list[Any] = []
    record = svc.fhir.guard.record
    svc.fhir.guard.record = lambda r: (recorded.append(r), record(r))  # type: ignore[method-assign]
    with TestClient(create_app(s, svc), base_url="http://testserver") as c:
        c.recorded = recorded  # type: ignore[attr-defined]
        yield c
    svc.close()


def _bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def _assert_401(r: httpx.Response, *, error: bool = True, secret: str | None = None) -> None:
    assert r.status_code == 401, (r.status_code, r.text)
    body = r.json()
    assert body["resourceType"] == "OperationOutcome"
    assert [i["code"] for i in body["issue"]] == ["login"]
    challenge = r.headers["www-authenticate"]
    if error:
        assert challenge.startswith('Bearer realm="medcloud", error="invalid_token", error_description="')
    else:
        assert challenge == 'Bearer realm="medcloud"'
    if secret:
        assert secret not in r.text and secret not in challenge
        assert secret.split(".")[1] not in r.text + challenge


def test_public_paths_answer_without_a_token(secured):
    for path in ("/", "/healthz", "/fhir/metadata"):
        assert secured.get(path).status_code == 200, path
    assert secured.get("/fhir/metadata", headers=_bearer("garbage")).status_code == 200
    assert secured.head("/fhir/metadata").status_code == 200
    assert secured.get("/fhir/.well-known/smart-configuration").status_code != 401


def test_no_token_is_a_bare_401_challenge_on_every_edge(secured):
    _assert_401(secured.get("/fhir/Patient"), error=False)
    _assert_401(secured.get("/fhir/Patient/123"), error=False)
    _assert_401(secured.get("/fhir"), error=False)
    _assert_401(secured.post("/fhir/Patient", json={"resourceType": "Patient"}, headers=FHIR), error=False)
    _assert_401(secured.get("/dicomweb/studies"), error=False)
    _assert_401(secured.delete("/dicomweb/studies/1.2.3"), error=False)
    _assert_401(secured.get("/fhir/Patient", headers={"Authorization": "Basic YWxpY2U6c2VjcmV0"}), error=False)


def test_the_bad_token_matrix_is_401_never_500(secured, idp, broken_idp):
    now = int(time.time())
    claims = {"iss": idp.issuer, "sub": "mallory", "aud": AUD, "exp": now + 300, "scope": "system/*.cruds"}
    good = idp.token(sub="alice", aud=AUD, scope="user/Patient.rs")
    head, body, sig = good.split(".")
    idp.add_key("rogue", publish=False)
    cases = {
        "expired": idp.token(sub="a", aud=AUD, iat=now - 900, nbf=now - 900, exp=now - 600),
        "not yet valid": idp.token(sub="a", aud=AUD, nbf=now + 600, exp=now + 900),
        "wrong audience": idp.token(sub="a", aud="some-other-api"),
        "wrong issuer": idp.token(sub="a", aud=AUD, iss="https://evil.example/realms/medcloud"),
        "bad signature": f"{head}.{idp.token(sub='root', aud=AUD).split('.')[1]}.{sig}",
        "forged with an unpublished key": idp.token("rogue", sub="a", aud=AUD, headers={"kid": "k1"}),
        "alg none": unsigned_token(claims),
        "HS256 with the public key": hs256_with_public_key(claims, idp.keys["k1"][0].public_key(), "k1"),
        "unknown kid": idp.token("rogue", sub="a", aud=AUD),
        "garbage": "not-a-token",
        "garbage JWT": "eyJhbGciOi.eyJzdWIi.c2ln",
        "8 KB": "eyJhbGciOiJSUzI1NiJ9." + "A" * 8192 + ".c2ln",
        "malformed JWKS": broken_idp.token(sub="a", aud=AUD),
    }
    for name, token in cases.items():
        for method, path in (("GET", "/fhir/Patient"), ("GET", "/fhir/Patient/x"), ("GET", "/dicomweb/studies")):
            r = secured.request(method, path, headers=_bearer(token))
            try:
                _assert_401(r, secret=token if "." in token and len(token) > 30 else None)
            except AssertionError as e:
                raise AssertionError(f"{name}: {e}") from e
    assert secured.get("/fhir/Patient", headers=_bearer(good)).status_code == 200  # the control


def test_several_authorization_headers_are_refused(secured, idp):
    good = idp.token(sub="alice", aud=AUD, scope="user/*.rs")
    r = secured.get("/fhir/Patient", headers=[("Authorization", f"Bearer {good}"), ("Authorization", "Bearer x")])
    _assert_401(r)


def test_failures_are_audited_with_who_when_the_signature_verified(secured, idp):
    now = int(time.time())
    _assert_401(secured.get("/fhir/Patient"), error=False)
    _assert_401(secured.get("/fhir/Patient", headers=_bearer("garbage")))
    expired = idp.token(sub="bob", azp="app-7", aud=AUD, iat=now - 900, nbf=now - 900, exp=now - 600)
    _assert_401(secured.get("/fhir/Patient", headers=_bearer(expired)))
    auth = [r for r in secured.recorded if r.interaction == "authenticate"]
    assert [(r.who, r.client_id, r.status, r.resource, r.source_ip) for r in auth] == [
        ("unknown", None, 401, None, "testclient"),
        ("unknown", None, 401, None, "testclient"),
        ("bob", "app-7", 401, None, "testclient"),
    ]


def test_keycloak_tokens_work_with_their_mapped_scopes(secured, idp):
    writer = idp.token(sub="f:1:dr-who", aud=[AUD, "account"], azp="ehr", scope="openid user/Patient.cruds")
    ids = []
    for family in ("Pond", "Song"):
        r = secured.post("/fhir/Patient", json={"resourceType": "Patient", "name": [{"family": family}]},
                         headers={**FHIR, **_bearer(writer)})
        assert r.status_code == 201, r.text
        ids.append(r.json()["id"])
    assert secured.get(f"/fhir/Patient/{ids[0]}", headers=_bearer(writer)).status_code == 200
    # A patient-context token (SMART launch/patient through Keycloak's "patient" claim).
    amy = idp.token(sub="f:1:amy", aud=AUD, azp="portal", scope="launch/patient patient/Patient.rs", patient=ids[0])
    assert secured.get(f"/fhir/Patient/{ids[0]}", headers=_bearer(amy)).json()["name"][0]["family"] == "Pond"
    assert secured.get(f"/fhir/Patient/{ids[1]}", headers=_bearer(amy)).status_code == 404
    r = secured.get("/fhir/Patient", headers=_bearer(amy))
    assert [e["resource"]["id"] for e in r.json().get("entry", [])] == [ids[0]]
    # No write scope: the write is refused (as not found, so nothing leaks).
    r = secured.post("/fhir/Patient", json={"resourceType": "Patient"}, headers={**FHIR, **_bearer(amy)})
    assert r.status_code in (403, 404), r.text


def test_entra_tokens_work_with_scp(secured, idp):
    writer = idp.token(sub="f:1:dr-who", aud=AUD, scope="user/Patient.cruds")
    r = secured.post("/fhir/Patient", json={"resourceType": "Patient"}, headers={**FHIR, **_bearer(writer)})
    pid = r.json()["id"]
    reader = idp.token(iss=ENTRA_ISS, aud="api://medcloud", oid="5f3c-aa", sub="pairwise", azp="b7e1",
                       scp="user/Patient.rs", tid="72f988bf-86f1-41af-91ab-2d7cd011db47", ver="2.0")
    assert secured.get(f"/fhir/Patient/{pid}", headers=_bearer(reader)).status_code == 200
    r = secured.post("/fhir/Patient", json={"resourceType": "Patient"}, headers={**FHIR, **_bearer(reader)})
    assert r.status_code in (403, 404), r.text
    lists = idp.token(iss=ENTRA_ISS, aud="api://medcloud", oid="5f3c-aa", scp=["user/Patient.rs"])
    assert secured.get("/fhir/Patient", headers=_bearer(lists)).status_code == 200


def test_dicomweb_accepts_a_valid_token(secured, idp):
    token = idp.token(sub="pacs", aud=AUD, scope="system/*.rs")
    r = secured.get("/dicomweb/studies", headers=_bearer(token))
    assert r.status_code in (200, 204), r.text


def test_own_tokens_reach_the_oauth_verifier(secured, idp):
    """A token claiming medcloud's own issuer is never checked against an external key set."""
    s = secured.app.state.services.settings
    token = idp.token(iss=s.auth_issuer, aud=s.fhir_audience, sub="admin", scope="system/*.cruds")
    _assert_401(secured.get("/fhir/Patient", headers=_bearer(token)), secret=token)


# -- medcloud serve ----------------------------------------------------------------------------

@pytest.fixture
def fake_uvicorn(monkeypatch) -> list[dict[str, Any]]:
    import uvicorn

    calls: list[dict[str, Any]] = []
    monkeypatch.setattr(uvicorn, "run", lambda *a, **kw: calls.append(kw))
    return calls


def _serve(*args: str) -> Any:
    return CliRunner().invoke(cli, ["serve", *args])


@pytest.mark.parametrize("host", ["0.0.0.0", "::", "10.1.2.3", "fhir.example.org"])
def test_no_auth_is_refused_off_loopback(tmp_path, fake_uvicorn, host):
    r = _serve("--no-auth", "--host", host, "--data-dir", str(tmp_path))
    assert r.exit_code == 2 and "--no-auth" in r.output and "loopback" in r.output, r.output
    assert fake_uvicorn == []


def test_no_auth_on_loopback_starts_with_a_warning(backend, tmp_path, fake_uvicorn, caplog):
    caplog.set_level(logging.WARNING, logger="medcloud.security")
    r = _serve("--no-auth", "--host", "127.0.0.1", "--data-dir", str(tmp_path), "--db", backend)
    assert r.exit_code == 0, r.output
    assert len(fake_uvicorn) == 1 and fake_uvicorn[0]["ssl_certfile"] is None
    assert any("authentication is OFF" in m for m in caplog.messages)


def test_serve_with_auth_prints_where_the_admin_credentials_are(backend, tmp_path, fake_uvicorn):
    r = _serve("--host", "127.0.0.1", "--data-dir", str(tmp_path), "--db", backend)
    assert r.exit_code == 0, r.output
    assert "authentication: on" in r.output
    if optional("medcloud.security.oauth", "ensure_admin_client") is None:
        assert "no authorization server in this build" in r.output
        return
    assert "admin-credentials.json" in r.output
    assert (tmp_path / "admin-credentials.json").stat().st_mode & 0o777 == 0o600


def test_tls_flags_are_checked(tmp_path, fake_uvicorn):
    cert, key = _self_signed(tmp_path)
    for args, message in (
        (["--tls-cert", str(cert)], "both"),
        (["--tls-key", str(key)], "both"),
        (["--tls-cert", str(tmp_path / "nope.pem"), "--tls-key", str(key)], "nope.pem"),
        (["--tls-cert", str(key), "--tls-key", str(cert)], "cannot load"),
    ):
        r = _serve("--data-dir", str(tmp_path), *args)
        assert r.exit_code == 2 and message in r.output, (args, r.output)
    assert fake_uvicorn == []


def _self_signed(folder: Path) -> tuple[Path, Path]:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = dt.datetime.now(dt.UTC)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5)).not_valid_after(now + dt.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([x509.DNSName("localhost"),
                                                        x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
                           critical=False)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(key, hashes.SHA256()))
    cert_path, key_path = folder / "cert.pem", folder / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    key_path.chmod(0o600)
    return cert_path, key_path


@pytest.mark.integration
def test_serve_over_tls(tmp_path):
    """``medcloud serve --tls-cert --tls-key`` in a subprocess answers https, auth on by default."""
    cert, key = _self_signed(tmp_path)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    exe = Path(sys.executable).parent / "medcloud"
    log = open(tmp_path / "serve.log", "wb")  # noqa: SIM115 - closed below
    proc = subprocess.Popen([str(exe), "serve", "--data-dir", str(tmp_path / "data"), "--host", "127.0.0.1",
                             "--port", str(port), "--tls-cert", str(cert), "--tls-key", str(key)],
                            stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    trust = ssl.create_default_context(cafile=str(cert))
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                r = httpx.get(f"https://127.0.0.1:{port}/healthz", verify=trust, timeout=2)
                break
            except httpx.TransportError:
                assert proc.poll() is None, (tmp_path / "serve.log").read_text()
                assert time.monotonic() < deadline, "server did not start"
                time.sleep(0.2)
        assert r.status_code == 200 and r.json() == {"status": "ok"}
        r = httpx.get(f"https://127.0.0.1:{port}/fhir/Patient", verify=trust, timeout=5)
        assert r.status_code == 401 and r.headers["www-authenticate"] == 'Bearer realm="medcloud"'
        # An 8 KB header through a real HTTP stack (h11): refused with the OperationOutcome, no 500.
        r = httpx.get(f"https://127.0.0.1:{port}/fhir/Patient", verify=trust, timeout=5,
                      headers={"Authorization": "Bearer " + "A" * 8192})
        _assert_401(r)
        with pytest.raises(httpx.TransportError):  # plain http on the TLS port is not served
            httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=2)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)
        log.close()


def test_medcloud_tokens_end_to_end(secured, settings):
    """Tokens of the built-in authorization server (security/oauth) pass the edge with their scopes."""
    store = pytest.importorskip("medcloud.security.oauth.store")
    tokens = pytest.importorskip("medcloud.security.oauth.tokens")
    svc = secured.app.state.services
    client, _ = store.create_client(svc.db, name="e2e", auth_method="client_secret_basic",
                                    scopes="system/*.cruds", grant_types=["client_credentials"])
    token, _ = tokens.issue_access_token(svc.db, svc.settings, subject=client.client_id,
                                         client_id=client.client_id, scope="system/Patient.rs")
    assert secured.get("/fhir/Patient", headers=_bearer(token)).status_code == 200
    r = secured.post("/fhir/Patient", json={"resourceType": "Patient"}, headers={**FHIR, **_bearer(token)})
    assert r.status_code in (403, 404), r.text
    # The same server key, but issued for another public URL: another issuer and audience.
    elsewhere = svc.settings.with_overrides(public_url="https://elsewhere.example")
    other, _ = tokens.issue_access_token(svc.db, elsewhere, subject=client.client_id,
                                         client_id=client.client_id, scope="system/Patient.rs")
    _assert_401(secured.get("/fhir/Patient", headers=_bearer(other)), secret=other)
    # A revoked client's tokens are refused once they are not in the 30 s cache (a fresh app here).
    store.revoke_client(svc.db, client.client_id)
    tokens._CLIENTS.clear()
    fresh = build_services(svc.settings)
    try:
        with TestClient(create_app(svc.settings, fresh)) as c:
            r = c.get("/fhir/Patient", headers=_bearer(token))
            _assert_401(r, secret=token)
            assert "revoked" in r.headers["www-authenticate"]
    finally:
        fresh.close()


@pytest.mark.integration
def test_load_and_export_send_the_token(settings, idp, tmp_path):
    """``medcloud load/export --server`` against a server with auth on: --token (or MEDCLOUD_TOKEN) is sent."""
    import threading

    import uvicorn

    s = settings.with_overrides(auth=True, oidc_issuers=[OidcIssuer(issuer=idp.issuer, audience=AUD)])
    svc = build_services(s)
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(create_app(s, svc), host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    try:
        while not server.started:
            time.sleep(0.05)
        base = f"http://127.0.0.1:{port}/fhir"
        bundle = tmp_path / "in" / "b.json"
        bundle.parent.mkdir()
        bundle.write_text('{"resourceType": "Bundle", "type": "transaction", "entry": [{"resource": '
                          '{"resourceType": "Patient", "id": "p1"}, "request": {"method": "PUT", "url": "Patient/p1"}}]}')
        runner = CliRunner()
        r = runner.invoke(cli, ["load", str(bundle), "--server", base])
        assert r.exit_code == 1, r.output
        token = idp.token(sub="loader", aud=AUD, scope="system/*.cruds")
        r = runner.invoke(cli, ["load", str(bundle), "--server", base], env={"MEDCLOUD_TOKEN": token})
        assert r.exit_code == 0, r.output
        r = runner.invoke(cli, ["export", "--out", str(tmp_path / "out"), "--type", "Patient", "--server", base,
                                "--token", token])
        assert r.exit_code == 0, r.output
        assert '"id":"p1"' in (tmp_path / "out").joinpath(next(iter(os.listdir(tmp_path / "out")))).read_text()
    finally:
        server.should_exit = True
        thread.join(timeout=10)
        svc.close()
