"""The signing keys of an external OpenID Connect issuer, fetched over HTTP and cached in-process.

Keys are looked up by the token's ``kid``. A key set is trusted for ``ttl`` seconds; a token
signed with a ``kid`` the cache does not know triggers one early refetch, at most once per
``min_refresh`` seconds, so an IdP's key rotation is picked up within a request while a flood of
tokens with invented ``kid`` values cannot turn medcloud into a fetch amplifier. The cache holds
only public keys that can be fetched again: losing it (restart, another replica) costs one fetch.

OpenID Connect Discovery 1.0 §4 (``/.well-known/openid-configuration``), RFC 7517 (JWK Set).
"""

from __future__ import annotations

import ipaddress
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from urllib.parse import urlsplit

import orjson
from jwt import PyJWK
from jwt.exceptions import PyJWTError

log = logging.getLogger("medcloud.security")

MAX_DOCUMENT_BYTES = 512 * 1024  # a key set or discovery document larger than this is refused
FETCH_TIMEOUT = 5.0  # seconds

# Which JWK (kty, crv) can verify which JWS alg (RFC 7518 §3.1). Symmetric keys (``oct``) never:
# an IdP's key set is public, so a shared secret published there would let anyone sign.
_KEY_TYPE = {
    "RS256": ("RSA", None), "RS384": ("RSA", None), "RS512": ("RSA", None),
    "PS256": ("RSA", None), "PS384": ("RSA", None), "PS512": ("RSA", None),
    "ES256": ("EC", "P-256"), "ES384": ("EC", "P-384"), "ES512": ("EC", "P-521"),
    "EdDSA": ("OKP", "Ed25519"),
}
ASYMMETRIC_ALGORITHMS = frozenset(_KEY_TYPE)

Fetch = Callable[[str], bytes]  # GET url -> body; raises on any failure


class KeySetError(Exception):
    """The issuer's keys cannot be obtained or used; the message is safe to show to the caller."""


@dataclass(frozen=True, slots=True)
class _Key:
    kid: str | None
    kty: str
    crv: str | None
    alg: str | None
    jwk: PyJWK

    def fits(self, alg: str) -> bool:
        kty, crv = _KEY_TYPE.get(alg, ("", None))
        return self.kty == kty and (crv is None or self.crv == crv) and self.alg in (None, alg)


class RemoteKeySet:
    """The JWK Set of one issuer: from ``jwks_uri``, or found through OIDC discovery when it is None."""

    def __init__(self, issuer: str, jwks_uri: str | None = None, *, fetch: Fetch | None = None,
                 clock: Callable[[], float] = time.monotonic, ttl: float = 600.0, min_refresh: float = 30.0):
        self.issuer = issuer
        self.jwks_uri = jwks_uri
        self._fetch = fetch or http_fetch
        self._clock = clock
        self._ttl = ttl
        self._min_refresh = min_refresh
        self._keys: list[_Key] | None = None
        self._fetched_at = 0.0
        self._attempted_at: float | None = None
        self._lock = threading.Lock()

    def keys_for(self, kid: str | None, alg: str) -> list[PyJWK]:
        """The candidate keys for a token's ``kid`` and ``alg``; raises KeySetError when there is none."""
        with self._lock:
            now = self._clock()
            if self._keys is None or now - self._fetched_at >= self._ttl:
                self._refresh(now, force=self._keys is None)
            found = self._match(kid, alg)
            if not found and self._may_refetch(now):
                self._refresh(now, force=True)  # the IdP may have rotated its keys since we looked
                found = self._match(kid, alg)
        if not found:
            raise KeySetError("the token's signing key is not in the issuer's key set")
        return found

    def _may_refetch(self, now: float) -> bool:
        return self._attempted_at is None or now - self._attempted_at >= self._min_refresh

    def _match(self, kid: str | None, alg: str) -> list[PyJWK]:
        keys = self._keys or []
        return [k.jwk for k in keys if (kid is None or k.kid == kid) and k.fits(alg)]

    def _refresh(self, now: float, *, force: bool) -> None:
        if not force and not self._may_refetch(now):
            return
        self._attempted_at = now
        try:
            self._keys = parse_jwks(self._fetch(self._resolve_jwks_uri()))
            self._fetched_at = now
        except KeySetError as e:
            if self._keys is None:
                raise
            # Keep serving the keys we have: an IdP outage must not lock everyone out at once.
            log.warning("could not refresh the key set of %s, keeping the cached keys: %s", self.issuer, e)
        except Exception as e:  # noqa: BLE001 - network errors of any kind: same treatment
            if self._keys is None:
                log.warning("could not fetch the key set of %s: %s", self.issuer, e)
                raise KeySetError("the issuer's key set could not be fetched") from e
            log.warning("could not refresh the key set of %s, keeping the cached keys: %s", self.issuer, e)

    def _resolve_jwks_uri(self) -> str:
        if self.jwks_uri:
            return self.jwks_uri
        url = self.issuer.rstrip("/") + "/.well-known/openid-configuration"
        try:
            doc = orjson.loads(self._fetch(url))
        except orjson.JSONDecodeError as e:
            raise KeySetError("the issuer's discovery document is not JSON") from e
        if not isinstance(doc, dict) or not isinstance(doc.get("jwks_uri"), str):
            raise KeySetError("the issuer's discovery document has no jwks_uri")
        if doc.get("issuer") != self.issuer:  # OIDC Discovery §4.3: must match exactly
            raise KeySetError("the discovery document names another issuer")
        return str(doc["jwks_uri"])


