"""Authorization code + PKCE through the login + consent page (form posts via the TestClient)."""

from __future__ import annotations

import pytest
from _oauth_helpers import (
    REDIRECT,
    VERIFIER,
    assert_oauth_error,
    authorize_params,
    exchange,
    hidden_fields,
    login,
    put_patient,
    redirect_query,
)

from medcloud.security.oauth import store
from medcloud.security.oauth.grants import s256
from medcloud.security.oauth.tokens import verify_access_token

APP_SCOPES = "patient/*.rs user/*.rs launch/patient fhirUser offline_access online_access"


@pytest.fixture
def app_client(make_client):
    return make_client(APP_SCOPES, auth_method="none", grant_types=("authorization_code", "refresh_token"),
                       redirect_uris=(REDIRECT,), name="Growth <Chart> app")


@pytest.fixture
def doctor(oauth_services):
    return store.create_user(oauth_services.db, "dr-who", "correct horse battery", fhir_user="Practitioner/7")


@pytest.fixture
def patient_user(oauth_services):
    put_patient(oauth_services, "pat-1")
    return store.create_user(oauth_services.db, "alice", "alice's password", patient="pat-1")


def _verify(services, token):
    s = services.settings
    return verify_access_token(services.db, token, issuer=s.auth_issuer, audience=s.fhir_audience)


def test_page_lists_scopes_escapes_names_and_is_protected(web, app_client, doctor):
    page = web.get("/auth/authorize", params=authorize_params(app_client.client_id, "user/Patient.rs fhirUser"))
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert "Growth &lt;Chart&gt; app" in page.text and "<Chart>" not in page.text
    assert "user/Patient.rs" in page.text and "<script" not in page.text
    assert page.headers["x-frame-options"] == "DENY" and page.headers["cache-control"] == "no-store"
    assert "medcloud_oauth_csrf" in page.headers["set-cookie"] and "HttpOnly" in page.headers["set-cookie"]
    assert hidden_fields(page.text)["csrf"]


def test_user_flow_end_to_end(web, oauth_services, app_client, doctor):
    resp = login(web, authorize_params(app_client.client_id, "user/*.rs fhirUser offline_access"),
                 "dr-who", "correct horse battery")
    q = redirect_query(resp)
    assert q["state"] == "st-123" and "error" not in q
    r = exchange(web, app_client.client_id, q["code"])
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["scope"] == "user/*.rs fhirUser offline_access" and body["refresh_token"]
    assert "patient" not in body
    claims = _verify(oauth_services, body["access_token"])
    assert claims["sub"] == "dr-who" and claims["fhirUser"] == "Practitioner/7"
    assert web.get("/fhir/Patient", headers={"Authorization": f"Bearer {body['access_token']}"}).status_code == 200
    # the code is single use
    assert_oauth_error(exchange(web, app_client.client_id, q["code"]), 400, "invalid_grant")


def test_launch_patient_chosen_on_the_consent_page(web, oauth_services, app_client, doctor):
    put_patient(oauth_services, "p-42")
    params = authorize_params(app_client.client_id, "launch/patient patient/Observation.rs")
    page = login(web, params, "dr-who", "correct horse battery", patient="nobody-here")
    assert page.status_code == 400 and "no Patient with id" in page.text
    page = login(web, params, "dr-who", "correct horse battery", patient="")
    assert page.status_code == 400 and "enter the id" in page.text
    q = redirect_query(login(web, params, "dr-who", "correct horse battery", patient="p-42"))
    body = exchange(web, app_client.client_id, q["code"]).json()
    assert body["patient"] == "p-42" and "refresh_token" not in body
    assert _verify(oauth_services, body["access_token"])["patient"] == "p-42"


def test_patient_account_gets_its_own_patient_and_no_user_scopes(web, oauth_services, app_client, patient_user):
    params = authorize_params(app_client.client_id, "launch/patient patient/*.rs user/*.rs")
    page = login(web, params, "alice", "alice's password", patient="someone-else")
    assert page.status_code == 400 and "linked" in page.text
    q = redirect_query(login(web, params, "alice", "alice's password"))
    body = exchange(web, app_client.client_id, q["code"]).json()
    assert body["patient"] == "pat-1" and body["scope"] == "launch/patient patient/*.rs"


def test_wrong_password_redisplays_the_page(web, app_client, doctor):
    params = authorize_params(app_client.client_id, "user/*.rs")
    page = login(web, params, "dr-who", "wrong")
    assert page.status_code == 401 and "wrong user name or password" in page.text
    page = login(web, params, "nobody", "wrong")
    assert page.status_code == 401


def test_deny_redirects_with_access_denied_and_state(web, app_client, doctor):
    q = redirect_query(login(web, authorize_params(app_client.client_id, "user/*.rs"), "", "", decision="deny"))
    assert q == {"error": "access_denied", "error_description": "the user denied access", "state": "st-123"}


def test_csrf_token_and_cookie_are_required(web, app_client, doctor):
    params = authorize_params(app_client.client_id, "user/*.rs")
    page = web.get("/auth/authorize", params=params)
    form = {**hidden_fields(page.text), "username": "dr-who", "password": "correct horse battery",
            "decision": "approve"}
    forged = {**form, "csrf": "0" * 64}
    assert web.post("/auth/authorize", data=forged).status_code == 403
    tampered = {**form, "scope": "user/Patient.rs"}  # the token is bound to the request it was shown for
    assert web.post("/auth/authorize", data=tampered).status_code == 403
    web.cookies.clear()
    assert web.post("/auth/authorize", data=form).status_code == 403


