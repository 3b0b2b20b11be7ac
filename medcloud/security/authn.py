"""Who is calling: Bearer access tokens (RFC 6750) checked at medcloud's HTTP edges.

A token is dispatched on its (unverified) ``iss``:

- medcloud's own issuer (``Settings.auth_issuer``): ``security.oauth.tokens.verify_access_token``
  checks it against the signing keys in the database, so every replica accepts every token;
- an issuer listed in ``Settings.oidc_issuers`` (Keycloak, Entra ID...): its JWKS (security/jwks.py)
  verifies the signature, then ``aud``, ``iss``, ``exp`` and ``nbf`` are checked here;
- anything else is refused.

Only asymmetric algorithms are accepted, and only those configured for the issuer: ``alg: none``
and HS256 signed with a public key (the classic key-confusion attack) never reach a verifier.

A verified token's Principal is cached per token string, in-process, for at most CACHE_SECONDS
and never past its ``exp``: a read by id then costs a dictionary lookup instead of a signature
check. CACHE_SECONDS matches the 30 s for which the verifier may cache a client's revocation
status, so caching adds no delay to revocation. Failure messages are fixed strings; they never
echo the token.
"""

from __future__ import annotations

import logging
import re
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from typing import Any, Protocol, TypeGuard

import jwt
from jwt.exceptions import (
    InvalidAudienceError,
    InvalidSignatureError,
    MissingRequiredClaimError,
    PyJWTError,
)

from medcloud.config import OidcIssuer, Settings
from medcloud.errors import Unauthorized
from medcloud.fhir.exchange import Principal
from medcloud.security.jwks import ASYMMETRIC_ALGORITHMS, Fetch, KeySetError, RemoteKeySet
from medcloud.storage.sql.database import Database

log = logging.getLogger("medcloud.security")

MAX_HEADER_CHARS = 8192  # an Authorization header longer than this is refused unread
CACHE_SECONDS = 30.0
CACHE_ENTRIES = 10_000
LEEWAY = 60  # seconds of clock skew tolerated on exp/nbf
# RFC 6750 §2.1 b64token, with exactly three dot-separated parts (a JWS in compact form).
_JWT = re.compile(r"[A-Za-z0-9_\-]+\.[A-Za-z0-9_\-]+\.[A-Za-z0-9_\-]*")


class MissingToken(Unauthorized):
    """No usable credentials at all: the challenge carries no error code (RFC 6750 §3.1)."""


class InvalidToken(Unauthorized):
    """A token was sent and refused (``error="invalid_token"``); who it claims to be, once verified."""

    def __init__(self, message: str, *, subject: str | None = None, client_id: str | None = None):
        super().__init__(message)
        self.subject = subject
        self.client_id = client_id


class OwnVerifier(Protocol):
    def __call__(self, db: Database, token: str, *, issuer: str, audience: str | None,
                 now: float | None = None) -> dict[str, Any]: ...


