"""SMART Backend Services: private_key_jwt with RS384 and ES384, exp, aud, jti replay, JWK Set URL."""

from __future__ import annotations

import http.server
import threading
import time
from collections.abc import Iterator
from typing import Any

import jwt
import orjson
import pytest
from _oauth_helpers import assert_oauth_error, assertion_form, new_key, token_url

from medcloud.security.oauth import assertions


def _post(web, form):
    return web.post("/auth/token", data=form)


@pytest.mark.parametrize("alg", ["RS384", "ES384"])
def test_signed_assertion_gets_a_token(web, oauth_settings, make_client, alg):
    key = new_key(alg)
    c = make_client("system/*.rs", auth_method="private_key_jwt", jwks=key.jwks())
    r = _post(web, assertion_form(key.assertion(c.client_id, token_url(oauth_settings)), "system/Patient.rs"))
    assert r.status_code == 200, r.text
    assert r.json()["scope"] == "system/Patient.rs"
    assert web.get("/fhir/Patient", headers={"Authorization": f"Bearer {r.json()['access_token']}"}).status_code == 200


def test_exp_more_than_five_minutes_ahead_is_refused(web, oauth_settings, make_client):
    key = new_key("ES384")
    c = make_client(auth_method="private_key_jwt", jwks=key.jwks())
    r = _post(web, assertion_form(key.assertion(c.client_id, token_url(oauth_settings), lifetime=600)))
    assert "300 s" in assert_oauth_error(r, 401, "invalid_client")["error_description"]
    ok = _post(web, assertion_form(key.assertion(c.client_id, token_url(oauth_settings), lifetime=300)))
    assert ok.status_code == 200, ok.text


def test_expired_assertion_is_refused(web, oauth_settings, make_client):
    key = new_key("ES384")
    c = make_client(auth_method="private_key_jwt", jwks=key.jwks())
    assert_oauth_error(_post(web, assertion_form(key.assertion(c.client_id, token_url(oauth_settings),
                                                               lifetime=-120))), 401, "invalid_client")


def test_replayed_jti_is_refused(web, oauth_settings, make_client):
    key = new_key("RS384")
    c = make_client(auth_method="private_key_jwt", jwks=key.jwks())
    assertion = key.assertion(c.client_id, token_url(oauth_settings), jti="once-only")
    assert _post(web, assertion_form(assertion)).status_code == 200
    body = assert_oauth_error(_post(web, assertion_form(assertion)), 401, "invalid_client")
    assert "jti" in body["error_description"]
    # a different assertion with the same jti is a replay too
    again = key.assertion(c.client_id, token_url(oauth_settings), jti="once-only", lifetime=200)
    assert_oauth_error(_post(web, assertion_form(again)), 401, "invalid_client")


@pytest.mark.parametrize("aud", ["https://elsewhere.example/token", "http://testserver/auth/token", ""])
def test_wrong_aud_is_refused(web, make_client, aud):
    key = new_key("ES384")
    c = make_client(auth_method="private_key_jwt", jwks=key.jwks())
    assert_oauth_error(_post(web, assertion_form(key.assertion(c.client_id, aud))), 401, "invalid_client")


def test_iss_sub_and_signature_must_fit(web, oauth_settings, make_client):
    key, other = new_key("ES384"), new_key("ES384")
    c = make_client(auth_method="private_key_jwt", jwks=key.jwks())
    url = token_url(oauth_settings)
    assert_oauth_error(_post(web, assertion_form(key.assertion(c.client_id, url, sub="someone-else"))),
                       401, "invalid_client")
    forged = other.assertion(c.client_id, url)  # signed by a key the client never registered
    assert_oauth_error(_post(web, assertion_form(forged)), 401, "invalid_client")
    other.kid = key.kid  # same kid, wrong key
    assert_oauth_error(_post(web, assertion_form(other.assertion(c.client_id, url))), 401, "invalid_client")