def test_redirect_uri_must_match_exactly_and_is_never_used_when_wrong(web, app_client):
    for uri in (REDIRECT + "/", REDIRECT + "?x=1", "https://evil.example/callback", ""):
        r = web.get("/auth/authorize", params=authorize_params(app_client.client_id, "user/*.rs", redirect_uri=uri))
        assert r.status_code == 400 and "location" not in r.headers, uri
    r = web.get("/auth/authorize", params=authorize_params("no-such-client", "user/*.rs"))
    assert r.status_code == 400 and "location" not in r.headers


@pytest.mark.parametrize(("override", "error"), [
    ({"code_challenge_method": "plain", "code_challenge": VERIFIER}, "invalid_request"),
    ({"code_challenge_method": ""}, "invalid_request"),
    ({"code_challenge": ""}, "invalid_request"),
    ({"code_challenge": "short"}, "invalid_request"),
    ({"response_type": "token"}, "unsupported_response_type"),
    ({"scope": "system/*.rs"}, "invalid_scope"),
    ({"scope": "user/Bogus.rs"}, "invalid_scope"),
    ({"aud": "https://other.example/fhir"}, "invalid_request"),
])
def test_bad_authorization_requests_redirect_with_an_error(web, app_client, override, error):
    params = {**authorize_params(app_client.client_id, "user/*.rs"), **override}
    r = web.get("/auth/authorize", params={k: v for k, v in params.items() if v != ""})
    q = redirect_query(r)
    assert q["error"] == error and q["state"] == "st-123"


def test_pkce_failures(web, app_client, doctor):
    params = authorize_params(app_client.client_id, "user/*.rs")
    code = redirect_query(login(web, params, "dr-who", "correct horse battery"))["code"]
    assert_oauth_error(exchange(web, app_client.client_id, code, verifier=None), 400, "invalid_request")
    # the failed attempt above did not consume the code (it never reached the check); a wrong one does
    assert_oauth_error(exchange(web, app_client.client_id, code, verifier="w" * 43), 400, "invalid_grant")
    assert_oauth_error(exchange(web, app_client.client_id, code), 400, "invalid_grant")  # consumed
    code = redirect_query(login(web, params, "dr-who", "correct horse battery"))["code"]
    assert_oauth_error(exchange(web, app_client.client_id, code, verifier="bad verifier"), 400, "invalid_grant")
    code = redirect_query(login(web, params, "dr-who", "correct horse battery"))["code"]
    assert_oauth_error(exchange(web, app_client.client_id, code, redirect_uri=REDIRECT + "x"), 400, "invalid_grant")


def test_code_is_bound_to_its_client(web, make_client, app_client, doctor):
    other = make_client("user/*.rs", auth_method="none", grant_types=("authorization_code",),
                        redirect_uris=(REDIRECT,))
    code = redirect_query(login(web, authorize_params(app_client.client_id, "user/*.rs"), "dr-who",
                                "correct horse battery"))["code"]
    assert_oauth_error(exchange(web, other.client_id, code), 400, "invalid_grant")


def test_confidential_app_authenticates_at_the_token_endpoint(web, make_client, doctor):
    app = make_client("user/*.rs", grant_types=("authorization_code",), redirect_uris=(REDIRECT,))
    code = redirect_query(login(web, authorize_params(app.client_id, "user/*.rs"), "dr-who",
                                "correct horse battery"))["code"]
    # without its secret: refused
    assert_oauth_error(exchange(web, app.client_id, code), 401, "invalid_client")
    code = redirect_query(login(web, authorize_params(app.client_id, "user/*.rs"), "dr-who",
                                "correct horse battery"))["code"]
    r = web.post("/auth/token", headers=app.basic, data={"grant_type": "authorization_code", "code": code,
                                                         "redirect_uri": REDIRECT, "code_verifier": VERIFIER})
    assert r.status_code == 200, r.text


def test_s256_matches_rfc7636_appendix_b():
    assert s256("dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk") == "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM"


@pytest.mark.parametrize("query", ["", "client_id=a&client_id=b", "&".join(f"f{i}=1" for i in range(300)),
                                   "client_id=%ff%fe&redirect_uri=%00"])
def test_malformed_authorize_requests_get_an_error_page(web, query):
    r = web.get(f"/auth/authorize?{query}")
    assert r.status_code == 400 and r.headers["content-type"].startswith("text/html"), r.text
    assert "location" not in r.headers


@pytest.mark.parametrize(("body", "ctype"), [(b"{}", "application/json"), (b"\xff=\xfe", "application/x-www-form-urlencoded"),
                                             (b"a=1&a=2", "application/x-www-form-urlencoded"),
                                             (b"decision=approve", "application/x-www-form-urlencoded")])
def test_malformed_authorize_posts_are_4xx(web, body, ctype):
    r = web.post("/auth/authorize", content=body, headers={"Content-Type": ctype})
    assert 400 <= r.status_code < 500 and "location" not in r.headers, r.text
