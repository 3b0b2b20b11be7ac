"""client_credentials with a client secret (basic and post), scopes, revoked clients, bad requests."""

from __future__ import annotations

import base64

import pytest
from _oauth_helpers import FORM, assert_oauth_error, client_credentials

from medcloud.errors import Unauthorized
from medcloud.security.oauth import store
from medcloud.security.oauth.tokens import verify_access_token


def _verify(services, token):
    s = services.settings
    return verify_access_token(services.db, token, issuer=s.auth_issuer, audience=s.fhir_audience)


def test_secret_basic_token_reads_fhir(web, oauth_services, make_client):
    c = make_client("system/*.rs")
    r = client_credentials(web, c)
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["token_type"] == "Bearer" and body["scope"] == "system/*.rs"
    assert 0 < body["expires_in"] <= 300 and "refresh_token" not in body
    assert r.headers["cache-control"] == "no-store"
    claims = _verify(oauth_services, body["access_token"])
    assert claims["sub"] == c.client_id and claims["client_id"] == c.client_id
    assert claims["aud"] == oauth_services.settings.fhir_audience
    assert claims["exp"] - claims["iat"] == oauth_services.settings.access_token_ttl
    auth = {"Authorization": f"Bearer {body['access_token']}"}
    assert web.get("/fhir/Patient", headers=auth).status_code == 200
    assert web.post("/fhir/Patient", json={"resourceType": "Patient"}, headers=auth).status_code in (403, 404)


def test_secret_post(web, make_client):
    c = make_client("system/Patient.rs", auth_method="client_secret_post")
    r = web.post("/auth/token", data={"grant_type": "client_credentials", "client_id": c.client_id,
                                      "client_secret": c.secret})
    assert r.status_code == 200, r.text
    assert r.json()["scope"] == "system/Patient.rs"


def test_requested_scopes_are_narrowed_to_the_allowed_ones(web, make_client):
    c = make_client("system/*.rs system/Observation.cruds medcloud/admin")
    assert client_credentials(web, c, "system/Patient.r").json()["scope"] == "system/Patient.r"
    # v1 names are mapped; unknown-but-valid extras are dropped, the rest granted
    got = client_credentials(web, c, "system/Patient.read system/Observation.c system/Patient.c medcloud/admin")
    assert got.json()["scope"] == "system/Patient.rs system/Observation.c medcloud/admin"
    assert_oauth_error(client_credentials(web, c, "system/Patient.cud"), 400, "invalid_scope")
    assert_oauth_error(client_credentials(web, c, "user/Patient.rs"), 400, "invalid_scope")
    assert_oauth_error(client_credentials(web, c, "system/Nonsense.rs"), 400, "invalid_scope")
    assert_oauth_error(client_credentials(web, c, "system/Patient.sr"), 400, "invalid_scope")


def test_restricted_allowed_scope_covers_only_restricted_requests(web, make_client):
    c = make_client("system/Observation.rs?category=laboratory")
    assert_oauth_error(client_credentials(web, c, "system/Observation.rs"), 400, "invalid_scope")
    ok = client_credentials(web, c, "system/Observation.rs?category=laboratory")
    assert ok.json()["scope"] == "system/Observation.rs?category=laboratory"


def test_wrong_or_unknown_credentials_are_invalid_client(web, make_client):
    c = make_client()
    bad = base64.b64encode(f"{c.client_id}:wrong".encode()).decode()
    r = web.post("/auth/token", data={"grant_type": "client_credentials"}, headers={"Authorization": f"Basic {bad}"})
    assert_oauth_error(r, 401, "invalid_client")
    assert r.headers["www-authenticate"].startswith("Basic")
    unknown = base64.b64encode(b"nobody:secret").decode()
    r = web.post("/auth/token", data={"grant_type": "client_credentials"},
                 headers={"Authorization": f"Basic {unknown}"})
    assert_oauth_error(r, 401, "invalid_client")
    # a secret client may not pretend to be public
    r = web.post("/auth/token", data={"grant_type": "client_credentials", "client_id": c.client_id})
    assert_oauth_error(r, 401, "invalid_client")


def test_client_without_the_grant_is_unauthorized_client(web, make_client):
    c = make_client("user/*.rs", grant_types=("authorization_code",), redirect_uris=("https://a.example/cb",))
    assert_oauth_error(client_credentials(web, c), 400, "unauthorized_client")


