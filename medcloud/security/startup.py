"""Secure-by-default checks for ``medcloud serve``: who may switch auth off, TLS files, admin credentials.

The CLI calls these before the first worker starts, so a misconfiguration is one clear message
and exit code 2, not a server that half-starts (uvicorn would otherwise fail inside a worker
with an ``ssl`` traceback) or, worse, a server that silently serves without authentication on a
public interface.
"""

from __future__ import annotations

import ipaddress
import logging
import ssl
from pathlib import Path
from typing import Any

from medcloud.config import Settings
from medcloud.storage.sql.database import Database

log = logging.getLogger("medcloud.security")


def is_loopback(host: str) -> bool:
    """127.0.0.0/8, ::1 and ``localhost``; a wildcard (0.0.0.0, ::) or a name is not."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def serve_problems(settings: Settings) -> list[str]:
    """Everything that forbids ``serve`` with these settings; empty when it may start."""
    problems = []
    if not settings.auth and not is_loopback(settings.host):
        problems.append(f"--no-auth (auth = false) is refused on {settings.host!r}: without authentication "
                        "medcloud binds to a loopback address only (127.0.0.1, ::1, localhost)")
    problems.extend(tls_problems(settings.tls_cert, settings.tls_key))
    from medcloud.imaging.blobs import blob_store_problems  # S3: bucket, credentials, endpoint

    problems.extend(blob_store_problems(settings))
    return problems


def tls_problems(cert: Path | None, key: Path | None) -> list[str]:
    if cert is None and key is None:
        return []
    if cert is None or key is None:
        return ["give both --tls-cert and --tls-key (a certificate without its key, or the reverse, cannot serve TLS)"]
    missing = [f"{p} does not exist or is not a file" for p in (cert, key) if not p.is_file()]
    if missing:
        return missing
    try:
        ssl.create_default_context(ssl.Purpose.CLIENT_AUTH).load_cert_chain(str(cert), str(key))
    except (ssl.SSLError, OSError) as e:
        return [f"cannot load the TLS certificate {cert} with key {key}: {e}"]
    return []


def optional(module: str, name: str) -> Any:
    """``module.name``, or None while that module is not part of this build (an ImportError inside it is raised)."""
    import importlib

    try:
        mod = importlib.import_module(module)
    except ModuleNotFoundError as e:
        if e.name is None or not module.startswith(e.name):
            raise
        return None
    return getattr(mod, name, None)


def warn_if_open(settings: Settings) -> None:
    if not settings.auth:
        log.warning("authentication is OFF (--no-auth): every process on this machine has full access, "
                    "as administrator, to all data on %s", settings.public_base)


def admin_credentials(settings: Settings, db: Database) -> str:
    """Create the first admin client if needed; a sentence saying where its credentials are."""
    ensure = optional("medcloud.security.oauth", "ensure_admin_client")
    if ensure is None:
        return "no authorization server in this build: only external OIDC tokens are accepted"
    written = ensure(settings, db)
    if written is not None:
        return f"admin client created; its credentials are in {written} (mode 0600)"
    existing = settings.data_dir / "admin-credentials.json"
    if existing.exists():
        return f"admin credentials: {existing.resolve()}"
    return "an admin client exists; manage clients with `medcloud admin list-clients`"
