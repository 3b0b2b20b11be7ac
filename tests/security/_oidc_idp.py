"""A tiny OpenID Connect provider for tests: discovery + JWKS over real HTTP, keys that rotate.

Serves ``<issuer>/.well-known/openid-configuration`` and ``<issuer>/certs`` from a thread on a
free loopback port, counts the key-set fetches, and signs tokens the way Keycloak and Entra ID
shape them. ``jwks_override`` replaces the key-set body (malformed key sets).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import threading
import time
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

_RSA_KEYS: list[rsa.RSAPrivateKey] = []
_next = iter(range(1 << 30))


def rsa_key() -> rsa.RSAPrivateKey:
    """A 2048-bit RSA key, never the same as the previous seven (generation is slow: a pool of eight)."""
    i = next(_next) % 8
    if i == len(_RSA_KEYS):
        _RSA_KEYS.append(rsa.generate_private_key(public_exponent=65537, key_size=2048))
    return _RSA_KEYS[i]


def public_jwk(key: Any, kid: str, alg: str | None = None) -> dict[str, Any]:
    algo = jwt.algorithms.RSAAlgorithm if isinstance(key, rsa.RSAPrivateKey) else jwt.algorithms.ECAlgorithm
    jwk = json.loads(algo.to_jwk(key.public_key()))
    jwk.update({"kid": kid, "use": "sig"})
    if alg:
        jwk["alg"] = alg
    return jwk


class IdP:
    """One issuer. ``keys`` maps kid -> (private key, alg); only keys in ``published`` are in the JWKS."""

    def __init__(self, path: str = "/realms/medcloud") -> None:
        self.keys: dict[str, tuple[Any, str]] = {}
        self.published: list[str] = []
        self.jwks_fetches = 0
        self.discovery_fetches = 0
        self.jwks_override: bytes | None = None
        self.discovery_issuer: str | None = None  # a different "issuer" in discovery (mismatch test)
        self.fail = False  # answer 500 to everything (IdP outage)
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self._server.daemon_threads = True
        self.base = f"http://127.0.0.1:{self._server.server_address[1]}"
        self.issuer = self.base + path
        self.jwks_uri = self.issuer + "/certs"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    def add_key(self, kid: str, alg: str = "RS256", *, publish: bool = True) -> Any:
        key = ec.generate_private_key(ec.SECP256R1() if alg == "ES256" else ec.SECP384R1()) \
            if alg.startswith("ES") else rsa_key()
        self.keys[kid] = (key, alg)
        if publish:
            self.published.append(kid)
        return key

    def rotate(self, new_kid: str, alg: str = "RS256") -> None:
        """The IdP publishes a new key and retires every old one."""
        self.add_key(new_kid, alg, publish=False)
        self.published = [new_kid]

    def jwks(self) -> dict[str, Any]:
        return {"keys": [public_jwk(self.keys[k][0], k, self.keys[k][1]) for k in self.published]}

    def token(self, kid: str | None = None, *, lifetime: int = 300, headers: dict[str, Any] | None = None,
              **claims: Any) -> str:
        kid = kid or self.published[0]
        key, alg = self.keys[kid]
        now = int(time.time())
        body = {"iss": self.issuer, "iat": now, "nbf": now, "exp": now + lifetime, "jti": uuid.uuid4().hex}
        body.update(claims)
        body = {k: v for k, v in body.items() if v is not None}
        return jwt.encode(body, key, algorithm=alg, headers={"kid": kid, **(headers or {})})

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        idp = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 - http.server's naming
                path = idp.base + self.path
                if idp.fail:
                    return self._send(500, b"down")
                if path == idp.issuer + "/.well-known/openid-configuration":
                    idp.discovery_fetches += 1
                    doc = {"issuer": idp.discovery_issuer or idp.issuer, "jwks_uri": idp.jwks_uri}
                    return self._send(200, json.dumps(doc).encode())
                if path == idp.jwks_uri:
                    idp.jwks_fetches += 1
                    return self._send(200, idp.jwks_override or json.dumps(idp.jwks()).encode())
                return self._send(404, b"not found")

            def _send(self, status: int, body: bytes) -> None:
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - keep test output quiet
                pass

        return Handler


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def unsigned_token(claims: dict[str, Any]) -> str:
    """``alg: none`` (RFC 7519 §6): no signature at all."""
    return f"{b64(json.dumps({'alg': 'none', 'typ': 'JWT'}).encode())}.{b64(json.dumps(claims).encode())}."


def hs256_with_public_key(claims: dict[str, Any], public_key: Any, kid: str) -> str:
    """The key-confusion attack: HMAC-SHA256 keyed with the issuer's *public* key (PEM), which anyone has."""
    pem = public_key.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    signing_input = f"{b64(json.dumps({'alg': 'HS256', 'typ': 'JWT', 'kid': kid}).encode())}." \
                    f"{b64(json.dumps(claims).encode())}"
    sig = hmac.new(pem, signing_input.encode(), hashlib.sha256).digest()
    return f"{signing_input}.{b64(sig)}"
