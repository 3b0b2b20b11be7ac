"""Opaque paging cursors shared by search and history.

A cursor is the paging state itself (the query, the keyset position, who asked, when it
expires), serialised and signed with a key kept in the database, so every replica accepts every
other replica's links and no server-side page state can be lost. An expired or tampered
cursor is refused cleanly (410 Gone / 400).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
from typing import Any

import orjson
from sqlalchemy import select

from medcloud.errors import Forbidden, Gone, Invalid
from medcloud.fhir.exchange import Principal
from medcloud.storage.schema import server_state
from medcloud.storage.sql.database import Database

_KEY_NAME = "paging-cursor-key"


class CursorCodec:
    def __init__(self, db: Database, ttl_seconds: int):
        self._db = db
        self._ttl_us = ttl_seconds * 1_000_000
        self._key: bytes | None = None

    def signing_key(self) -> bytes:
        if self._key is None:
            with self._db.write() as conn:
                conn.execute(self._db.dialect.insert_ignore(server_state).values(key=_KEY_NAME, value=os.urandom(32)))
                self._key = conn.execute(select(server_state.c.value).where(server_state.c.key == _KEY_NAME)).scalar_one()
        return self._key

    def encode(self, state: dict[str, Any], now_us: int, principal: Principal | None = None) -> str:
        """``principal`` binds the link to who asked: replayed with another token, it is refused."""
        payload = orjson.dumps({"s": state, "exp": now_us + self._ttl_us, "w": _who(principal)})
        sig = hmac.new(self.signing_key(), payload, hashlib.sha256).digest()[:16]
        return base64.urlsafe_b64encode(sig + payload).decode().rstrip("=")

    def decode(self, token: str, now_us: int, principal: Principal | None = None) -> dict[str, Any]:
        try:
            raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))
        except (ValueError, TypeError) as e:
            raise Invalid("malformed paging cursor") from e
        sig, payload = raw[:16], raw[16:]
        if len(sig) < 16 or not hmac.compare_digest(sig, hmac.new(self.signing_key(), payload, hashlib.sha256).digest()[:16]):
            raise Invalid("malformed paging cursor")
        data = orjson.loads(payload)
        if data["exp"] < now_us:
            raise Gone("this paging link has expired; run the search again")
        if data.get("w") != _who(principal):
            raise Forbidden("this paging link was issued to someone else")
        state: dict[str, Any] = data["s"]
        return state


def _who(p: Principal | None) -> list[Any] | None:
    """What a link is bound to: the user, the client, the launch patient and the scopes."""
    return None if p is None else [p.subject, p.client_id, p.patient, sorted(p.scopes)]
