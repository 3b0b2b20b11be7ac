"""The client and user registry (tables ``oauth_clients``, ``oauth_users``).

Clients are registered by an administrator (``medcloud admin create-client``), never by the
public: there is no dynamic registration endpoint. A client's ``scopes`` are the most any token
issued to it may carry; each token request is narrowed to them (``grants.narrow``).
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import orjson
from sqlalchemy import select, update
from sqlalchemy.engine import Row

from medcloud.errors import Conflict, Invalid, NotFound
from medcloud.security.jwks import KeySetError, check_url, parse_jwks
from medcloud.security.oauth.hashing import hash_secret, new_token
from medcloud.security.scopes import parse_scopes
from medcloud.storage.security_schema import oauth_clients, oauth_refresh_tokens, oauth_users
from medcloud.storage.sql.database import Database

SECRET_METHODS = ("client_secret_basic", "client_secret_post")
AUTH_METHODS = (*SECRET_METHODS, "private_key_jwt", "none")
GRANT_TYPES = ("client_credentials", "authorization_code", "refresh_token")
_MAX_NAME = 256


@dataclass(frozen=True, slots=True)
class Client:
    client_id: str
    name: str
    auth_method: str
    scopes: tuple[str, ...]
    grant_types: tuple[str, ...]
    redirect_uris: tuple[str, ...] = ()
    jwks: dict[str, Any] | None = None
    jwks_uri: str | None = None
    revoked: bool = False
    created: int = 0
    rotated: int | None = None
    secret_hash: str | None = None

    @property
    def confidential(self) -> bool:
        return self.auth_method != "none"


@dataclass(frozen=True, slots=True)
class User:
    username: str
    password_hash: str
    fhir_user: str | None = None
    patient: str | None = None
    disabled: bool = False


def create_client(db: Database, *, name: str, auth_method: str, scopes: str, grant_types: Iterable[str],
                  redirect_uris: Sequence[str] = (), jwks: dict[str, Any] | None = None,
                  jwks_uri: str | None = None, client_id: str | None = None,
                  now: float | None = None) -> tuple[Client, str | None]:
    """Register a client; returns it with its secret (shown once; only its hash is stored)."""
    grants = tuple(dict.fromkeys(grant_types))
    client_id = client_id or uuid.uuid4().hex
    _check_client(name, auth_method, scopes, grants, redirect_uris, jwks, jwks_uri, client_id)
    secret = new_token() if auth_method in SECRET_METHODS else None
    created = int(now if now is not None else time.time())
    row = {
        "client_id": client_id, "name": name, "auth_method": auth_method,
        "secret_hash": hash_secret(secret) if secret else None,
        "jwks": orjson.dumps(jwks).decode() if jwks is not None else None, "jwks_uri": jwks_uri or None,
        "redirect_uris": orjson.dumps(list(redirect_uris)).decode(), "scopes": " ".join(scopes.split()),
        "grant_types": " ".join(grants), "revoked": False, "created": created, "rotated": None,
    }
    with db.write() as conn:
        # RETURNING, not rowcount: psycopg reports -1 for INSERT ... ON CONFLICT DO NOTHING.
        inserted = conn.execute(db.dialect.insert_ignore(oauth_clients).values(**row)
                                .returning(oauth_clients.c.client_id)).first()
        if inserted is None:
            raise Conflict(f"a client with id {client_id!r} already exists")
    return _client(row), secret


def get_client(db: Database, client_id: str) -> Client | None:
    if not isinstance(client_id, str) or not client_id or len(client_id) > 64:
        return None
    with db.read(snapshot=False) as conn:
        row = conn.execute(select(oauth_clients).where(oauth_clients.c.client_id == client_id)).first()
    return _client(row._asdict()) if row is not None else None


def list_clients(db: Database) -> list[Client]:
    with db.read() as conn:
        rows = conn.execute(select(oauth_clients).order_by(oauth_clients.c.created, oauth_clients.c.client_id))
        return [_client(r._asdict()) for r in rows]


def revoke_client(db: Database, client_id: str) -> None:
    """Refuse the client from now on: token requests at once, its access tokens within the verifier's cache time."""
    with db.write() as conn:
        if conn.execute(update(oauth_clients).where(oauth_clients.c.client_id == client_id)
                        .values(revoked=True)).rowcount != 1:
            raise NotFound(f"no client {client_id!r}")
        conn.execute(update(oauth_refresh_tokens).where(oauth_refresh_tokens.c.client_id == client_id)
                     .values(revoked=True))
    from medcloud.security.oauth.tokens import forget_client

    forget_client(db, client_id)


def rotate_secret(db: Database, client_id: str, *, now: float | None = None) -> str:
    """A new secret for a secret-authenticated client; the old one stops working at once."""
    client = get_client(db, client_id)
    if client is None:
        raise NotFound(f"no client {client_id!r}")
    if client.auth_method not in SECRET_METHODS:
        raise Invalid(f"client {client_id!r} authenticates with {client.auth_method}, not a client secret")
    secret = new_token()
    with db.write() as conn:
        conn.execute(update(oauth_clients).where(oauth_clients.c.client_id == client_id)
                     .values(secret_hash=hash_secret(secret), rotated=int(now if now is not None else time.time())))
    return secret


