"""smart-configuration, /auth/jwks, server key rotation, and verify_access_token's refusals."""

from __future__ import annotations

import time

import jwt
import pytest
from _oauth_helpers import client_credentials
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from medcloud.errors import Unauthorized
from medcloud.fhir.exchange import Principal
from medcloud.security.oauth import signing
from medcloud.security.oauth.tokens import issue_access_token, verify_access_token
from medcloud.security.scopes import ContextScope, is_admin, parse_scopes
from medcloud.storage.sql.database import Database


@pytest.mark.parametrize("path", ["/.well-known/smart-configuration", "/fhir/.well-known/smart-configuration"])
def test_smart_configuration(web, oauth_settings, path):
    r = web.get(path)
    assert r.status_code == 200 and r.headers["content-type"].startswith("application/json"), r.text
    doc = r.json()
    issuer = oauth_settings.auth_issuer
    assert doc["issuer"] == issuer and doc["token_endpoint"] == issuer + "/token"
    assert doc["jwks_uri"] == issuer + "/jwks" and doc["authorization_endpoint"] == issuer + "/authorize"
    assert doc["introspection_endpoint"] == issuer + "/introspect"
    assert doc["revocation_endpoint"] == issuer + "/revoke"
    assert doc["code_challenge_methods_supported"] == ["S256"]
    assert doc["token_endpoint_auth_signing_alg_values_supported"] == ["RS384", "ES384"]
    assert set(doc["grant_types_supported"]) == {"authorization_code", "client_credentials", "refresh_token"}
    assert {"private_key_jwt", "client_secret_basic"} <= set(doc["token_endpoint_auth_methods_supported"])
    assert {"launch-standalone", "client-confidential-asymmetric", "permission-v2"} <= set(doc["capabilities"])
    assert doc["response_types_supported"] == ["code"]


def test_jwks_and_signing_key_rotation(web, oauth_services, make_client):
    db, s = oauth_services.db, oauth_services.settings
    c = make_client()
    old = client_credentials(web, c).json()["access_token"]
    keys = web.get("/auth/jwks").json()["keys"]
    assert len(keys) == 1 and keys[0]["alg"] == "ES256" and "d" not in keys[0]
    old_kid = jwt.get_unverified_header(old)["kid"]
    assert keys[0]["kid"] == old_kid
    new = signing.rotate(db, access_token_ttl=s.access_token_ttl)
    fresh = client_credentials(web, c).json()["access_token"]
    assert jwt.get_unverified_header(fresh)["kid"] == new.kid != old_kid
    assert {k["kid"] for k in web.get("/auth/jwks").json()["keys"]} == {old_kid, new.kid}
    verify = lambda tok, now=None: verify_access_token(db, tok, issuer=s.auth_issuer,  # noqa: E731
                                                       audience=s.fhir_audience, now=now)
    assert verify(old)["client_id"] == c.client_id  # the retired key still verifies its tokens
    assert verify(fresh)
    # once every token the old key signed has expired, it verifies nothing
    later = time.time() + s.access_token_ttl + 200
    token_later, _ = issue_access_token(db, s, subject="x", client_id=c.client_id, scope="system/*.rs", now=later)
    with pytest.raises(Unauthorized):
        verify(old, later)
    assert verify(token_later, later)


def test_replicas_agree_on_the_first_key(oauth_settings):
    a, b = Database.connect(oauth_settings.db_url), Database.connect(oauth_settings.db_url)
    try:
        from medcloud.storage.migrate import upgrade

        upgrade(a)
        assert signing.current_key(a).kid == signing.current_key(b).kid
    finally:
        a.dispose()
        b.dispose()


def _claims(s, **over):
    now = int(time.time())
    claims = {"iss": s.auth_issuer, "sub": "c", "aud": s.fhir_audience, "exp": now + 60, "iat": now, "nbf": now,
              "jti": "j1", "scope": "system/*.rs", "client_id": "c"}
    claims.update(over)
    return {k: v for k, v in claims.items() if v is not None}


