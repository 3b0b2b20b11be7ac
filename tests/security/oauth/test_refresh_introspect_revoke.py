"""Refresh token rotation and reuse detection; introspection (RFC 7662) and revocation (RFC 7009)."""

from __future__ import annotations

import pytest
from _oauth_helpers import (
    REDIRECT,
    assert_oauth_error,
    authorize_params,
    client_credentials,
    exchange,
    login,
    redirect_query,
)

from medcloud.errors import Unauthorized
from medcloud.security.oauth import store
from medcloud.security.oauth.tokens import verify_access_token


@pytest.fixture
def app_client(make_client):
    return make_client("user/*.rs offline_access online_access", auth_method="none",
                       grant_types=("authorization_code", "refresh_token"), redirect_uris=(REDIRECT,))


@pytest.fixture
def user(oauth_services):
    return store.create_user(oauth_services.db, "nurse", "a long password")


def _tokens(web, app_client, scope="user/*.rs offline_access"):
    code = redirect_query(login(web, authorize_params(app_client.client_id, scope), "nurse", "a long password"))["code"]
    r = exchange(web, app_client.client_id, code)
    assert r.status_code == 200, r.text
    return r.json()


def _refresh(web, client_id, refresh_token, **extra):
    return web.post("/auth/token", data={"grant_type": "refresh_token", "refresh_token": refresh_token,
                                         "client_id": client_id, **extra})


def _verify(services, token):
    s = services.settings
    return verify_access_token(services.db, token, issuer=s.auth_issuer, audience=s.fhir_audience)


def test_refresh_rotates_and_reuse_revokes_the_family(web, app_client, user):
    first = _tokens(web, app_client)
    r = _refresh(web, app_client.client_id, first["refresh_token"])
    assert r.status_code == 200, r.text
    second = r.json()
    assert second["refresh_token"] != first["refresh_token"] and second["scope"] == "user/*.rs offline_access"
    # the old refresh token is spent ...
    assert_oauth_error(_refresh(web, app_client.client_id, first["refresh_token"]), 400, "invalid_grant")
    # ... and presenting it again revoked the whole family, the fresh one included
    assert_oauth_error(_refresh(web, app_client.client_id, second["refresh_token"]), 400, "invalid_grant")


def test_refresh_can_narrow_but_not_widen(web, app_client, user):
    first = _tokens(web, app_client, "user/*.rs online_access")
    assert_oauth_error(_refresh(web, app_client.client_id, first["refresh_token"], scope="user/*.cruds"),
                       400, "invalid_scope")
    # the refused request left the token usable
    r = _refresh(web, app_client.client_id, first["refresh_token"], scope="user/Patient.rs online_access")
    assert r.status_code == 200, r.text
    assert r.json()["scope"] == "user/Patient.rs online_access"


def test_no_refresh_token_without_offline_or_online_access(web, app_client, user):
    assert "refresh_token" not in _tokens(web, app_client, "user/*.rs")


def test_refresh_token_is_bound_to_its_client(web, make_client, app_client, user):
    other = make_client("user/*.rs offline_access", auth_method="none",
                        grant_types=("authorization_code", "refresh_token"), redirect_uris=(REDIRECT,))
    first = _tokens(web, app_client)
    assert_oauth_error(_refresh(web, other.client_id, first["refresh_token"]), 400, "invalid_grant")
    assert _refresh(web, app_client.client_id, first["refresh_token"]).status_code == 200
    assert_oauth_error(_refresh(web, app_client.client_id, "made-up"), 400, "invalid_grant")
    assert_oauth_error(web.post("/auth/token", data={"grant_type": "refresh_token", "client_id": app_client.client_id}),
                       400, "invalid_request")


def test_revoked_client_cannot_refresh(web, oauth_services, app_client, user):
    first = _tokens(web, app_client)
    store.revoke_client(oauth_services.db, app_client.client_id)
    assert_oauth_error(_refresh(web, app_client.client_id, first["refresh_token"]), 401, "invalid_client")


def test_introspection_of_access_and_refresh_tokens(web, oauth_services, make_client, app_client, user):
    resource_server = make_client("system/*.rs medcloud/admin")
    bystander = make_client("system/*.rs")
    got = _tokens(web, app_client)
    r = web.post("/auth/introspect", data={"token": got["access_token"]}, headers=resource_server.basic)
    assert r.status_code == 200, r.text
    info = r.json()
    assert info["active"] is True and info["sub"] == "nurse" and info["client_id"] == app_client.client_id
    assert info["scope"] == "user/*.rs offline_access" and info["token_type"] == "Bearer"
    refresh = web.post("/auth/introspect", data={"token": got["refresh_token"]}, headers=resource_server.basic).json()
    assert refresh["active"] is True and refresh["token_type"] == "refresh_token"
    # another (non-admin) client learns nothing about it
    assert web.post("/auth/introspect", data={"token": got["access_token"]},
                    headers=bystander.basic).json() == {"active": False}
    assert web.post("/auth/introspect", data={"token": "garbage"}, headers=resource_server.basic).json() == \
        {"active": False}
    # introspection needs an authenticated confidential client
    assert_oauth_error(web.post("/auth/introspect", data={"token": got["access_token"]}), 401, "invalid_client")
    assert_oauth_error(web.post("/auth/introspect", data={"token": got["access_token"],
                                                          "client_id": app_client.client_id}), 401, "invalid_client")
    assert_oauth_error(web.post("/auth/introspect", data={}, headers=resource_server.basic), 400, "invalid_request")


def test_revoking_an_access_token(web, oauth_services, make_client):
    c = make_client("system/*.rs")
    other = make_client("system/*.rs")
    token = client_credentials(web, c).json()["access_token"]
    # someone else's revocation request is answered 200 and ignored (RFC 7009 §2.2)
    assert web.post("/auth/revoke", data={"token": token}, headers=other.basic).status_code == 200
    assert _verify(oauth_services, token)
    r = web.post("/auth/revoke", data={"token": token, "token_type_hint": "access_token"}, headers=c.basic)
    assert r.status_code == 200, r.text
    with pytest.raises(Unauthorized, match="revoked"):
        _verify(oauth_services, token)
    assert web.post("/auth/introspect", data={"token": token}, headers=c.basic).json() == {"active": False}
    assert web.get("/fhir/Patient", headers={"Authorization": f"Bearer {token}"}).status_code == 401
    # unknown tokens: 200 too
    assert web.post("/auth/revoke", data={"token": "nope"}, headers=c.basic).status_code == 200


def test_revoking_a_refresh_token_revokes_its_family(web, oauth_services, app_client, user):
    got = _tokens(web, app_client)
    r = web.post("/auth/revoke", data={"token": got["refresh_token"], "client_id": app_client.client_id})
    assert r.status_code == 200, r.text
    assert_oauth_error(_refresh(web, app_client.client_id, got["refresh_token"]), 400, "invalid_grant")


def test_bad_requests_to_introspect_and_revoke_are_4xx(web, make_client):
    c = make_client()
    for path in ("/auth/introspect", "/auth/revoke"):
        assert_oauth_error(web.post(path, content=b"{}", headers={"Content-Type": "application/json", **c.basic}),
                           400, "invalid_request")
        assert_oauth_error(web.post(path, data={"token": "a", "client_id": "x", "client_secret": "y"}),
                           401, "invalid_client")