class Authenticator:
    """Turns an ``Authorization`` header into a Principal, or raises Unauthorized."""

    def __init__(self, settings: Settings, db: Database, *, verify_own: OwnVerifier | None = None,
                 fetch: Fetch | None = None, clock: Callable[[], float] = time.time,
                 jwks_ttl: float = 600.0, jwks_min_refresh: float = 30.0):
        self.settings = settings
        self.db = db
        self._verify_own = verify_own
        self._clock = clock
        self._issuer = settings.auth_issuer
        self._audience = settings.fhir_audience
        self._external: dict[str, tuple[OidcIssuer, RemoteKeySet]] = {}
        for idp in settings.oidc_issuers:
            keys = RemoteKeySet(idp.issuer, idp.jwks_uri, fetch=fetch, clock=clock, ttl=jwks_ttl,
                                min_refresh=jwks_min_refresh)
            self._external[idp.issuer] = (idp, keys)
        # token -> [valid until, Principal without address, last address, Principal with it]
        self._cache: OrderedDict[str, list[Any]] = OrderedDict()
        self._cache_lock = threading.Lock()

    def cached(self, authorization_header: str | None, source_ip: str | None) -> Principal | None:
        """The Principal of a token verified recently, without any I/O; None when it must be verified."""
        if not authorization_header or len(authorization_header) > MAX_HEADER_CHARS:
            return None
        token = authorization_header[7:].strip() if authorization_header[:7].lower() == "bearer " else ""
        with self._cache_lock:
            hit = self._cache.get(token)
            if hit is None:
                return None
            if hit[0] <= self._clock():
                del self._cache[token]
                return None
            self._cache.move_to_end(token)
            if hit[2] != source_ip:  # a client keeps its address: build the Principal once, share it (frozen)
                hit[2], hit[3] = source_ip, _at(hit[1], source_ip)
            principal: Principal = hit[3]
        return principal

    def authenticate(self, authorization_header: str | None, source_ip: str | None) -> Principal:
        """Verify the header's Bearer token; raises MissingToken or InvalidToken (both Unauthorized)."""
        hit = self.cached(authorization_header, source_ip)
        if hit is not None:
            return hit
        token = _bearer(authorization_header)
        principal, expires = self._verify(token)
        now = self._clock()
        located = _at(principal, source_ip)
        with self._cache_lock:
            self._cache[token] = [min(expires, now + CACHE_SECONDS), principal, source_ip, located]
            while len(self._cache) > CACHE_ENTRIES:
                self._cache.popitem(last=False)
        return located

    def _verify(self, token: str) -> tuple[Principal, float]:
        try:
            header = jwt.get_unverified_header(token)
            claims = jwt.decode(token, options={"verify_signature": False})
        except (PyJWTError, ValueError, TypeError) as e:
            raise InvalidToken("the access token is not a well-formed JWT") from e
        alg = header.get("alg")
        if not isinstance(alg, str) or alg.lower() == "none":
            raise InvalidToken("unsigned tokens (alg none) are refused")
        if alg not in ASYMMETRIC_ALGORITHMS:
            raise InvalidToken(f"tokens signed with {_printable(alg)} are refused")
        iss = claims.get("iss")
        if iss == self._issuer:
            return self._verify_medcloud(token)
        if isinstance(iss, str) and iss in self._external:
            idp, keys = self._external[iss]
            return self._verify_external(token, header, idp, keys)
        raise InvalidToken("the token's issuer is not trusted by this server")

    def _verify_medcloud(self, token: str) -> tuple[Principal, float]:
        verify = self._verify_own or _default_own_verifier()
        try:
            claims = verify(self.db, token, issuer=self._issuer, audience=self._audience, now=self._clock())
        except InvalidToken:
            raise
        except Unauthorized as e:
            raise InvalidToken(_sanitise(e.message, token)) from e
        except (PyJWTError, ValueError, TypeError, KeyError) as e:
            raise InvalidToken("the access token could not be verified") from e
        return _principal(claims, subject_claim="sub", scope_claims=("scope",), patient_claim="patient",
                          scope_map={}), _expiry(claims)

    def _verify_external(self, token: str, header: dict[str, Any], idp: OidcIssuer,
                         keys: RemoteKeySet) -> tuple[Principal, float]:
        alg = str(header["alg"])
        if alg not in idp.algorithms:
            raise InvalidToken(f"tokens signed with {_printable(alg)} are not accepted from this issuer")
        kid = header.get("kid")
        try:
            candidates = keys.keys_for(kid if isinstance(kid, str) else None, alg)
        except KeySetError as e:
            raise InvalidToken(str(e)) from e
        claims = None
        for key in candidates:
            try:
                claims = jwt.decode(
                    token, key=key.key, algorithms=[alg], audience=idp.audience, issuer=idp.issuer,
                    options={"require": ["exp", "iss", "aud"], "verify_exp": False, "verify_nbf": False,
                             "verify_iat": False},
                )
                break
            except InvalidSignatureError:
                continue
            except MissingRequiredClaimError as e:
                raise InvalidToken(f"the token has no {_printable(e.claim)} claim") from e
            except InvalidAudienceError as e:
                raise InvalidToken("the token is not meant for this server (aud)",
                                   **_who(token, idp)) from e
            except (PyJWTError, ValueError, TypeError) as e:
                raise InvalidToken("the access token could not be verified") from e
        if claims is None:
            raise InvalidToken("the token's signature does not verify")
        self._check_times(claims, idp)
        principal = _principal(claims, subject_claim=idp.subject_claim,
                               scope_claims=(idp.scope_claim, "scp", "roles"),
                               patient_claim=idp.patient_claim, scope_map=idp.scope_map)
        return principal, _expiry(claims)

    def _check_times(self, claims: dict[str, Any], idp: OidcIssuer) -> None:
        now = self._clock()
        exp, nbf = claims.get("exp"), claims.get("nbf")
        if not _is_number(exp) or (nbf is not None and not _is_number(nbf)):
            raise InvalidToken("the token's exp or nbf is not a number")
        who = {"subject": _str(claims.get(idp.subject_claim)), "client_id": _client_id(claims)}
        if exp + LEEWAY < now:
            raise InvalidToken("the token has expired", **who)
        if nbf is not None and nbf - LEEWAY > now:
            raise InvalidToken("the token is not valid yet (nbf)", **who)


