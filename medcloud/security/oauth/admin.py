"""The first administrator: created at the first authenticated start, credentials written 0600.

``medcloud serve`` calls ``ensure_admin_client`` before any worker starts. The client id is fixed
(``admin``) and inserted with insert-ignore, so replicas starting together create it once; the
one that created it writes ``DATA_DIR/admin-credentials.json`` (a temporary file created 0600,
then renamed, so the secret is never readable by others, not even for a moment).
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import orjson

from medcloud.config import Settings
from medcloud.errors import Conflict
from medcloud.security.oauth.store import create_client, delete_client
from medcloud.security.scopes import ADMIN_SCOPE
from medcloud.storage.sql.database import Database

ADMIN_CLIENT_ID = "admin"
ADMIN_SCOPES = f"system/*.cruds {ADMIN_SCOPE}"
CREDENTIALS_FILE = "admin-credentials.json"


def ensure_admin_client(settings: Settings, db: Database) -> Path | None:
    """Create the admin client if it was never created; the credentials file's path, or None if it existed."""
    try:
        client, secret = create_client(db, name="medcloud administrator", auth_method="client_secret_basic",
                                       scopes=ADMIN_SCOPES, grant_types=["client_credentials"],
                                       client_id=ADMIN_CLIENT_ID)
    except Conflict:
        return None
    assert secret is not None
    path = settings.data_dir / CREDENTIALS_FILE
    document = {"client_id": client.client_id, "client_secret": secret,
                "token_endpoint": settings.auth_issuer + "/token", "scope": ADMIN_SCOPES,
                "fhir_base": settings.fhir_audience}
    try:
        write_private(path, orjson.dumps(document, option=orjson.OPT_INDENT_2) + b"\n")
    except OSError:
        delete_client(db, ADMIN_CLIENT_ID)  # nobody knows its secret: let the next start try again
        raise
    return path


def write_private(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` readable by the owner only (mode 0600), atomically."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")  # mkstemp creates 0600
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o600)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
