"""The key hierarchy for data at rest: root secret -> KEK versions (in the database) -> data keys (per blob).

    root key     MEDCLOUD_MASTER_KEY (base64 of 32 bytes) or the key file (Settings.master_key_file,
                 default DATA_DIR/master.key, created 0600 at first start). Never stored in the database.
    KEK versions rows ``kek:<version>`` of ``server_state``: a random 256-bit key-encryption key,
                 AES-GCM-wrapped by the root key. The highest active version is current.
    data keys    one per blob, wrapped by a KEK in the blob's own header (``security/crypto.py``).

Why the KEK versions live in the database and not in a keyring file next to the key: every
replica serving one PostgreSQL (and, later, one S3 bucket) must unwrap the same blobs and agree on
the current version the moment a rotation starts; a file per host would need its own distribution.
The database holds only wrapped KEKs, so a database dump without the root secret opens nothing.
Named secrets (the de-identification pseudonym key) are kept the same way, wrapped by the root key.

Each process caches the key ring for at most ``ttl`` seconds (safe to lose: it is reloaded), and
reloads at once when it meets a key id it does not know (a KEK created by another replica).
"""

from __future__ import annotations

import base64
import os
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

import orjson
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from sqlalchemy import delete, select, update

from medcloud.errors import Invalid, MedcloudError
from medcloud.security.crypto import ENV_VAR, KEY_SIZE, Keyring, decode_key, key_id
from medcloud.storage.schema import server_state
from medcloud.storage.sql.database import Database

KEK_PREFIX = "kek:"
SECRET_PREFIX = "secret:"
ACTIVE, RETIRED = "active", "retired"
CACHE_TTL = 5.0  # seconds a process may keep using a key ring before reloading it


class MasterKeyError(MedcloudError):
    """The root key is missing, malformed or does not open the database's key ring (a startup error)."""

    category = "fault"


@dataclass(frozen=True, slots=True)
class KekVersion:
    version: int
    kid: bytes  # the fingerprint written into blob headers
    status: str  # active | retired
    created: float  # seconds since the epoch


