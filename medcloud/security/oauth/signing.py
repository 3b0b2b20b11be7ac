"""The server's token signing keys (ES256), kept in the database so every replica signs and verifies alike.

The key with the highest ``generation`` is current and signs new access tokens. The first key is
created on first use by insert-ignore of generation 1 followed by a read, so replicas starting at
the same moment end up with the same key. ``rotate`` adds generation n+1; the keys it replaces
stay published (``/auth/jwks``) and accepted until every token they may have signed has expired:
``retired + CACHE_SECONDS + access_token_ttl + LEEWAY`` (a replica may keep signing with the old
key for up to CACHE_SECONDS after the rotation, until its cache expires).

Each process caches the keys for at most CACHE_SECONDS (safe to lose), and reloads early, at most
once a second, when a token names a ``kid`` it does not know (a key created by another replica).
"""

from __future__ import annotations

import base64
import hashlib
import threading
import time
import weakref
from dataclasses import dataclass, field
from typing import Any

import orjson
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from jwt.algorithms import ECAlgorithm
from sqlalchemy import delete, func, select, update

from medcloud.storage.security_schema import oauth_signing_keys
from medcloud.storage.sql.database import Database

ALG = "ES256"
CACHE_SECONDS = 30.0
LEEWAY = 60  # seconds of clock skew a verifier tolerates
_MIN_RELOAD = 1.0


@dataclass(frozen=True, slots=True)
class SigningKey:
    generation: int
    kid: str
    private_key: ec.EllipticCurvePrivateKey


@dataclass
class _Ring:
    loaded_at: float = -1e18
    current: SigningKey | None = None
    public: dict[str, tuple[ec.EllipticCurvePublicKey, dict[str, Any], int | None]] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock)


_RINGS: weakref.WeakKeyDictionary[Database, _Ring] = weakref.WeakKeyDictionary()
_RINGS_LOCK = threading.Lock()


def current_key(db: Database) -> SigningKey:
    """The key that signs new tokens, created on first use."""
    ring = _ring(db)
    with ring.lock:
        if ring.current is None or time.monotonic() - ring.loaded_at > CACHE_SECONDS:
            _load(db, ring)
        if ring.current is None:
            _create_first(db)
            _load(db, ring)
        assert ring.current is not None
        return ring.current


def public_key(db: Database, kid: str, now: float) -> ec.EllipticCurvePublicKey | None:
    """The public key ``kid`` if it may still verify tokens at ``now``; None otherwise."""
    ring = _ring(db)
    with ring.lock:
        age = time.monotonic() - ring.loaded_at
        if age > CACHE_SECONDS or (kid not in ring.public and age > _MIN_RELOAD):
            _load(db, ring)
        hit = ring.public.get(kid)
    if hit is None or (hit[2] is not None and hit[2] < now):
        return None
    return hit[0]


def jwks(db: Database) -> dict[str, Any]:
    """The JWK Set of every key that may still verify a token (RFC 7517 §5)."""
    current_key(db)
    now = time.time()
    with db.read() as conn:
        rows = conn.execute(select(oauth_signing_keys.c.public_jwk, oauth_signing_keys.c.expires)
                            .order_by(oauth_signing_keys.c.generation.desc())).all()
    return {"keys": [orjson.loads(r.public_jwk) for r in rows if r.expires is None or r.expires >= now]}


def rotate(db: Database, *, access_token_ttl: int, now: float | None = None) -> SigningKey:
    """Make a new key current; older keys verify until their tokens have expired, then are deleted."""
    t = int(now if now is not None else time.time())
    key = ec.generate_private_key(ec.SECP256R1())
    with db.write() as conn:
        db.dialect.lock_key(conn, "oauth_signing_keys")
        top = conn.execute(select(func.max(oauth_signing_keys.c.generation))).scalar() or 0
        conn.execute(delete(oauth_signing_keys).where(oauth_signing_keys.c.expires < t))
        conn.execute(update(oauth_signing_keys).where(oauth_signing_keys.c.retired.is_(None)).values(
            retired=t, expires=t + int(CACHE_SECONDS) + access_token_ttl + LEEWAY))
        row = _row(top + 1, key, t)
        conn.execute(oauth_signing_keys.insert().values(**row))
    ring = _ring(db)
    with ring.lock:
        ring.loaded_at = -1e18  # this process switches at once; others within CACHE_SECONDS
    return SigningKey(top + 1, row["kid"], key)


def _create_first(db: Database) -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    with db.write() as conn:
        conn.execute(db.dialect.insert_ignore(oauth_signing_keys).values(**_row(1, key, int(time.time()))))


def _row(generation: int, key: ec.EllipticCurvePrivateKey, created: int) -> dict[str, Any]:
    jwk: dict[str, Any] = ECAlgorithm.to_jwk(key.public_key(), as_dict=True)
    kid = _thumbprint(jwk)
    jwk.update(kid=kid, alg=ALG, use="sig")
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                            serialization.NoEncryption())
    return {"generation": generation, "kid": kid, "alg": ALG, "private_pem": pem,
            "public_jwk": orjson.dumps(jwk).decode(), "created": created, "retired": None, "expires": None}


def _thumbprint(jwk: dict[str, Any]) -> str:
    """RFC 7638 JWK thumbprint (SHA-256) of an EC key: a kid that names the key itself."""
    members = orjson.dumps({k: jwk[k] for k in ("crv", "kty", "x", "y")}, option=orjson.OPT_SORT_KEYS)
    return base64.urlsafe_b64encode(hashlib.sha256(members).digest()).decode().rstrip("=")


def _load(db: Database, ring: _Ring) -> None:
    with db.read() as conn:
        rows = conn.execute(select(oauth_signing_keys).order_by(oauth_signing_keys.c.generation.desc())).all()
    ring.loaded_at = time.monotonic()
    ring.current = None
    ring.public = {}
    for r in rows:
        private = serialization.load_pem_private_key(bytes(r.private_pem), password=None)
        if not isinstance(private, ec.EllipticCurvePrivateKey):
            continue
        if ring.current is None:
            ring.current = SigningKey(r.generation, r.kid, private)
        ring.public[r.kid] = (private.public_key(), orjson.loads(r.public_jwk), r.expires)


def _ring(db: Database) -> _Ring:
    with _RINGS_LOCK:
        ring = _RINGS.get(db)
        if ring is None:
            ring = _RINGS[db] = _Ring()
        return ring