def test_revoked_client_is_refused_and_its_tokens_stop_working(web, oauth_services, make_client):
    c = make_client()
    token = client_credentials(web, c).json()["access_token"]
    assert _verify(oauth_services, token)["client_id"] == c.client_id
    store.revoke_client(oauth_services.db, c.client_id)
    assert_oauth_error(client_credentials(web, c), 401, "invalid_client")
    with pytest.raises(Unauthorized, match="revoked"):
        _verify(oauth_services, token)
    # the edge's own per-token cache is bypassed by a fresh app: the token is refused there too
    r = web.get("/fhir/Patient", headers={"Authorization": f"Bearer {token}"})
    assert r.status_code == 401, r.text


@pytest.mark.parametrize(("body", "headers", "status", "error"), [
    (b'{"grant_type": "client_credentials"}', {"Content-Type": "application/json"}, 400, "invalid_request"),
    (b"scope=system/*.rs", FORM, 400, "invalid_request"),
    (b"grant_type=password&username=a&password=b", FORM, 400, "unsupported_grant_type"),
    (b"grant_type=client_credentials&grant_type=client_credentials", FORM, 400, "invalid_request"),
    (b"grant_type=client_credentials&client_id=\xff\xfe", FORM, 400, "invalid_request"),
    (b"grant_type=client_credentials", {**FORM, "Authorization": "Basic %%%not-base64"}, 401, "invalid_client"),
    (b"grant_type=client_credentials", {**FORM, "Authorization": "Basic " + base64.b64encode(b"nocolon").decode()},
     401, "invalid_client"),
    (b"grant_type=client_credentials", {**FORM, "Authorization": "Digest abc"}, 401, "invalid_client"),
    (b"grant_type=client_credentials", FORM, 401, "invalid_client"),
    (b"grant_type=client_credentials&client_assertion_type=x&client_assertion=y", FORM, 401, "invalid_client"),
    (b"grant_type=client_credentials&client_assertion_type=urn%3Aietf%3Aparams%3Aoauth%3Aclient-assertion-type"
     b"%3Ajwt-bearer&client_assertion=a.b.c", FORM, 401, "invalid_client"),
    (b"grant_type=client_credentials&" + b"x=" + b"a" * 70_000, FORM, 400, "invalid_request"),
    (b"&".join(b"f%d=1" % i for i in range(200)), FORM, 400, "invalid_request"),
])
def test_malformed_token_requests_are_4xx_json(web, body, headers, status, error):
    assert_oauth_error(web.post("/auth/token", content=body, headers=headers), status, error)


def test_secret_and_basic_together_is_refused(web, make_client):
    c = make_client(auth_method="client_secret_post")
    r = web.post("/auth/token", data={"grant_type": "client_credentials", "client_secret": c.secret,
                                      "client_id": c.client_id}, headers=c.basic)
    assert_oauth_error(r, 400, "invalid_request")


def test_get_on_the_token_endpoint_is_405(web):
    assert web.get("/auth/token").status_code == 405


def test_narrowing_unit_cases():
    from medcloud.security.oauth.errors import OAuthError
    from medcloud.security.oauth.grants import SYSTEM_GRANT, USER_GRANT, narrow

    allowed = ("user/*.rs", "patient/Observation.cruds", "launch/patient", "offline_access", "medcloud/admin")
    assert narrow(None, allowed, USER_GRANT) == "user/*.rs patient/Observation.cruds launch/patient offline_access"
    assert narrow("patient/Observation.rs launch/patient", allowed, USER_GRANT) == \
        "patient/Observation.rs launch/patient"
    for only_context in ("launch/patient", "launch/patient offline_access", "medcloud/admin"):
        with pytest.raises(OAuthError, match="none of the requested"):
            narrow(only_context, allowed, USER_GRANT)
    with pytest.raises(OAuthError):
        narrow("", ("user/*.rs",), SYSTEM_GRANT)
    assert narrow("medcloud/admin", ("medcloud/admin", "system/*.rs"), SYSTEM_GRANT) == "medcloud/admin"


def test_token_requests_are_audited(web, oauth_services, make_client):
    from sqlalchemy import select

    from medcloud.storage.schema import audit_log

    c = make_client()
    assert client_credentials(web, c).status_code == 200
    bad = base64.b64encode(f"{c.client_id}:wrong".encode()).decode()
    assert web.post("/auth/token", data={"grant_type": "client_credentials"},
                    headers={"Authorization": f"Basic {bad}"}).status_code == 401
    assert oauth_services.audit.flush()
    with oauth_services.db.read() as conn:
        rows = conn.execute(select(audit_log.c.subtype, audit_log.c.who, audit_log.c.client_id, audit_log.c.outcome)
                            .where(audit_log.c.subtype == "authenticate").order_by(audit_log.c.seq)).all()
    assert [(r.who, r.client_id, r.outcome) for r in rows] == [(c.client_id, c.client_id, "0"),
                                                               (c.client_id, c.client_id, "4")]
    assert c.secret not in str(rows)
