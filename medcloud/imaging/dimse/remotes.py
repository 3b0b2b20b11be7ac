"""Configured DICOM peers (``Settings.dicom_remotes``): C-MOVE destinations, SCU targets, allowed callers."""

from __future__ import annotations

from collections.abc import Sequence

from medcloud.config import RemoteAE
from medcloud.errors import Invalid


def find_remote(remotes: Sequence[RemoteAE], title: str) -> RemoteAE | None:
    """The configured peer with this AE title (titles compare without padding, case-sensitively per PS3.5)."""
    wanted = title.strip()
    for r in remotes:
        if r.title == wanted:
            return r
    return None


def resolve(remotes: Sequence[RemoteAE], name: str | None, host: str | None, port: int | None,
            aet: str | None) -> RemoteAE:
    """The peer a CLI command talks to: a configured remote by name, or ``--host/--port/--aet``.

    Explicit ``--host/--port/--aet`` override the fields of a named remote, so ``--aet`` can reach
    the same host under another called title.
    """
    base = find_remote(remotes, name) if name else None
    if name and base is None:
        known = ", ".join(r.title for r in remotes) or "none configured"
        raise Invalid(f"no configured remote AE {name!r} (known: {known}); use --host/--port/--aet")
    h = host or (base.host if base else None)
    p = port or (base.port if base else None)
    if not h or not p:
        raise Invalid("give a configured remote name or --host and --port")
    return RemoteAE(title=aet or (base.title if base else "ANY-SCP"), host=h, port=p)
