"""``/auth/authorize``: the authorization request of the code flow (RFC 6749 §4.1.1, RFC 7636, SMART v2).

A request whose ``client_id`` or ``redirect_uri`` is wrong is answered with an error page and
never redirected (RFC 6749 §4.1.2.1: the redirect target is not trusted). Every other error is
sent back to the app's redirect URI with ``error`` and the echoed ``state``.

The login + consent form is protected against cross-site request forgery with a double-submit
token: a random cookie, and a hidden form field holding the HMAC (server key in the database, so
any replica can check it) of that cookie and of the authorization request it was shown for.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import threading
import weakref
from collections.abc import Mapping
from dataclasses import dataclass
from urllib.parse import urlencode, urlsplit, urlunsplit

from sqlalchemy import select

from medcloud.config import Settings
from medcloud.security.oauth.errors import OAuthError
from medcloud.security.oauth.grants import USER_GRANT, narrow
from medcloud.security.oauth.store import Client, get_client
from medcloud.storage.schema import server_state
from medcloud.storage.sql.database import Database

PARAMS = ("response_type", "client_id", "redirect_uri", "scope", "state", "code_challenge",
          "code_challenge_method", "aud", "launch")
_CSRF_KEY = "oauth_csrf_key"


class PageError(Exception):
    """An error shown on our own page (the redirect URI cannot be trusted)."""

    def __init__(self, message: str, status: int = 400):
        super().__init__(message)
        self.message = message
        self.status = status


class RedirectError(Exception):
    """An error sent back to the app (RFC 6749 §4.1.2.1)."""

    def __init__(self, location: str):
        super().__init__(location)
        self.location = location


@dataclass(frozen=True, slots=True)
class AuthorizationRequest:
    client: Client
    redirect_uri: str
    scope: str  # what may be granted: requested, narrowed to the client's scopes
    state: str | None
    code_challenge: str
    params: tuple[tuple[str, str], ...]  # the request as received, for the form's hidden fields

    @property
    def scopes(self) -> list[str]:
        return self.scope.split()

    def wants_patient(self) -> bool:
        return any(s == "launch/patient" or s.startswith("patient/") for s in self.scopes)

    def redirect(self, **values: str) -> str:
        return with_query(self.redirect_uri, {**values, **({"state": self.state} if self.state else {})})


def parse_request(db: Database, settings: Settings, params: Mapping[str, str]) -> AuthorizationRequest:
    client = get_client(db, params.get("client_id", ""))
    if client is None:
        raise PageError("unknown client_id")
    if client.revoked:
        raise PageError("this application has been revoked")
    redirect_uri = params.get("redirect_uri", "")
    if redirect_uri not in client.redirect_uris:
        raise PageError("redirect_uri is not registered for this application")
    state = params.get("state") or None

    def fail(error: str, description: str) -> RedirectError:
        values = {"error": error, "error_description": description, **({"state": state} if state else {})}
        return RedirectError(with_query(redirect_uri, values))

    if params.get("response_type") != "code":
        raise fail("unsupported_response_type", "response_type must be code")
    if "authorization_code" not in client.grant_types:
        raise fail("unauthorized_client", "this application may not use the authorization code grant")
    if params.get("code_challenge_method") != "S256":
        raise fail("invalid_request", "PKCE with code_challenge_method=S256 is required (plain is refused)")
    challenge = params.get("code_challenge", "")
    if len(challenge) != 43 or not all(c.isalnum() or c in "-_" for c in challenge):
        raise fail("invalid_request", "code_challenge must be the base64url SHA-256 of the code_verifier")
    aud = params.get("aud")
    if aud is not None and aud.rstrip("/") != settings.fhir_audience.rstrip("/"):
        raise fail("invalid_request", "aud is not this server's FHIR base URL")
    try:
        scope = narrow(params.get("scope"), client.scopes, USER_GRANT)
    except OAuthError as e:
        raise fail(e.error, e.description) from e
    return AuthorizationRequest(client, redirect_uri, scope, state, challenge,
                                tuple((k, params[k]) for k in PARAMS if k in params))


def with_query(uri: str, values: Mapping[str, str]) -> str:
    parts = urlsplit(uri)
    query = "&".join(q for q in (parts.query, urlencode(values)) if q)
    return urlunsplit((parts.scheme, parts.netloc, parts.path, query, ""))


# -- CSRF ---------------------------------------------------------------------------------------

_KEYS: weakref.WeakKeyDictionary[Database, bytes] = weakref.WeakKeyDictionary()
_KEYS_LOCK = threading.Lock()


def new_cookie() -> str:
    return os.urandom(24).hex()


def csrf_token(db: Database, cookie: str, request: AuthorizationRequest) -> str:
    material = cookie.encode() + b"\0" + repr(request.params).encode()
    return hmac.new(_key(db), material, hashlib.sha256).hexdigest()


def csrf_ok(db: Database, cookie: str | None, token: str | None, request: AuthorizationRequest) -> bool:
    if not cookie or not token or len(cookie) != 48:
        return False
    return hmac.compare_digest(csrf_token(db, cookie, request), token)


def _key(db: Database) -> bytes:
    with _KEYS_LOCK:
        key = _KEYS.get(db)
    if key is None:
        with db.write() as conn:
            conn.execute(db.dialect.insert_ignore(server_state).values(key=_CSRF_KEY, value=os.urandom(32)))
            key = bytes(conn.execute(select(server_state.c.value).where(server_state.c.key == _CSRF_KEY)).scalar_one())
        with _KEYS_LOCK:
            _KEYS[db] = key
    return key
