"""The three grants of ``/auth/token`` (RFC 6749 §4.1, §4.4, §6) and the scope narrowing they share.

- ``client_credentials``: a confidential client for itself (SMART Backend Services): ``system/``
  scopes and ``medcloud/admin``; no refresh token (RFC 6749 §4.4.3).
- ``authorization_code``: the code from ``/auth/authorize``, single use, bound to the client, the
  redirect URI and a PKCE S256 challenge (RFC 7636 §4.6).
- ``refresh_token``: only when ``offline_access`` or ``online_access`` was granted; each use
  rotates the token, and presenting a rotated one again revokes its whole family (RFC 9700 §4.14.2).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
import time
import uuid
from collections.abc import Iterable, Mapping
from typing import Any

from sqlalchemy import delete, select, update

from medcloud.config import Settings
from medcloud.errors import Invalid
from medcloud.security.oauth.errors import OAuthError, invalid_grant, invalid_request, invalid_scope
from medcloud.security.oauth.hashing import new_token, token_hash
from medcloud.security.oauth.store import Client, get_user
from medcloud.security.oauth.tokens import issue_access_token
from medcloud.security.scopes import ADMIN_SCOPE, ContextScope, Scope, parse_scopes
from medcloud.storage.security_schema import oauth_codes, oauth_refresh_tokens
from medcloud.storage.sql.database import Database

CODE_SECONDS = 60  # an authorization code is exchanged at once (RFC 6749 §4.1.2: at most 10 min)
OFFLINE_SECONDS = 30 * 24 * 3600  # refresh token lifetime with offline_access
ONLINE_SECONDS = 12 * 3600  # ... and with online_access
_VERIFIER = re.compile(r"[A-Za-z0-9\-._~]{43,128}")  # RFC 7636 §4.1
# Which scopes each kind of grant can carry: backend services act for themselves (system/), apps for a user.
SYSTEM_GRANT = (frozenset({"system"}), frozenset({ADMIN_SCOPE}))
USER_GRANT = (frozenset({"patient", "user"}),
              frozenset({"launch", "launch/patient", "fhirUser", "offline_access", "online_access"}))


def narrow(requested: str | None, allowed: Iterable[str], kind: tuple[frozenset[str], frozenset[str]]) -> str:
    """The granted scope string: each requested scope some allowed scope covers (all allowed if none asked).

    A requested resource scope is covered by an allowed one with the same context, the same type
    (or ``*``), a superset of its permissions and a subset of its ``?param`` restrictions.
    Uncovered scopes are dropped (RFC 6749 §3.3: the response's ``scope`` says what was granted).
    """
    contexts, names = kind
    try:
        allowed_set = parse_scopes(list(allowed), strict=False)
        wanted = parse_scopes(requested, strict=True) if requested is not None and requested.strip() else allowed_set
    except Invalid as e:
        raise invalid_scope(e.message) from e
    granted: list[str] = []
    useful = False  # a token needs a data scope (or admin): launch context alone grants nothing
    for s in wanted.scopes:
        if isinstance(s, ContextScope):
            ok = s.name in names and allowed_set.has(s.name)
        else:
            ok = s.context in contexts and any(_covers(a, s) for a in allowed_set.resource_scopes)
        if ok and str(s) not in granted:
            granted.append(str(s))
            useful = useful or isinstance(s, Scope) or s.name == ADMIN_SCOPE
    if not useful:
        raise invalid_scope("none of the requested scopes may be granted to this client")
    return " ".join(granted)


def _covers(a: Scope, s: Scope) -> bool:
    return (a.context == s.context and a.resource_type in ("*", s.resource_type)
            and set(s.permissions) <= set(a.permissions) and set(a.params) <= set(s.params))


def _require_grant(client: Client, grant_type: str) -> None:
    if grant_type not in client.grant_types:
        raise OAuthError("unauthorized_client", f"this client may not use the {grant_type} grant")


def client_credentials(db: Database, settings: Settings, client: Client, form: Mapping[str, str]) -> dict[str, Any]:
    _require_grant(client, "client_credentials")
    if not client.confidential:
        raise OAuthError("unauthorized_client", "client_credentials needs a confidential client")
    scope = narrow(form.get("scope"), client.scopes, SYSTEM_GRANT)
    return _response(db, settings, subject=client.client_id, client=client, scope=scope)


# -- authorization code -----------------------------------------------------------------------

def create_code(db: Database, *, client_id: str, username: str, redirect_uri: str, scope: str,
                patient: str | None, fhir_user: str | None, code_challenge: str, now: float | None = None) -> str:
    """Store a new authorization code (only its hash) and return it."""
    t = int(now if now is not None else time.time())
    code = new_token()
    with db.write() as conn:
        conn.execute(delete(oauth_codes).where(oauth_codes.c.expires < t))
        conn.execute(oauth_codes.insert().values(
            code_hash=token_hash(code), client_id=client_id, username=username, redirect_uri=redirect_uri,
            scope=scope, patient=patient, fhir_user=fhir_user, code_challenge=code_challenge,
            expires=t + CODE_SECONDS))
    return code


def s256(verifier: str) -> str:
    return base64.urlsafe_b64encode(hashlib.sha256(verifier.encode("ascii")).digest()).decode().rstrip("=")


def authorization_code(db: Database, settings: Settings, client: Client, form: Mapping[str, str],
                       now: float | None = None) -> dict[str, Any]:
    _require_grant(client, "authorization_code")
    code, redirect_uri, verifier = form.get("code"), form.get("redirect_uri"), form.get("code_verifier")
    if not code:
        raise invalid_request("code is required")
    if not redirect_uri:
        raise invalid_request("redirect_uri is required")
    if not verifier:
        raise invalid_request("code_verifier is required (PKCE, RFC 7636)")
    t = now if now is not None else time.time()
    with db.write() as conn:  # consumed even if a check below fails: a code is tried once
        row = conn.execute(select(oauth_codes).where(oauth_codes.c.code_hash == token_hash(code))).first()
        if row is not None and conn.execute(delete(oauth_codes).where(
                oauth_codes.c.code_hash == row.code_hash)).rowcount != 1:
            row = None
    if row is None or row.expires < t:
        raise invalid_grant("the authorization code is invalid, expired or already used")
    if row.client_id != client.client_id:
        raise invalid_grant("the authorization code was issued to another client")
    if row.redirect_uri != redirect_uri:
        raise invalid_grant("redirect_uri differs from the one of the authorization request")
    if not _VERIFIER.fullmatch(verifier) or not hmac.compare_digest(s256(verifier), row.code_challenge):
        raise invalid_grant("code_verifier does not match the code_challenge")
    user = get_user(db, row.username)
    if user is None or user.disabled:
        raise invalid_grant("the user who approved this request no longer exists")
    return _response(db, settings, subject=row.username, client=client, scope=row.scope, patient=row.patient,
                     fhir_user=row.fhir_user, refresh_family=uuid.uuid4().hex, now=t)


# -- refresh ----------------------------------------------------------------------------------

def refresh_token(db: Database, settings: Settings, client: Client, form: Mapping[str, str],
                  now: float | None = None) -> dict[str, Any]:
    _require_grant(client, "refresh_token")
    presented = form.get("refresh_token")
    if not presented:
        raise invalid_request("refresh_token is required")
    t = now if now is not None else time.time()
    h = token_hash(presented)
    with db.read() as conn:
        row = conn.execute(select(oauth_refresh_tokens).where(oauth_refresh_tokens.c.token_hash == h)).first()
    if row is None or row.client_id != client.client_id:
        raise invalid_grant("unknown refresh token")
    scope = row.scope
    if form.get("scope"):  # checked before the rotation: a refused request leaves the token usable
        scope = narrow(form["scope"], row.scope.split(), USER_GRANT)
    with db.write() as conn:
        fresh = conn.execute(update(oauth_refresh_tokens).where(
            oauth_refresh_tokens.c.token_hash == h, oauth_refresh_tokens.c.rotated.is_(False),
            oauth_refresh_tokens.c.revoked.is_(False), oauth_refresh_tokens.c.expires >= int(t))
            .values(rotated=True)).rowcount == 1
        if not fresh and conn.execute(select(oauth_refresh_tokens.c.rotated)
                                      .where(oauth_refresh_tokens.c.token_hash == h)).scalar():
            # Reuse: someone holds a copy of a token that was already exchanged. Which copy is
            # the thief's is unknown, so every token of the family stops working.
            conn.execute(update(oauth_refresh_tokens).where(oauth_refresh_tokens.c.family == row.family)
                         .values(revoked=True))
    if not fresh:
        raise invalid_grant("the refresh token has expired, been used or been revoked")
    return _response(db, settings, subject=row.subject, client=client, scope=scope, patient=row.patient,
                     fhir_user=row.fhir_user, refresh_family=row.family, now=t)


def revoke_refresh_family(db: Database, presented: str, client: Client | None) -> bool:
    """Revoke the family of a refresh token (RFC 7009); False when unknown or another client's."""
    with db.write() as conn:
        row = conn.execute(select(oauth_refresh_tokens.c.family, oauth_refresh_tokens.c.client_id)
                           .where(oauth_refresh_tokens.c.token_hash == token_hash(presented))).first()
        if row is None or (client is not None and row.client_id != client.client_id):
            return False
        conn.execute(update(oauth_refresh_tokens).where(oauth_refresh_tokens.c.family == row.family)
                     .values(revoked=True))
    return True


def refresh_info(db: Database, presented: str) -> dict[str, Any] | None:
    """The stored refresh token (active or not) for introspection; None when unknown."""
    with db.read() as conn:
        row = conn.execute(select(oauth_refresh_tokens)
                           .where(oauth_refresh_tokens.c.token_hash == token_hash(presented))).first()
    return row._asdict() if row is not None else None


def _response(db: Database, settings: Settings, *, subject: str, client: Client, scope: str,
              patient: str | None = None, fhir_user: str | None = None, refresh_family: str | None = None,
              now: float | None = None) -> dict[str, Any]:
    """The SMART token response (https://hl7.org/fhir/smart-app-launch/app-launch.html#response-5)."""
    t = now if now is not None else time.time()
    token, claims = issue_access_token(db, settings, subject=subject, client_id=client.client_id, scope=scope,
                                       patient=patient, fhir_user=fhir_user, now=t)
    out: dict[str, Any] = {"access_token": token, "token_type": "Bearer",
                           "expires_in": claims["exp"] - claims["iat"], "scope": scope}
    if patient:
        out["patient"] = patient
    granted = scope.split()
    if refresh_family is not None and ("offline_access" in granted or "online_access" in granted):
        refresh = new_token()
        ttl = OFFLINE_SECONDS if "offline_access" in granted else ONLINE_SECONDS
        with db.write() as conn:
            conn.execute(delete(oauth_refresh_tokens).where(oauth_refresh_tokens.c.expires < int(t) - ttl))
            conn.execute(oauth_refresh_tokens.insert().values(
                token_hash=token_hash(refresh), family=refresh_family, client_id=client.client_id,
                subject=subject, scope=scope, patient=patient, fhir_user=fhir_user, issued=int(t),
                expires=int(t) + ttl, rotated=False, revoked=False))
        out["refresh_token"] = refresh
    return out
