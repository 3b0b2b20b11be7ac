"""Access tokens: medcloud's own JWTs, issued here and verified by every replica.

Claims (the security slices' shared contract, docs/security.md): ``iss`` (``Settings.auth_issuer``),
``sub`` (user name or client id), ``aud`` (the FHIR base), ``exp`` = ``iat`` + ``access_token_ttl``,
``iat``, ``nbf``, ``jti``, ``scope``, ``client_id``, and when set ``patient`` and ``fhirUser``.
Signed ES256 with the current server key (``signing.py``), ``kid`` in the header.

``verify_access_token`` is on the hot path of every request that is not already in the
authenticator's token cache: the public keys and each client's revoked flag are cached
in-process for at most CACHE_SECONDS; a revoked ``jti`` is one primary-key lookup.
"""

from __future__ import annotations

import threading
import time
import uuid
import weakref
from typing import Any

import jwt
from jwt.exceptions import PyJWTError
from sqlalchemy import delete, select

from medcloud.config import Settings
from medcloud.errors import Unauthorized
from medcloud.security.oauth import signing
from medcloud.storage.security_schema import oauth_clients, oauth_revoked_tokens
from medcloud.storage.sql.database import Database

ALGORITHMS = (signing.ALG,)  # the allow-list: never "none", never HMAC
LEEWAY = 30  # seconds of clock skew accepted on exp/nbf/iat (the contract allows at most 60)
CACHE_SECONDS = 30.0
MAX_TOKEN_CHARS = 8192
_REQUIRED = ("iss", "sub", "exp", "iat", "jti", "client_id")


def issue_access_token(db: Database, settings: Settings, *, subject: str, client_id: str, scope: str,
                       patient: str | None = None, fhir_user: str | None = None,
                       now: float | None = None) -> tuple[str, dict[str, Any]]:
    """A signed access token and its claims."""
    iat = int(now if now is not None else time.time())
    claims: dict[str, Any] = {
        "iss": settings.auth_issuer, "sub": subject, "aud": settings.fhir_audience,
        "exp": iat + settings.access_token_ttl, "iat": iat, "nbf": iat, "jti": uuid.uuid4().hex,
        "scope": scope, "client_id": client_id,
    }
    if patient:
        claims["patient"] = patient
    if fhir_user:
        claims["fhirUser"] = fhir_user
    key = signing.current_key(db)
    token = jwt.encode(claims, key.private_key, algorithm=signing.ALG, headers={"kid": key.kid, "typ": "at+jwt"})
    return token, claims


def verify_access_token(db: Database, token: str, *, issuer: str, audience: str | None,
                        now: float | None = None) -> dict[str, Any]:
    """The claims of a valid medcloud access token; raises Unauthorized with a short reason otherwise."""
    t = now if now is not None else time.time()
    claims = verify_signature(db, token, issuer=issuer, audience=audience, now=t)
    if not isinstance(claims.get("scope", ""), str):
        raise Unauthorized("the access token's scope is not a string")
    if is_revoked(db, str(claims["jti"])):
        raise Unauthorized("the access token has been revoked")
    if not client_active(db, str(claims["client_id"])):
        raise Unauthorized("the client this access token was issued to has been revoked")
    return claims


def verify_signature(db: Database, token: str, *, issuer: str, audience: str | None, now: float) -> dict[str, Any]:
    """Signature, ``alg``, ``iss``, ``aud``, ``exp``/``nbf``/``iat`` and required claims; no revocation checks."""
    if not isinstance(token, str) or not token or len(token) > MAX_TOKEN_CHARS:
        raise Unauthorized("malformed access token")
    try:
        header = jwt.get_unverified_header(token)
    except PyJWTError as e:
        raise Unauthorized("malformed access token") from e
    if header.get("alg") not in ALGORITHMS:
        raise Unauthorized("the access token's algorithm is not accepted")
    kid = header.get("kid")
    key = signing.public_key(db, kid, now) if isinstance(kid, str) and len(kid) <= 64 else None
    if key is None:
        raise Unauthorized("the access token was not signed by a current key of this server")
    try:
        claims: dict[str, Any] = jwt.decode(
            token, key, algorithms=list(ALGORITHMS), issuer=issuer, audience=audience,
            options={"verify_exp": False, "verify_nbf": False, "verify_iat": False,
                     "verify_aud": audience is not None, "require": list(_REQUIRED)})
    except jwt.InvalidAudienceError as e:
        raise Unauthorized("the access token is for another audience") from e
    except jwt.InvalidIssuerError as e:
        raise Unauthorized("the access token is from another issuer") from e
    except jwt.MissingRequiredClaimError as e:
        raise Unauthorized(f"the access token has no {e.claim!r} claim") from e
    except (PyJWTError, ValueError, TypeError) as e:
        raise Unauthorized("invalid access token") from e
    for name in ("exp", "iat", "nbf"):
        if name in claims and (not isinstance(claims[name], (int, float)) or isinstance(claims[name], bool)):
            raise Unauthorized(f"the access token's {name!r} is not a number")
    if claims["exp"] + LEEWAY < now:
        raise Unauthorized("the access token has expired")
    if claims.get("nbf", claims["iat"]) - LEEWAY > now or claims["iat"] - LEEWAY > now:
        raise Unauthorized("the access token is not valid yet")
    if not all(isinstance(claims[c], str) and claims[c] for c in ("sub", "jti", "client_id")):
        raise Unauthorized("the access token's sub, jti and client_id must be strings")
    return claims


def is_revoked(db: Database, jti: str) -> bool:
    with db.read(snapshot=False) as conn:
        hit = conn.execute(select(oauth_revoked_tokens.c.jti).where(oauth_revoked_tokens.c.jti == jti)).first()
    return hit is not None


def revoke(db: Database, claims: dict[str, Any], *, now: float | None = None) -> None:
    """Refuse this access token until its ``exp`` (RFC 7009); expired entries are dropped on the way."""
    t = int(now if now is not None else time.time())
    with db.write() as conn:
        conn.execute(delete(oauth_revoked_tokens).where(oauth_revoked_tokens.c.expires < t - LEEWAY))
        conn.execute(db.dialect.insert_ignore(oauth_revoked_tokens).values(
            jti=str(claims["jti"])[:64], expires=int(claims["exp"]) + LEEWAY))


# -- client status, cached per database ---------------------------------------------------------

_CLIENTS: weakref.WeakKeyDictionary[Database, dict[str, tuple[float, bool]]] = weakref.WeakKeyDictionary()
_CLIENTS_LOCK = threading.Lock()
_MAX_CACHED_CLIENTS = 10_000


def client_active(db: Database, client_id: str) -> bool:
    """Whether the client exists and is not revoked (cached up to CACHE_SECONDS)."""
    mono = time.monotonic()
    with _CLIENTS_LOCK:
        cache = _CLIENTS.setdefault(db, {})
        hit = cache.get(client_id)
    if hit is not None and mono - hit[0] <= CACHE_SECONDS:
        return hit[1]
    with db.read(snapshot=False) as conn:
        revoked = conn.execute(select(oauth_clients.c.revoked).where(oauth_clients.c.client_id == client_id)).first()
    active = revoked is not None and not revoked[0]
    with _CLIENTS_LOCK:
        if len(cache) >= _MAX_CACHED_CLIENTS:
            cache.clear()
        cache[client_id] = (mono, active)
    return active


def forget_client(db: Database, client_id: str) -> None:
    """Drop this process's cached status of a client (after revoking it here)."""
    with _CLIENTS_LOCK:
        _CLIENTS.get(db, {}).pop(client_id, None)