def parse_jwks(raw: bytes) -> list[_Key]:
    """The usable signature keys of a JWK Set document; raises KeySetError when there are none."""
    try:
        doc = orjson.loads(raw)
    except orjson.JSONDecodeError as e:
        raise KeySetError("the issuer's key set is not JSON") from e
    members = doc.get("keys") if isinstance(doc, dict) else None
    if not isinstance(members, list):
        raise KeySetError("the issuer's key set has no keys array")
    keys = []
    for m in members:
        if not isinstance(m, dict) or m.get("kty") not in ("RSA", "EC", "OKP") or m.get("use", "sig") != "sig":
            continue
        alg = m.get("alg")
        if alg is not None and alg not in ASYMMETRIC_ALGORITHMS:
            continue
        try:
            jwk = PyJWK(m)
        except (PyJWTError, ValueError, TypeError, KeyError):
            continue  # one broken member must not take the others down (RFC 7517 §5)
        kid = m.get("kid")
        crv = m.get("crv")
        keys.append(_Key(kid if isinstance(kid, str) else None, str(m["kty"]),
                         crv if isinstance(crv, str) else None, alg, jwk))
    if not keys:
        raise KeySetError("the issuer's key set has no usable signature keys")
    return keys


def http_fetch(url: str) -> bytes:
    """GET ``url`` (https, or http to a loopback address), at most MAX_DOCUMENT_BYTES."""
    import httpx

    check_url(url)
    with httpx.Client(timeout=FETCH_TIMEOUT, follow_redirects=False) as client, client.stream("GET", url) as r:
        if r.status_code != 200:
            raise KeySetError(f"the issuer's keys could not be fetched (HTTP {r.status_code})")
        chunks: list[bytes] = []
        size = 0
        for chunk in r.iter_bytes():
            size += len(chunk)
            if size > MAX_DOCUMENT_BYTES:
                raise KeySetError("the issuer's document is too large")
            chunks.append(chunk)
    return b"".join(chunks)


def check_url(url: str) -> None:
    """Keys fetched in clear text could be swapped on the way: only https, except to this machine."""
    parts = urlsplit(url)
    if parts.scheme == "https":
        return
    if parts.scheme == "http" and _is_loopback(parts.hostname or ""):
        return
    raise KeySetError("key sets are fetched over https only (http is allowed to loopback addresses)")


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False