def create_user(db: Database, username: str, password: str, *, fhir_user: str | None = None,
                patient: str | None = None, now: float | None = None) -> User:
    if not username or len(username) > 128 or any(c.isspace() for c in username):
        raise Invalid("a username is 1 to 128 characters without spaces")
    if len(password) < 8:
        raise Invalid("a password needs at least 8 characters")
    if fhir_user is not None and (len(fhir_user) > 256 or fhir_user.count("/") != 1):
        raise Invalid(f"fhirUser must be a reference like Practitioner/123, not {fhir_user!r}")
    if patient is not None and (not patient or len(patient) > 64 or "/" in patient):
        raise Invalid(f"the linked patient is a Patient id (without 'Patient/'), not {patient!r}")
    user = User(username, hash_secret(password), fhir_user, patient)
    with db.write() as conn:
        inserted = conn.execute(db.dialect.insert_ignore(oauth_users).values(
            username=username, password_hash=user.password_hash, fhir_user=fhir_user, patient=patient,
            disabled=False, created=int(now if now is not None else time.time()))
            .returning(oauth_users.c.username)).first()
    if inserted is None:
        raise Conflict(f"a user {username!r} already exists")
    return user


def get_user(db: Database, username: str) -> User | None:
    if not isinstance(username, str) or not username or len(username) > 128:
        return None
    with db.read(snapshot=False) as conn:
        row = conn.execute(select(oauth_users).where(oauth_users.c.username == username)).first()
    if row is None:
        return None
    return User(row.username, row.password_hash, row.fhir_user, row.patient, bool(row.disabled))


def _check_client(name: str, auth_method: str, scopes: str, grants: tuple[str, ...], redirect_uris: Sequence[str],
                  jwks: dict[str, Any] | None, jwks_uri: str | None, client_id: str) -> None:
    if not name or len(name) > _MAX_NAME:
        raise Invalid(f"a client name is 1 to {_MAX_NAME} characters")
    if not client_id or len(client_id) > 64 or not all(c.isalnum() or c in "-_." for c in client_id):
        raise Invalid("a client id is 1 to 64 letters, digits, '-', '_' or '.'")
    if auth_method not in AUTH_METHODS:
        raise Invalid(f"unknown token endpoint auth method {auth_method!r}; use one of {', '.join(AUTH_METHODS)}")
    if not scopes.split():
        raise Invalid("give the client at least one scope")
    parse_scopes(scopes, strict=True)  # raises Invalid naming the bad scope
    if not grants:
        raise Invalid("give the client at least one grant type")
    unknown = [g for g in grants if g not in GRANT_TYPES]
    if unknown:
        raise Invalid(f"unknown grant type {unknown[0]!r}; use {', '.join(GRANT_TYPES)}")
    if auth_method == "none" and "client_credentials" in grants:
        raise Invalid("client_credentials needs a confidential client (a secret or private_key_jwt)")
    if "authorization_code" in grants and not redirect_uris:
        raise Invalid("the authorization_code grant needs at least one redirect URI")
    for uri in redirect_uris:
        check_redirect_uri(uri)
    if auth_method == "private_key_jwt":
        if (jwks is None) == (not jwks_uri):
            raise Invalid("private_key_jwt needs a JWK Set or a JWK Set URL (one of them)")
        try:
            if jwks is not None:
                parse_jwks(orjson.dumps(jwks))
            else:
                check_url(str(jwks_uri))
        except KeySetError as e:
            raise Invalid(f"unusable client keys: {e}") from e
    elif jwks is not None or jwks_uri:
        raise Invalid("keys are only registered for private_key_jwt clients")


def check_redirect_uri(uri: str) -> None:
    """Absolute, no fragment (RFC 6749 §3.1.2); https, or http to this machine (native/dev apps)."""
    try:
        parts = urlsplit(uri)
    except ValueError as e:
        raise Invalid(f"invalid redirect URI {uri!r}") from e
    if parts.fragment or not parts.scheme or not parts.netloc:
        raise Invalid(f"a redirect URI is absolute and has no fragment: {uri!r}")
    loopback = parts.hostname in ("localhost", "127.0.0.1", "::1")
    if parts.scheme != "https" and not (parts.scheme == "http" and loopback):
        raise Invalid(f"a redirect URI uses https (http only to localhost): {uri!r}")


def _client(row: dict[str, Any] | Row[Any]) -> Client:
    d = row if isinstance(row, dict) else row._asdict()
    return Client(
        client_id=d["client_id"], name=d["name"], auth_method=d["auth_method"],
        scopes=tuple(d["scopes"].split()), grant_types=tuple(d["grant_types"].split()),
        redirect_uris=tuple(orjson.loads(d["redirect_uris"])),
        jwks=orjson.loads(d["jwks"]) if d["jwks"] else None, jwks_uri=d["jwks_uri"],
        revoked=bool(d["revoked"]), created=int(d["created"]),
        rotated=int(d["rotated"]) if d["rotated"] is not None else None, secret_hash=d["secret_hash"],
    )


def delete_client(db: Database, client_id: str) -> None:
    """Remove a client row outright (only for a client whose secret was never handed out)."""
    from sqlalchemy import delete

    with db.write() as conn:
        conn.execute(delete(oauth_clients).where(oauth_clients.c.client_id == client_id))
