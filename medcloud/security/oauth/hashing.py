"""Hashes for stored secrets: scrypt for client secrets and passwords, SHA-256 for one-use tokens.

Client secrets and user passwords are hashed with scrypt (RFC 7914) and a per-secret random salt,
in the self-describing form ``scrypt$<log2 n>$<r>$<p>$<salt b64>$<hash b64>`` so the cost can be
raised later without invalidating stored hashes. argon2 (the issue's first choice) is not
installed; scrypt is in the standard library and equally memory-hard.

Authorization codes and refresh tokens are 256-bit random values: nothing to brute-force, so a
plain SHA-256 (indexable, as the row's key) is enough to keep them unusable from a database dump.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
import secrets

_LOG_N, _R, _P = 14, 8, 1  # ~16 MiB and ~50 ms per hash
_MAX_LOG_N = 20


def hash_secret(secret: str) -> str:
    salt = os.urandom(16)
    digest = _scrypt(secret, salt, _LOG_N, _R, _P)
    return f"scrypt${_LOG_N}${_R}${_P}${_b64(salt)}${_b64(digest)}"


def verify_secret(secret: str, stored: str | None) -> bool:
    """Constant-time check of ``secret`` against a ``hash_secret`` value; False for anything malformed."""
    if not stored or not isinstance(secret, str):
        return False
    parts = stored.split("$")
    if len(parts) != 6 or parts[0] != "scrypt":
        return False
    try:
        log_n, r, p = int(parts[1]), int(parts[2]), int(parts[3])
        salt, expected = _unb64(parts[4]), _unb64(parts[5])
    except ValueError:
        return False
    if not (1 <= log_n <= _MAX_LOG_N and 1 <= r <= 32 and 1 <= p <= 16):
        return False
    return hmac.compare_digest(_scrypt(secret, salt, log_n, r, p), expected)


def token_hash(value: str) -> str:
    """The stored key of a random one-use value (authorization code, refresh token)."""
    return hashlib.sha256(value.encode("utf-8", "surrogatepass")).hexdigest()


def new_token(nbytes: int = 32) -> str:
    return secrets.token_urlsafe(nbytes)


def _scrypt(secret: str, salt: bytes, log_n: int, r: int, p: int) -> bytes:
    n = 1 << log_n
    return hashlib.scrypt(secret.encode("utf-8", "surrogatepass"), salt=salt, n=n, r=r, p=p,
                          maxmem=256 * n * r + 1024 * 1024, dklen=32)


def _b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
