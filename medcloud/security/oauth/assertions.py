"""``private_key_jwt`` client authentication (SMART Backend Services, RFC 7523 §3, RFC 7521 §4.2).

The client signs a short-lived JWT with its own private key: ``iss`` = ``sub`` = its client_id,
``aud`` = our token endpoint URL, ``exp`` at most five minutes ahead, a unique ``jti``, RS384 or
ES384 (https://hl7.org/fhir/smart-app-launch/client-confidential-asymmetric.html). Its public
keys come from the JWK Set registered with the client or from its JWK Set URL (fetched with
httpx, cached CACHE_SECONDS in-process, refetched early when the ``kid`` is unknown).

Replay: each accepted ``(client_id, jti)`` is inserted in ``oauth_used_jtis`` until the
assertion's ``exp``; a second insert of the same pair fails, on every replica, in the same
transaction that would accept it.
"""

from __future__ import annotations

import threading
import time
from typing import Any

import jwt
import orjson
from jwt.exceptions import PyJWTError
from sqlalchemy import delete

from medcloud.security import jwks as jwks_module
from medcloud.security.jwks import KeySetError, RemoteKeySet
from medcloud.security.oauth.errors import OAuthError, invalid_client
from medcloud.security.oauth.store import Client
from medcloud.storage.security_schema import oauth_used_jtis
from medcloud.storage.sql.database import Database

ASSERTION_TYPE = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
ALGORITHMS = ("RS384", "ES384")
MAX_LIFETIME = 300  # seconds: ``exp`` may be at most this far ahead (SMART Backend Services)
SKEW = 10  # seconds of clock difference tolerated on exp/nbf/iat
CACHE_SECONDS = 300.0
MAX_ASSERTION_CHARS = 16_384

_REMOTE: dict[tuple[str, str], RemoteKeySet] = {}
_REMOTE_LOCK = threading.Lock()


def verify_client_assertion(db: Database, client: Client, assertion: str, *, token_url: str,
                            now: float | None = None) -> dict[str, Any]:
    """The assertion's claims once it authenticates ``client``; raises ``invalid_client`` otherwise."""
    t = now if now is not None else time.time()
    if not isinstance(assertion, str) or len(assertion) > MAX_ASSERTION_CHARS:
        raise invalid_client("malformed client assertion")
    try:
        header = jwt.get_unverified_header(assertion)
    except PyJWTError as e:
        raise invalid_client("malformed client assertion") from e
    alg = header.get("alg")
    if alg not in ALGORITHMS:
        raise invalid_client(f"client assertions are signed with {' or '.join(ALGORITHMS)}")
    kid = header.get("kid")
    if kid is not None and not isinstance(kid, str):
        raise invalid_client("malformed client assertion: kid is not a string")
    try:
        keys = _keys(client).keys_for(kid, str(alg))
    except KeySetError as e:
        raise invalid_client(f"no usable key for the client assertion: {e}") from e
    claims = _decode(assertion, keys, str(alg), client.client_id, token_url)
    _check_times(claims, t)
    jti = claims.get("jti")
    if not isinstance(jti, str) or not jti or len(jti) > 256:
        raise invalid_client("the client assertion needs a jti (at most 256 characters)")
    _remember_jti(db, client.client_id, jti, int(claims["exp"]), t)
    return claims


def _decode(assertion: str, keys: list[Any], alg: str, client_id: str, token_url: str) -> dict[str, Any]:
    last: Exception | None = None
    for key in keys:
        try:
            claims: dict[str, Any] = jwt.decode(
                assertion, key, algorithms=[alg], audience=token_url, issuer=client_id,
                options={"verify_exp": False, "verify_nbf": False, "verify_iat": False,
                         "require": ["iss", "sub", "aud", "exp", "jti"]})
        except jwt.InvalidSignatureError as e:
            last = e
            continue
        except jwt.InvalidAudienceError as e:
            raise invalid_client(f"the client assertion's aud must be the token endpoint {token_url}") from e
        except jwt.InvalidIssuerError as e:
            raise invalid_client("the client assertion's iss must be the client_id") from e
        except jwt.MissingRequiredClaimError as e:
            raise invalid_client(f"the client assertion has no {e.claim!r} claim") from e
        except (PyJWTError, ValueError, TypeError) as e:
            raise invalid_client("invalid client assertion") from e
        if claims.get("sub") != client_id:
            raise invalid_client("the client assertion's sub must be the client_id")
        return claims
    raise invalid_client("the client assertion's signature does not verify") from last


def _check_times(claims: dict[str, Any], now: float) -> None:
    for name in ("exp", "nbf", "iat"):
        value = claims.get(name)
        if value is not None and (not isinstance(value, (int, float)) or isinstance(value, bool)):
            raise invalid_client(f"the client assertion's {name} is not a number")
    exp = claims["exp"]
    if exp + SKEW < now:
        raise invalid_client("the client assertion has expired")
    if exp > now + MAX_LIFETIME + SKEW:
        raise invalid_client(f"the client assertion's exp is more than {MAX_LIFETIME} s in the future")
    if claims.get("nbf", now) - SKEW > now or claims.get("iat", now) - SKEW > now:
        raise invalid_client("the client assertion is not valid yet")


def _remember_jti(db: Database, client_id: str, jti: str, exp: int, now: float) -> None:
    with db.write() as conn:
        conn.execute(delete(oauth_used_jtis).where(oauth_used_jtis.c.expires < int(now) - SKEW))
        inserted = conn.execute(db.dialect.insert_ignore(oauth_used_jtis).values(
            client_id=client_id, jti=jti, expires=exp + SKEW).returning(oauth_used_jtis.c.jti)).first()
    if inserted is None:  # RETURNING, not rowcount: psycopg reports -1 for ON CONFLICT DO NOTHING
        raise invalid_client("this client assertion (jti) has been used before")


def _keys(client: Client) -> RemoteKeySet:
    if client.jwks is not None:
        raw = orjson.dumps(client.jwks)
        return RemoteKeySet(client.client_id, "registered", fetch=lambda _url: raw, min_refresh=1e9)
    if not client.jwks_uri:
        raise OAuthError("invalid_client", "the client has no registered keys", 401)
    key = (client.client_id, client.jwks_uri)
    with _REMOTE_LOCK:
        keyset = _REMOTE.get(key)
        if keyset is None:
            if len(_REMOTE) > 1000:
                _REMOTE.clear()
            keyset = _REMOTE[key] = RemoteKeySet(client.client_id, client.jwks_uri,
                                                 fetch=lambda url: jwks_module.http_fetch(url),
                                                 ttl=CACHE_SECONDS, min_refresh=30.0)
    return keyset