def load_root_key(key_file: Path, environ: Mapping[str, str], *, create: bool) -> tuple[bytes, str]:
    """The root key and where it came from: ``MEDCLOUD_MASTER_KEY``, else ``key_file`` (made if ``create``)."""
    if environ.get(ENV_VAR):
        try:
            return decode_key(environ[ENV_VAR]), ENV_VAR
        except Invalid as e:
            raise MasterKeyError(f"{ENV_VAR}: {e.message}") from None
    if key_file.exists():
        raw = key_file.read_bytes()
        try:
            key = raw if len(raw) == KEY_SIZE else decode_key(raw.decode("ascii", "replace").strip())
        except Invalid as e:
            raise MasterKeyError(f"the master key file {key_file}: {e.message}") from None
        return key, str(key_file)
    if not create:
        raise MasterKeyError(f"no master key: {key_file} does not exist and {ENV_VAR} is not set, but the database "
                             "holds a key ring wrapped by a master key: restore the key file or set the variable")
    key_file.parent.mkdir(parents=True, exist_ok=True)
    key = os.urandom(KEY_SIZE)
    try:
        fd = os.open(key_file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:  # another process of this server made it a moment ago
        time.sleep(0.1)
        return load_root_key(key_file, environ, create=False)
    with os.fdopen(fd, "w") as f:
        f.write(base64.b64encode(key).decode() + "\n")
        f.flush()
        os.fsync(f.fileno())
    return key, str(key_file)


class KeyStore:
    """KEK versions and named secrets in ``server_state``, wrapped by the root key."""

    def __init__(self, db: Database, root_key: bytes, *, ttl: float = CACHE_TTL,
                 clock: Callable[[], float] = time.time, source: str = ""):
        self.db = db
        self._root = AESGCM(root_key)
        self.root_kid = key_id(root_key)
        self.source = source
        self.ttl = ttl
        self.clock = clock
        self._lock = threading.Lock()
        self._cached: tuple[float, Keyring] | None = None

    @classmethod
    def open(cls, db: Database, key_file: Path, environ: Mapping[str, str] | None = None) -> KeyStore:
        """Load the root key, check it opens the database's key ring, and make KEK version 1 if there is none.

        Raises ``MasterKeyError`` with a message fit for a startup error: no key while the database
        already holds wrapped KEKs (the key file was lost), or a key that does not open them.
        """
        environ = os.environ if environ is None else environ
        with db.read() as conn:
            existing = conn.execute(select(server_state.c.key).where(server_state.c.key.like(KEK_PREFIX + "%"))).first()
        root, source = load_root_key(key_file, environ, create=existing is None)
        store = cls(db, root, source=source)
        versions = store.versions()
        if not any(v.status == ACTIVE for v in versions):
            store.create_version()
        store.keyring()  # unwraps every active KEK: a wrong root key fails here, at startup
        return store

    # ------------------------------------------------------------ KEK versions

    def _rows(self) -> list[tuple[str, dict[str, str]]]:
        with self.db.read() as conn:
            rows = conn.execute(select(server_state.c.key, server_state.c.value)
                                .where(server_state.c.key.like(KEK_PREFIX + "%"))).all()
        return sorted((k, orjson.loads(v)) for k, v in rows)

    def versions(self) -> list[KekVersion]:
        return [KekVersion(int(k[len(KEK_PREFIX):]), bytes.fromhex(d["kid"]), d["status"], float(d["created"]))
                for k, d in self._rows()]

    def _unwrap_kek(self, name: str, d: dict[str, str]) -> bytes:
        if d.get("root") != self.root_kid.hex():
            raise MasterKeyError(f"the master key ({self.source or 'given'}, id {self.root_kid.hex()}) is not the one that "
                            f"wrapped the database's key ring (id {d.get('root')}): wrong MEDCLOUD_MASTER_KEY or key file")
        try:
            return self._root.decrypt(base64.b64decode(d["nonce"]), base64.b64decode(d["wrapped"]), name.encode())
        except (InvalidTag, KeyError, ValueError):
            raise MasterKeyError(f"the key ring entry {name} failed authentication under the master key") from None

    def keyring(self, *, refresh: bool = False) -> Keyring:
        """Active KEKs, current (highest version) first; cached for ``ttl`` seconds."""
        now = time.monotonic()
        with self._lock:
            if not refresh and self._cached is not None and now - self._cached[0] < self.ttl:
                return self._cached[1]
        active = [(k, d) for k, d in self._rows() if d["status"] == ACTIVE]
        if not active:
            raise MasterKeyError("the database holds no active key-encryption key; run `medcloud keys status`")
        keys = [self._unwrap_kek(k, d) for k, d in reversed(active)]
        ring = Keyring(keys)
        with self._lock:
            self._cached = (now, ring)
        return ring

    def create_version(self) -> KekVersion:
        """A new random KEK, wrapped by the root key, as the highest (current) version."""
        kek = os.urandom(KEY_SIZE)
        with self.db.write() as conn:
            self.db.dialect.lock_key(conn, "medcloud-kek")
            names = conn.execute(select(server_state.c.key).where(server_state.c.key.like(KEK_PREFIX + "%"))).scalars()
            version = max((int(n[len(KEK_PREFIX):]) for n in names), default=0) + 1
            name = f"{KEK_PREFIX}{version:06d}"
            nonce = os.urandom(12)
            created = self.clock()
            value = {"kid": key_id(kek).hex(), "root": self.root_kid.hex(), "status": ACTIVE, "created": created,
                     "nonce": base64.b64encode(nonce).decode(),
                     "wrapped": base64.b64encode(self._root.encrypt(nonce, kek, name.encode())).decode()}
            conn.execute(server_state.insert().values(key=name, value=orjson.dumps(value)))
        self.keyring(refresh=True)
        return KekVersion(version, key_id(kek), ACTIVE, created)

    def retire(self, versions: list[int]) -> None:
        """Mark KEK versions retired and erase their wrapped key: blobs still under them cannot be opened."""
        with self.db.write() as conn:
            for v in versions:
                name = f"{KEK_PREFIX}{v:06d}"
                raw = conn.execute(select(server_state.c.value).where(server_state.c.key == name)).scalar_one_or_none()
                if raw is None:
                    continue
                d = orjson.loads(raw)
                d.update(status=RETIRED, retired=self.clock(), nonce="", wrapped="")
                conn.execute(update(server_state).where(server_state.c.key == name).values(value=orjson.dumps(d)))
        self.keyring(refresh=True)

    # ------------------------------------------------------------ small state rows and named secrets

    def get_state(self, name: str) -> dict[str, object] | None:
        with self.db.read() as conn:
            raw = conn.execute(select(server_state.c.value).where(server_state.c.key == name)).scalar_one_or_none()
        return None if raw is None else dict(orjson.loads(raw))

    def put_state(self, name: str, value: dict[str, object] | None) -> None:
        with self.db.write() as conn:
            conn.execute(delete(server_state).where(server_state.c.key == name))
            if value is not None:
                conn.execute(server_state.insert().values(key=name, value=orjson.dumps(value)))

    def lease(self, name: str, owner: str, seconds: float) -> dict[str, object] | None:
        """Take or renew the lease ``name`` for ``owner``; returns the other holder's record if it is held."""
        with self.db.write() as conn:
            self.db.dialect.lock_key(conn, name)
            raw = conn.execute(select(server_state.c.value).where(server_state.c.key == name)).scalar_one_or_none()
            now = self.clock()
            if raw is not None:
                held = dict(orjson.loads(raw))
                if held.get("owner") != owner and float(held.get("until", 0)) > now:
                    return held
                conn.execute(delete(server_state).where(server_state.c.key == name))
            conn.execute(server_state.insert().values(
                key=name, value=orjson.dumps({"owner": owner, "until": now + seconds})))
        return None

    def release(self, name: str, owner: str) -> None:
        with self.db.write() as conn:
            self.db.dialect.lock_key(conn, name)
            raw = conn.execute(select(server_state.c.value).where(server_state.c.key == name)).scalar_one_or_none()
            if raw is not None and orjson.loads(raw).get("owner") == owner:
                conn.execute(delete(server_state).where(server_state.c.key == name))

    def secret(self, name: str, size: int = 32) -> bytes:
        """A named random secret (created on first use), stored wrapped by the root key."""
        row = SECRET_PREFIX + name
        nonce = os.urandom(12)
        fresh = {"root": self.root_kid.hex(), "nonce": base64.b64encode(nonce).decode(),
                 "wrapped": base64.b64encode(self._root.encrypt(nonce, os.urandom(size), row.encode())).decode()}
        with self.db.write() as conn:
            conn.execute(self.db.dialect.insert_ignore(server_state).values(key=row, value=orjson.dumps(fresh)))
            d = orjson.loads(conn.execute(select(server_state.c.value).where(server_state.c.key == row)).scalar_one())
        return self._unwrap_kek(row, d)
