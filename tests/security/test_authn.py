"""``Authenticator``: the token matrix against a real (local) OIDC provider, caching, key rotation.

No storage is involved (external tokens are verified against the IdP's keys; medcloud's own
tokens go to an injected verifier here): the same matrix runs over HTTP on both backends in
test_edge_auth.py.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Any, cast

import pytest

sys.path.insert(0, str(Path(__file__).parent))  # tests/security/_oidc_idp.py

from _oidc_idp import IdP, hs256_with_public_key, unsigned_token  # noqa: E402

from medcloud.config import OidcIssuer, Settings  # noqa: E402
from medcloud.errors import Unauthorized  # noqa: E402
from medcloud.security.authn import Authenticator, InvalidToken, MissingToken  # noqa: E402
from medcloud.security.jwks import KeySetError, check_url, parse_jwks  # noqa: E402
from medcloud.storage.sql.database import Database  # noqa: E402

AUD = "medcloud-fhir"
NO_DB = cast(Database, None)  # external tokens never touch the database


@pytest.fixture
def idp() -> Any:
    provider = IdP()
    provider.add_key("k1")
    yield provider
    provider.close()


def _authn(tmp_path: Path, *issuers: OidcIssuer, **kw: Any) -> Authenticator:
    settings = Settings(data_dir=tmp_path, oidc_issuers=list(issuers))
    return Authenticator(settings, NO_DB, **kw)


def _keycloak(idp: IdP, **kw: Any) -> OidcIssuer:
    return OidcIssuer(issuer=idp.issuer, audience=AUD, **kw)  # jwks_uri found through discovery


def _bearer(token: str) -> str:
    return f"Bearer {token}"


def _refused(authn: Authenticator, header: str | None, reason: str, exc: type[Unauthorized] = InvalidToken):
    with pytest.raises(exc) as info:
        authn.authenticate(header, "10.0.0.1")
    assert reason in info.value.message, info.value.message
    if header and len(header) > 20:
        assert header[7:] not in info.value.message and header[-20:] not in info.value.message
    return info.value


# -- happy paths ---------------------------------------------------------------------------------

def test_keycloak_shaped_token_maps_to_a_principal(idp, tmp_path):
    authn = _authn(tmp_path, _keycloak(idp))
    token = idp.token(sub="f:1a2b:alice", aud=[AUD, "account"], azp="smart-app", typ="Bearer",
                      scope="openid launch/patient patient/Observation.rs patient/Patient.r", patient="p-17",
                      fhirUser="Practitioner/9", realm_access={"roles": ["offline_access"]})
    p = authn.authenticate(_bearer(token), "10.0.0.1")
    assert p.subject == "f:1a2b:alice" and p.client_id == "smart-app" and p.patient == "p-17"
    assert p.scopes == ("openid", "launch/patient", "patient/Observation.rs", "patient/Patient.r")
    assert p.fhir_user == "Practitioner/9" and p.source_ip == "10.0.0.1"
    assert idp.discovery_fetches == 1 and idp.jwks_fetches == 1


def test_entra_shaped_token_with_scp_roles_and_a_scope_map(idp, tmp_path):
    entra = OidcIssuer(issuer="https://login.microsoftonline.com/72f988bf/v2.0", audience=["api://medcloud", AUD],
                       jwks_uri=idp.jwks_uri, subject_claim="oid", scope_map={"FHIR.Admin": "medcloud/admin"})
    authn = _authn(tmp_path, entra)
    token = idp.token(iss=entra.issuer, aud="api://medcloud", oid="8c1e-4f", sub="pairwise-x", azp="0bd3c6c2",
                      scp=["user/Patient.rs", "user/Observation.rs"], roles=["FHIR.Admin"], tid="72f988bf")
    p = authn.authenticate(_bearer(token), None)
    assert p.subject == "8c1e-4f" and p.client_id == "0bd3c6c2"
    assert p.scopes == ("user/Patient.rs", "user/Observation.rs", "medcloud/admin")
    # Entra v2 delegated tokens carry ``scp`` as one space-separated string.
    token = idp.token(iss=entra.issuer, aud="api://medcloud", oid="8c1e-4f", scp="user/Patient.rs launch")
    assert authn.authenticate(_bearer(token), None).scopes == ("user/Patient.rs", "launch")


def test_es256_keys_and_a_configured_jwks_uri(idp, tmp_path):
    idp.add_key("ec1", "ES256")
    authn = _authn(tmp_path, OidcIssuer(issuer=idp.issuer, audience=AUD, jwks_uri=idp.jwks_uri))
    p = authn.authenticate(_bearer(idp.token("ec1", sub="svc", aud=AUD, scope="system/*.rs")), None)
    assert p.scopes == ("system/*.rs",) and idp.discovery_fetches == 0


def test_bearer_scheme_is_case_insensitive(idp, tmp_path):
    authn = _authn(tmp_path, _keycloak(idp))
    assert authn.authenticate("bearer  " + idp.token(sub="a", aud=AUD) + " ", None).subject == "a"


# -- the token matrix ----------------------------------------------------------------------------

def test_expired_and_not_yet_valid_tokens(idp, tmp_path):
    authn = _authn(tmp_path, _keycloak(idp))
    now = int(time.time())
    e = _refused(authn, _bearer(idp.token(sub="bob", aud=AUD, iat=now - 900, nbf=now - 900, exp=now - 300)),
                 "expired")
    assert e.subject == "bob"  # the signature verified: worth recording who it was
    _refused(authn, _bearer(idp.token(sub="bob", aud=AUD, nbf=now + 600, exp=now + 900)), "not valid yet")
    # Within the 60 s leeway both are still accepted (clock skew between IdP and server).
    assert authn.authenticate(_bearer(idp.token(sub="c", aud=AUD, exp=now - 30)), None).subject == "c"
    assert authn.authenticate(_bearer(idp.token(sub="d", aud=AUD, nbf=now + 30)), None).subject == "d"
    _refused(authn, _bearer(idp.token(sub="bob", aud=AUD, exp="tomorrow")), "not a number")
    _refused(authn, _bearer(idp.token(sub="bob", aud=AUD, exp=None)), "no exp claim")


def test_wrong_audience_and_wrong_issuer(idp, tmp_path):
    authn = _authn(tmp_path, _keycloak(idp))
    _refused(authn, _bearer(idp.token(sub="a", aud="another-api")), "not meant for this server")
    _refused(authn, _bearer(idp.token(sub="a", aud=None)), "no aud claim")
    _refused(authn, _bearer(idp.token(sub="a", aud=AUD, iss="https://evil.example/realms/medcloud")),
             "issuer is not trusted")
    _refused(authn, _bearer(idp.token(sub="a", aud=AUD, iss=None)), "issuer is not trusted")
    # A token of the same IdP without the subject claim medcloud maps to a Principal.
    _refused(authn, _bearer(idp.token(aud=AUD)), "no sub claim")


def test_bad_signature(idp, tmp_path):
    authn = _authn(tmp_path, _keycloak(idp))
    good = idp.token(sub="a", aud=AUD)
    head, body, sig = good.split(".")
    tampered = idp.token(sub="admin", aud=AUD).split(".")[1]
    _refused(authn, _bearer(f"{head}.{tampered}.{sig}"), "signature does not verify")
    _refused(authn, _bearer(f"{head}.{body}.{sig[:-4]}AAAA"), "signature does not verify")
    # Signed by a key the IdP never published, under the published kid.
    idp.add_key("rogue", publish=False)
    forged = idp.token("rogue", sub="a", aud=AUD, headers={"kid": "k1"})
    _refused(authn, _bearer(forged), "signature does not verify")


def test_alg_none_and_hs256_key_confusion_are_refused(idp, tmp_path):
    authn = _authn(tmp_path, _keycloak(idp))
    claims = {"iss": idp.issuer, "sub": "root", "aud": AUD, "exp": int(time.time()) + 300}
    _refused(authn, _bearer(unsigned_token(claims)), "alg none")
    confused = hs256_with_public_key(claims, idp.keys["k1"][0].public_key(), "k1")
    _refused(authn, _bearer(confused), "HS256")
    # An allowed asymmetric algorithm the issuer is not configured for.
    idp.add_key("ps", "PS256")
    _refused(authn, _bearer(idp.token("ps", sub="a", aud=AUD)), "not accepted from this issuer")


def test_unknown_kid_refetches_once_so_key_rotation_works(idp, tmp_path):
    clock = [time.time()]
    authn = _authn(tmp_path, _keycloak(idp), clock=lambda: clock[0], jwks_min_refresh=30.0)
    assert authn.authenticate(_bearer(idp.token(sub="a", aud=AUD)), None).subject == "a"
    assert idp.jwks_fetches == 1
    idp.rotate("k2")
    # Right after a fetch, an unknown kid does not trigger another one (rate limit) ...
    _refused(authn, _bearer(idp.token("k2", sub="b", aud=AUD)), "signing key is not in the issuer's key set")
    assert idp.jwks_fetches == 1
    clock[0] += 31
    # A token with the new kid: the cache does not know it, refetches once, and accepts it.
    assert authn.authenticate(_bearer(idp.token("k2", sub="b", aud=AUD)), None).subject == "b"
    assert idp.jwks_fetches == 2
    # The retired key is gone from the IdP's set now, so its (fresh) tokens are refused.
    _refused(authn, _bearer(idp.token("k1", sub="c", aud=AUD)), "signing key is not in the issuer's key set")
    # Invented kids do not make medcloud hammer the IdP: at most one refetch per min_refresh.
    for i in range(5):
        idp.add_key(f"x{i}", publish=False)
        _refused(authn, _bearer(idp.token(f"x{i}", sub="d", aud=AUD)), "signing key is not in")
    assert idp.jwks_fetches == 2


def test_key_set_ttl_and_an_idp_outage(idp, tmp_path):
    clock = [time.time()]
    authn = _authn(tmp_path, _keycloak(idp), clock=lambda: clock[0], jwks_ttl=600, jwks_min_refresh=30)
    assert authn.authenticate(_bearer(idp.token(sub="a", aud=AUD)), None).subject == "a"
    idp.fail = True
    clock[0] += 700  # past the TTL: the refetch fails, the cached keys keep working
    assert authn.authenticate(_bearer(idp.token(sub="b", aud=AUD, exp=int(clock[0]) + 60)), None).subject == "b"
    idp.fail = False
    clock[0] += 31
    assert authn.authenticate(_bearer(idp.token(sub="c", aud=AUD, exp=int(clock[0]) + 60)), None).subject == "c"
    assert idp.jwks_fetches == 2


def test_an_unreachable_idp_is_a_401_not_a_crash(idp, tmp_path):
    idp.fail = True
    authn = _authn(tmp_path, _keycloak(idp))
    _refused(authn, _bearer(idp.token(sub="a", aud=AUD)), "could not")


@pytest.mark.parametrize("header, reason, exc", [
    (None, "requires an access token", MissingToken),
    ("", "requires an access token", MissingToken),
    ("   ", "requires an access token", MissingToken),
    ("Basic YWxpY2U6c2VjcmV0", "Bearer scheme", MissingToken),
    ("Bearer", "not a JWT", InvalidToken),
    ("Bearer ", "not a JWT", InvalidToken),
    ("Bearer abc", "not a JWT", InvalidToken),
    ("Bearer a.b", "not a JWT", InvalidToken),
    ("Bearer a.b.c.d", "not a JWT", InvalidToken),
    ("Bearer a.b.c", "not a well-formed JWT", InvalidToken),
    ("Bearer eyJhbGciOiJSUzI1NiJ9.e30.", "not a well-formed JWT", InvalidToken),  # payload {} fine, no iss
    ("Bearer ....", "not a JWT", InvalidToken),
    ("Bearer \u00e9t\u00e9.x.y", "not a JWT", InvalidToken),
    ("Bearer eyJ\x00.e30.", "not a JWT", InvalidToken),
    ("Bearer " + "A" * 9000, "longer than 8192", InvalidToken),
    ("Bearer " + "eyJhbGciOiJSUzI1NiJ9." + "A" * 8200 + ".sig", "longer than 8192", InvalidToken),
    ("Bearer W10.W10.AA", "not a well-formed JWT", InvalidToken),  # header and payload are JSON arrays
])
def test_garbage_headers(tmp_path, header, reason, exc):
    authn = _authn(tmp_path)
    if header == "Bearer eyJhbGciOiJSUzI1NiJ9.e30.":
        reason = "issuer is not trusted"
    _refused(authn, header, reason, exc)


@pytest.mark.parametrize("body, reason", [
    (b"<html>not json</html>", "not JSON"),
    (b'{"keys": "nope"}', "no keys array"),
    (b"[]", "no keys array"),
    (b'{"keys": []}', "no usable signature keys"),
    (b'{"keys": [{"kty": "RSA", "kid": "k1", "n": "!!", "e": "AQAB"}]}', "no usable signature keys"),
    (b'{"keys": [{"kty": "oct", "kid": "k1", "k": "c2VjcmV0"}]}', "no usable signature keys"),
    (b'{"keys": [{"kty": "EC", "kid": "k1", "crv": "P-999", "x": "AA", "y": "AA"}]}', "no usable signature keys"),
    (b'{"keys": [7, null, "x"]}', "no usable signature keys"),
])
def test_malformed_key_sets(idp, tmp_path, body, reason):
    idp.jwks_override = body
    authn = _authn(tmp_path, _keycloak(idp))
    _refused(authn, _bearer(idp.token(sub="a", aud=AUD)), reason)


def test_one_broken_member_does_not_hide_the_good_keys(idp):
    good = idp.jwks()["keys"][0]
    keys = parse_jwks(b'{"keys": [{"kty": "RSA", "n": "!!"}, {"kty": "oct", "k": "AA"}, %s]}'
                      % __import__("json").dumps(good).encode())
    assert [k.kid for k in keys] == ["k1"]


def test_discovery_must_name_the_same_issuer_and_keys_come_over_https(idp, tmp_path):
    idp.discovery_issuer = "https://other.example/realms/medcloud"
    authn = _authn(tmp_path, _keycloak(idp))
    _refused(authn, _bearer(idp.token(sub="a", aud=AUD)), "names another issuer")
    with pytest.raises(KeySetError):
        check_url("http://idp.example.org/certs")
    check_url("https://idp.example.org/certs")
    check_url("http://[::1]:8080/certs")


# -- medcloud's own tokens and the cache -------------------------------------------------------

class FakeOwnVerifier:
    """Stands in for security.oauth.tokens.verify_access_token (the contract's signature)."""

    def __init__(self, claims: dict[str, Any] | Exception):
        self.claims = claims
        self.calls: list[dict[str, Any]] = []

    def __call__(self, db: Database, token: str, *, issuer: str, audience: str | None,
                 now: float | None = None) -> dict[str, Any]:
        self.calls.append({"token": token, "issuer": issuer, "audience": audience})
        if isinstance(self.claims, Exception):
            raise self.claims
        return self.claims


def _own_token(settings: Settings, idp: IdP, **claims: Any) -> str:
    return idp.token(iss=settings.auth_issuer, aud=settings.fhir_audience, **claims)


def test_own_tokens_go_to_the_oauth_verifier_and_are_cached(idp, tmp_path):
    clock = [time.time()]
    exp = int(clock[0]) + 300
    verifier = FakeOwnVerifier({"iss": "x", "sub": "admin", "client_id": "cli-1", "exp": exp,
                                "scope": "system/*.cruds medcloud/admin", "patient": "p1"})
    authn = _authn(tmp_path, verify_own=verifier, clock=lambda: clock[0])
    token = _own_token(authn.settings, idp, sub="admin")
    p = authn.authenticate(_bearer(token), "10.0.0.9")
    assert (p.subject, p.client_id, p.scopes, p.patient, p.source_ip) == (
        "admin", "cli-1", ("system/*.cruds", "medcloud/admin"), "p1", "10.0.0.9")
    assert verifier.calls == [{"token": token, "issuer": "http://127.0.0.1:8080/auth",
                               "audience": "http://127.0.0.1:8080/fhir"}]
    # Cached: no second verification, the new caller's address is carried.
    assert authn.authenticate(_bearer(token), "10.0.0.10").source_ip == "10.0.0.10"
    assert authn.cached(_bearer(token), None) is not None and len(verifier.calls) == 1
    # ... for at most 30 s (revocation reaches the verifier again) ...
    clock[0] += 31
    assert authn.cached(_bearer(token), None) is None
    authn.authenticate(_bearer(token), None)
    assert len(verifier.calls) == 2
    # ... and never past the token's exp.
    clock[0] = exp - 5
    authn.authenticate(_bearer(token), None)
    clock[0] = exp + 1
    assert authn.cached(_bearer(token), None) is None


def test_own_token_refusals_keep_the_verifier_reason(idp, tmp_path):
    authn = _authn(tmp_path, verify_own=FakeOwnVerifier(Unauthorized("the client has been revoked")))
    token = _own_token(authn.settings, idp, sub="x")
    e = _refused(authn, _bearer(token), "the client has been revoked")
    assert isinstance(e, InvalidToken)
    # A verifier message that would echo the token is replaced.
    authn = _authn(tmp_path, verify_own=FakeOwnVerifier(Unauthorized(f"bad token {token}")))
    _refused(authn, _bearer(token), "was refused")


def test_the_cache_is_bounded(idp, tmp_path, monkeypatch):
    import medcloud.security.authn as authn_mod

    monkeypatch.setattr(authn_mod, "CACHE_ENTRIES", 3)
    authn = _authn(tmp_path, _keycloak(idp))
    tokens = [idp.token(sub=f"u{i}", aud=AUD) for i in range(5)]
    for t in tokens:
        authn.authenticate(_bearer(t), None)
    assert [authn.cached(_bearer(t), None) is not None for t in tokens] == [False, False, True, True, True]


def test_refused_tokens_are_not_cached(idp, tmp_path):
    authn = _authn(tmp_path, _keycloak(idp))
    token = idp.token(sub="a", aud="elsewhere")
    for _ in range(2):
        _refused(authn, _bearer(token), "not meant for this server")
    assert authn.cached(_bearer(token), None) is None


@pytest.mark.parametrize("entry, field", [
    ({"issuer": "", "audience": "a"}, "issuer"),
    ({"issuer": "https://idp", "audience": []}, "audience"),
    ({"issuer": "https://idp", "audience": "a", "algorithms": ["HS256"]}, "algorithms"),
    ({"issuer": "https://idp", "audience": "a", "algorithms": []}, "algorithms"),
    ({"issuer": "https://idp"}, "audience"),
    ({"issuer": "https://idp", "audience": "a", "colour": "red"}, "colour"),
])
def test_bad_issuer_configuration_is_a_clear_cli_error(tmp_path, monkeypatch, entry, field):
    import json

    from typer.testing import CliRunner

    from medcloud.cli import app

    monkeypatch.setenv("MEDCLOUD_OIDC_ISSUERS", json.dumps([entry]))
    r = CliRunner().invoke(app, ["serve", "--data-dir", str(tmp_path)])
    assert r.exit_code == 2 and "invalid configuration" in r.output and field in r.output, r.output


def test_issuers_from_the_environment_and_toml(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "medcloud.toml").write_text(
        '[[oidc_issuers]]\nissuer = "https://kc.example/realms/h"\naudience = "medcloud-fhir"\n'
        '[[oidc_issuers]]\nissuer = "https://login.microsoftonline.com/t/v2.0"\naudience = ["api://m"]\n'
        'subject_claim = "oid"\n[oidc_issuers.scope_map]\n"FHIR.Read" = "user/*.rs"\n')
    s = Settings()
    assert [i.issuer for i in s.oidc_issuers] == ["https://kc.example/realms/h", "https://login.microsoftonline.com/t/v2.0"]
    assert s.oidc_issuers[1].scope_map == {"FHIR.Read": "user/*.rs"} and s.oidc_issuers[1].subject_claim == "oid"
    monkeypatch.setenv("MEDCLOUD_OIDC_ISSUERS", '[{"issuer": "https://e", "audience": "x"}]')
    assert [i.issuer for i in Settings().oidc_issuers] == ["https://e"]  # env wins over the file
    assert Settings().with_overrides(port=9).oidc_issuers[0].audience == "x"