def _bearer(header: str | None) -> str:
    if header is None or not header.strip():
        raise MissingToken("this endpoint requires an access token (Authorization: Bearer ...)")
    if len(header) > MAX_HEADER_CHARS:
        raise InvalidToken(f"the Authorization header is longer than {MAX_HEADER_CHARS} characters")
    scheme, _, token = header.strip().partition(" ")
    if scheme.lower() != "bearer":
        raise MissingToken("the Authorization header must use the Bearer scheme")
    token = token.strip()
    if not _JWT.fullmatch(token):
        raise InvalidToken("the access token is not a JWT")
    return token


def _principal(claims: dict[str, Any], *, subject_claim: str, scope_claims: tuple[str, ...],
               patient_claim: str, scope_map: dict[str, str]) -> Principal:
    subject = _str(claims.get(subject_claim))
    if subject is None:
        raise InvalidToken(f"the token has no {_printable(subject_claim)} claim")
    names: list[str] = []
    for claim in dict.fromkeys(scope_claims):  # Entra ID: delegated ``scp`` (string), app ``roles`` (list)
        value = claims.get(claim)
        if isinstance(value, str):
            names.extend(value.split())
        elif isinstance(value, list):
            names.extend(v for v in value if isinstance(v, str))
    scopes: list[str] = []
    for name in names:
        scopes.extend(scope_map[name].split() if name in scope_map else [name])
    return Principal(subject=subject, client_id=_client_id(claims), scopes=tuple(dict.fromkeys(scopes)),
                     patient=_str(claims.get(patient_claim)), fhir_user=_str(claims.get("fhirUser")))


def _at(p: Principal, source_ip: str | None) -> Principal:
    # Not dataclasses.replace: on the hot path it costs more than the rest of the cache lookup.
    return Principal(subject=p.subject, client_id=p.client_id, scopes=p.scopes, patient=p.patient,
                     source_ip=source_ip, fhir_user=p.fhir_user)


def _client_id(claims: dict[str, Any]) -> str | None:
    # RFC 9068 ``client_id``; OIDC ``azp`` (Keycloak); ``appid`` (Entra ID v1 tokens).
    for name in ("client_id", "azp", "appid"):
        value = _str(claims.get(name))
        if value is not None:
            return value
    return None


def _who(token: str, idp: OidcIssuer) -> dict[str, str | None]:
    """Subject and client of a token whose signature has verified (only then worth recording)."""
    claims = jwt.decode(token, options={"verify_signature": False})
    return {"subject": _str(claims.get(idp.subject_claim)), "client_id": _client_id(claims)}


def _expiry(claims: dict[str, Any]) -> float:
    exp = claims.get("exp")
    return float(exp) if _is_number(exp) else 0.0


def _default_own_verifier() -> OwnVerifier:
    from medcloud.security.startup import optional

    verify: OwnVerifier | None = optional("medcloud.security.oauth.tokens", "verify_access_token")
    if verify is None:  # a build without the authorization server: only external issuers work
        raise InvalidToken("this server does not issue access tokens")
    return verify


def _is_number(value: object) -> TypeGuard[int | float]:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _str(value: object) -> str | None:
    return value if isinstance(value, str) and value else None


def _printable(text: object) -> str:
    """A claim or algorithm name from the token, cut short and stripped for a header or a log line."""
    return "".join(c for c in str(text)[:40] if c.isalnum() or c in "-_.:/")


def _sanitise(message: str, token: str) -> str:
    return "the access token was refused" if token in message or len(message) > 200 else message