@pytest.mark.parametrize("alg", ["RS256", "HS256", "none"])
def test_other_algorithms_are_refused(web, oauth_settings, make_client, alg):
    key = new_key("RS384")
    c = make_client(auth_method="private_key_jwt", jwks=key.jwks())
    now = int(time.time())
    claims = {"iss": c.client_id, "sub": c.client_id, "aud": token_url(oauth_settings), "exp": now + 60,
              "jti": f"j-{alg}"}
    if alg == "RS256":
        assertion = jwt.encode(claims, key.private, algorithm="RS256", headers={"kid": key.kid})
    elif alg == "HS256":
        assertion = jwt.encode(claims, "x" * 64, algorithm="HS256", headers={"kid": key.kid})
    else:
        assertion = jwt.encode(claims, None, algorithm="none")
    assert_oauth_error(_post(web, assertion_form(assertion)), 401, "invalid_client")


def test_secret_client_cannot_use_an_assertion(web, oauth_settings, make_client):
    key = new_key("ES384")
    c = make_client()  # client_secret_basic
    assert_oauth_error(_post(web, assertion_form(key.assertion(c.client_id, token_url(oauth_settings)))),
                       401, "invalid_client")


def test_revoked_asymmetric_client_is_refused(web, oauth_services, oauth_settings, make_client):
    from medcloud.security.oauth import store

    key = new_key("ES384")
    c = make_client(auth_method="private_key_jwt", jwks=key.jwks())
    store.revoke_client(oauth_services.db, c.client_id)
    assert_oauth_error(_post(web, assertion_form(key.assertion(c.client_id, token_url(oauth_settings)))),
                       401, "invalid_client")


@pytest.fixture
def jwks_server() -> Iterator[tuple[str, dict[str, Any]]]:
    """A real HTTP server on loopback serving a mutable JWK Set (and counting fetches)."""
    state: dict[str, Any] = {"jwks": {"keys": []}, "fetches": 0}

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802
            state["fetches"] += 1
            body = orjson.dumps(state["jwks"])
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: Any) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/jwks.json", state
    server.shutdown()
    server.server_close()


def test_keys_from_a_jwks_url_and_key_rotation(web, oauth_settings, make_client, jwks_server):
    url, state = jwks_server
    first, second = new_key("RS384"), new_key("ES384")
    state["jwks"] = first.jwks()
    c = make_client(auth_method="private_key_jwt", jwks_uri=url)
    r = _post(web, assertion_form(first.assertion(c.client_id, token_url(oauth_settings))))
    assert r.status_code == 200, r.text
    assert state["fetches"] == 1
    assert _post(web, assertion_form(first.assertion(c.client_id, token_url(oauth_settings)))).status_code == 200
    assert state["fetches"] == 1  # cached
    # The client rotates its keys. An unknown kid refetches early, but at most once per 30 s,
    # so right after the first fetch the new key is not known yet ...
    state["jwks"] = {"keys": first.jwks()["keys"] + second.jwks()["keys"]}
    assert_oauth_error(_post(web, assertion_form(second.assertion(c.client_id, token_url(oauth_settings)))),
                       401, "invalid_client")
    # ... and once the cache is gone (expired, or another replica), the new key works.
    assertions._REMOTE.clear()
    r = _post(web, assertion_form(second.assertion(c.client_id, token_url(oauth_settings))))
    assert r.status_code == 200, r.text
    assert state["fetches"] == 2


def test_registering_a_private_key_jwt_client_checks_its_keys(oauth_services):
    from medcloud.errors import Invalid
    from medcloud.security.oauth import store

    db = oauth_services.db
    with pytest.raises(Invalid):
        store.create_client(db, name="x", auth_method="private_key_jwt", scopes="system/*.rs",
                            grant_types=["client_credentials"])
    with pytest.raises(Invalid):
        store.create_client(db, name="x", auth_method="private_key_jwt", scopes="system/*.rs",
                            grant_types=["client_credentials"], jwks={"keys": [{"kty": "RSA", "n": "%%%"}]})
    with pytest.raises(Invalid):
        store.create_client(db, name="x", auth_method="private_key_jwt", scopes="system/*.rs",
                            grant_types=["client_credentials"], jwks_uri="http://keys.example.org/jwks")
