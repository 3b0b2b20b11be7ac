"""Who is calling the token, introspection and revocation endpoints (RFC 6749 §2.3, RFC 7523 §2.2).

Exactly one method per request: HTTP Basic (``client_secret_basic``), ``client_secret`` in the
form (``client_secret_post``), a signed ``client_assertion`` (``private_key_jwt``), or only a
``client_id`` for a public app (``none``, authorization code with PKCE and refresh only). The
method must fit the one the client was registered with. An unknown client and a wrong secret
get the same answer, and both cost one scrypt, so neither the answer nor its timing tells them apart.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Mapping
from functools import cache
from urllib.parse import unquote_plus

import jwt
from jwt.exceptions import PyJWTError

from medcloud.security.oauth.assertions import ASSERTION_TYPE, verify_client_assertion
from medcloud.security.oauth.errors import OAuthError, invalid_client, invalid_request
from medcloud.security.oauth.hashing import hash_secret, verify_secret
from medcloud.security.oauth.store import SECRET_METHODS, Client, get_client
from medcloud.storage.sql.database import Database

_FAILED = "client authentication failed"


@cache
def _dummy_hash() -> str:
    return hash_secret("not a secret: compared against when the client is unknown")


def authenticate_client(db: Database, form: Mapping[str, str], authorization: str | None, *,
                        token_url: str, allow_public: bool) -> Client:
    """The authenticated, non-revoked client of a request; raises OAuthError (``invalid_client`` 401)."""
    basic = _basic(authorization)
    has_secret = "client_secret" in form
    has_assertion = "client_assertion" in form or "client_assertion_type" in form
    if sum((basic is not None, has_secret, has_assertion)) > 1:
        raise invalid_request("use exactly one client authentication method")
    if basic is not None:
        client = _by_secret(db, basic[0], basic[1], form.get("client_id"))
    elif has_secret:
        client = _by_secret(db, form.get("client_id", ""), form["client_secret"], None)
    elif has_assertion:
        client = _by_assertion(db, form, token_url)
    else:
        client = _public(db, form.get("client_id", ""), allow_public)
    if client.revoked:
        raise invalid_client("this client has been revoked")
    return client


def _basic(authorization: str | None) -> tuple[str, str] | None:
    if not authorization or authorization[:6].lower() != "basic ":
        if authorization and authorization.split(" ", 1)[0].lower() not in ("basic", "bearer"):
            raise invalid_client("unsupported Authorization scheme; use Basic")
        return None
    try:
        decoded = base64.b64decode(authorization[6:].strip(), validate=True).decode("utf-8")
    except (binascii.Error, UnicodeDecodeError) as e:
        raise invalid_client("malformed Basic credentials") from e
    client_id, sep, secret = decoded.partition(":")
    if not sep:
        raise invalid_client("malformed Basic credentials")
    return unquote_plus(client_id), unquote_plus(secret)  # RFC 6749 §2.3.1: form-encoded first


def _by_secret(db: Database, client_id: str, secret: str, form_client_id: str | None) -> Client:
    if form_client_id is not None and form_client_id != client_id:
        raise invalid_request("client_id in the form differs from the authenticated client")
    client = get_client(db, client_id)
    if client is None or client.auth_method not in SECRET_METHODS:
        verify_secret(secret, _dummy_hash())
        raise invalid_client(_FAILED)
    if not verify_secret(secret, client.secret_hash):
        raise invalid_client(_FAILED)
    return client


def _by_assertion(db: Database, form: Mapping[str, str], token_url: str) -> Client:
    if form.get("client_assertion_type") != ASSERTION_TYPE:
        raise invalid_client(f"client_assertion_type must be {ASSERTION_TYPE}")
    assertion = form.get("client_assertion", "")
    try:
        issuer = jwt.decode(assertion, options={"verify_signature": False}).get("iss")
    except (PyJWTError, ValueError, TypeError, AttributeError) as e:
        raise invalid_client("malformed client assertion") from e
    if not isinstance(issuer, str):
        raise invalid_client("the client assertion has no iss")
    if "client_id" in form and form["client_id"] != issuer:
        raise invalid_client("client_id differs from the client assertion's iss")
    client = get_client(db, issuer)
    if client is None or client.auth_method != "private_key_jwt":
        raise invalid_client(_FAILED)
    if client.revoked:
        raise invalid_client("this client has been revoked")
    verify_client_assertion(db, client, assertion, token_url=token_url)
    return client


def _public(db: Database, client_id: str, allow_public: bool) -> Client:
    if not client_id:
        raise invalid_client("client authentication is required")
    client = get_client(db, client_id)
    if client is None:
        raise invalid_client(_FAILED)
    if client.auth_method != "none":
        raise invalid_client(f"this client must authenticate ({client.auth_method})")
    if not allow_public:
        raise OAuthError("invalid_client", "public clients cannot use this endpoint", 401)
    return client