def test_verify_refuses_bad_tokens(oauth_services, make_client):
    db, s = oauth_services.db, oauth_services.settings
    c = make_client()
    key = signing.current_key(db)

    def sign(claims, k=key.private_key, alg="ES256", kid=key.kid):
        return jwt.encode(claims, k, algorithm=alg, headers={"kid": kid})

    def refused(token, match):
        with pytest.raises(Unauthorized, match=match):
            verify_access_token(db, token, issuer=s.auth_issuer, audience=s.fhir_audience)

    good = sign(_claims(s, sub=c.client_id, client_id=c.client_id))
    assert verify_access_token(db, good, issuer=s.auth_issuer, audience=s.fhir_audience)["sub"] == c.client_id
    now = int(time.time())
    refused(sign(_claims(s, client_id=c.client_id, exp=now - 120)), "expired")
    refused(sign(_claims(s, client_id=c.client_id, nbf=now + 120)), "not valid yet")
    refused(sign(_claims(s, client_id=c.client_id, aud="https://other.example/fhir")), "audience")
    refused(sign(_claims(s, client_id=c.client_id, iss="https://other.example/auth")), "issuer")
    refused(sign(_claims(s, client_id=c.client_id, jti=None)), "jti")
    refused(sign(_claims(s, client_id="never-registered")), "revoked")
    refused(jwt.encode(_claims(s, client_id=c.client_id), None, algorithm="none"), "algorithm")
    # HS256 "signed" with the public key (key confusion) never reaches a verifier
    public_pem = key.private_key.public_key().public_bytes(serialization.Encoding.PEM,
                                                           serialization.PublicFormat.SubjectPublicKeyInfo)
    import hashlib
    import hmac

    header = jwt.utils.base64url_encode(b'{"alg":"HS256","kid":"%s"}' % key.kid.encode())
    body = jwt.utils.base64url_encode(jwt.api_jws.json.dumps(_claims(s, client_id=c.client_id)).encode())
    mac = jwt.utils.base64url_encode(hmac.new(public_pem, header + b"." + body, hashlib.sha256).digest())
    refused((header + b"." + body + b"." + mac).decode(), "algorithm")
    stranger = ec.generate_private_key(ec.SECP256R1())
    refused(sign(_claims(s, client_id=c.client_id), k=stranger), "invalid access token")
    refused(sign(_claims(s, client_id=c.client_id), k=stranger, kid="unknown"), "not signed by a current key")
    for garbage in ("", "a.b.c", "x" * 10_000, "eyJhbGciOiJFUzI1NiJ9.e30.", good + "x"):
        with pytest.raises(Unauthorized):
            verify_access_token(db, garbage, issuer=s.auth_issuer, audience=s.fhir_audience)


def test_admin_scope_is_a_context_scope():
    assert parse_scopes("system/*.rs medcloud/admin").scopes[1] == ContextScope("medcloud/admin")
    assert not parse_scopes("medcloud/admin").resource_scopes
    assert is_admin(Principal(scopes=("medcloud/admin",)))
    assert not is_admin(Principal(scopes=("system/*.cruds",)))


def test_replicas_starting_together_create_one_key_and_one_admin(oauth_settings, tmp_path):
    import threading

    from medcloud.security.oauth import ensure_admin_client
    from medcloud.storage.migrate import upgrade

    dbs = [Database.connect(oauth_settings.db_url) for _ in range(4)]
    upgrade(dbs[0])
    barrier = threading.Barrier(len(dbs))
    kids: list[str] = []
    paths: list[object] = []

    def start(db: Database, n: int) -> None:
        barrier.wait()
        kids.append(signing.current_key(db).kid)
        paths.append(ensure_admin_client(oauth_settings.with_overrides(data_dir=tmp_path / f"r{n}"), db))

    threads = [threading.Thread(target=start, args=(db, n)) for n, db in enumerate(dbs)]
    try:
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
    finally:
        for db in dbs:
            db.dispose()
    assert len(kids) == 4 and len(set(kids)) == 1
    assert sum(p is not None for p in paths) == 1


def test_token_endpoint_cors_preflight(web):
    r = web.options("/auth/token", headers={"Origin": "https://app.example.org",
                                            "Access-Control-Request-Method": "POST"})
    assert r.status_code == 204 and r.headers["access-control-allow-origin"] == "*"
    assert "POST" in r.headers["access-control-allow-methods"]
