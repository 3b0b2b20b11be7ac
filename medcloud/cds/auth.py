"""Who is calling a CDS service: the CDS client's JWT, verified per CDS Hooks 2.0 "Security".

The EHR signs a short-lived JWT with its private key and sends it as ``Authorization: Bearer``.
We accept it only when:

- ``iss`` is a configured client (``Settings.cds_clients``) allowed to call this service;
- the header's ``alg`` is ES384 or RS384 (the spec's required pair; RS256/ES256 are not offered,
  ``none`` and HMAC never: a shared secret would let anyone who knows it sign);
- the signature verifies with the client's configured keys (inline JWK Set or ``jwks_url``), or
  with the set at the header's ``jku`` when that URL is allow-listed for this issuer;
- ``aud`` is this service's URL (``{public_base}/cds-services/{id}``), ``exp`` is in the future,
  ``iat`` is not in the future and at most ``cds_jwt_max_lifetime`` before ``exp``;
- ``jti`` was never seen from this issuer: accepted ids go to ``cds_jtis`` until the token
  expires, so a replay is refused by every replica (the primary key decides, not process memory).
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import jwt
from jwt import PyJWK
from sqlalchemy import delete
from sqlalchemy.exc import IntegrityError

from medcloud.config import CdsClient, Settings
from medcloud.errors import Forbidden, Unauthorized
from medcloud.security.jwks import Fetch, KeySetError, RemoteKeySet, parse_jwks
from medcloud.storage.cds_schema import cds_jtis
from medcloud.storage.sql.database import Database

ALGORITHMS = ("ES384", "RS384")
LEEWAY = 30  # seconds of clock skew tolerated on exp/iat


class InvalidClientToken(Unauthorized):
    """The CDS client's JWT is missing or not acceptable; the message says why."""


@dataclass(frozen=True)
class CdsCaller:
    iss: str
    sub: str | None
    jti: str
    tenant: str | None = None


class ClientVerifier:
    def __init__(self, settings: Settings, db: Database, *, fetch: Fetch | None = None,
                 clock: Callable[[], float] = time.time):
        self.clients = {c.iss: c for c in settings.cds_clients}
        self.base = settings.public_base + "/cds-services"
        self.max_lifetime = settings.cds_jwt_max_lifetime
        self.db = db
        self.clock = clock
        self._fetch = fetch
        self._sets: dict[str, RemoteKeySet] = {}
        self._lock = threading.Lock()

    def audience(self, service_id: str | None) -> str:
        return f"{self.base}/{service_id}" if service_id else self.base

    def verify(self, authorization: str | None, service_id: str | None) -> CdsCaller:
        """The caller of ``service_id`` (None: the discovery endpoint); raises InvalidClientToken/Forbidden."""
        if not authorization or not authorization.startswith("Bearer "):
            raise InvalidClientToken("a CDS client JWT is required (Authorization: Bearer <JWT>)")
        token = authorization[len("Bearer "):].strip()
        try:
            header = jwt.get_unverified_header(token)
            claims = jwt.decode(token, options={"verify_signature": False})
        except jwt.PyJWTError as e:
            raise InvalidClientToken(f"not a JWT: {e}") from e
        alg = header.get("alg")
        if alg not in ALGORITHMS:
            raise InvalidClientToken(f"JWT alg {alg!r} is not accepted; use one of {', '.join(ALGORITHMS)}")
        iss = claims.get("iss")
        client = self.clients.get(iss) if isinstance(iss, str) else None
        if client is None:
            raise InvalidClientToken(f"unknown CDS client (iss {iss!r})")
        keys = self._keys(client, header)
        audience = self.audience(service_id)
        verified: dict[str, Any] | None = None
        last: Exception | None = None
        for key in keys:
            try:
                verified = jwt.decode(token, key=key.key, algorithms=[alg], audience=audience, issuer=client.iss,
                                      leeway=LEEWAY, options={"require": ["iss", "aud", "exp", "iat", "jti"]})
                break
            except jwt.InvalidSignatureError as e:
                last = e
            except jwt.PyJWTError as e:
                raise InvalidClientToken(f"JWT refused: {e}") from e
        if verified is None:
            raise InvalidClientToken("JWT signature does not verify with the client's keys") from last
        now = self.clock()
        exp, iat = float(verified["exp"]), float(verified["iat"])
        if iat > now + LEEWAY:
            raise InvalidClientToken("JWT iat is in the future")
        if exp - iat > self.max_lifetime:
            raise InvalidClientToken(f"JWT lives {int(exp - iat)} s; at most {self.max_lifetime} s are accepted")
        if service_id is not None and not ("*" in client.services or service_id in client.services):
            raise Forbidden(f"client {client.iss} may not call the {service_id} service")
        jti = verified["jti"]
        if not isinstance(jti, str) or not jti or len(jti) > 256:
            raise InvalidClientToken("JWT jti must be a non-empty string of at most 256 characters")
        self._remember(client.iss, jti, exp)
        sub, tenant = verified.get("sub"), verified.get("tenant")
        return CdsCaller(client.iss, sub if isinstance(sub, str) else None, jti,
                         tenant if isinstance(tenant, str) else None)

    def _keys(self, client: CdsClient, header: dict[str, Any]) -> list[PyJWK]:
        kid, alg = header.get("kid"), str(header["alg"])
        jku = header.get("jku")
        try:
            if jku is not None:
                if jku not in client.jku_allow:
                    raise InvalidClientToken(f"jku {jku!r} is not allow-listed for client {client.iss}")
                return self._remote(jku).keys_for(kid, alg)
            if client.jwks is not None:
                keys = [k.jwk for k in parse_jwks(json.dumps(client.jwks).encode())
                        if (kid is None or k.kid == kid) and k.fits(alg)]
                if not keys:
                    raise InvalidClientToken("no configured key of this client matches the JWT's kid and alg")
                return keys
            if client.jwks_url:
                return self._remote(client.jwks_url).keys_for(kid, alg)
        except KeySetError as e:
            raise InvalidClientToken(str(e)) from e
        raise InvalidClientToken(f"client {client.iss} has no keys configured (jwks or jwks_url)")

    def _remote(self, url: str) -> RemoteKeySet:
        with self._lock:
            found = self._sets.get(url)
            if found is None:
                found = self._sets[url] = RemoteKeySet(url, url, fetch=self._fetch)
            return found

    def _remember(self, iss: str, jti: str, exp: float) -> None:
        now_ms = int(self.clock() * 1000)
        try:
            with self.db.write() as conn:
                conn.execute(delete(cds_jtis).where(cds_jtis.c.expires < now_ms - LEEWAY * 1000))
                conn.execute(cds_jtis.insert().values(iss=iss, jti=jti, expires=int((exp + LEEWAY) * 1000)))
        except IntegrityError as e:
            raise InvalidClientToken("JWT jti was already used (replay refused)") from e
