"""The model registry: versions of checked model packages, one active version per name.

Everything is in the database (``storage/ai_schema.py``), so every replica of a server sees the
same registry and can load the same bytes: the metadata and manifest for listing, the canonical
package zip for loading. A package is checked (``ai/package.py``) before it is stored and its
digest is checked again whenever it is loaded, so bytes changed in the database are refused too.

Versions are the manifest's ``version`` strings; a name+version is registered once. Registering
the identical package again is a no-op (a retried upload), a different package under a taken
version is a Conflict. Activation is explicit (``activate=True`` or ``activate()``): servers
serve the active version, and replacing it is one row update, seen by every replica at once.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import Connection, delete, select, update
from sqlalchemy.exc import IntegrityError

from medcloud.ai.package import ChecksumMismatch, ModelPackage, from_bytes, sha256
from medcloud.errors import Conflict, NotFound
from medcloud.storage.ai_schema import ai_active_models, ai_model_packages, ai_models
from medcloud.storage.sql.database import Database


@dataclass(frozen=True)
class ModelVersion:
    """One registered version (without the package bytes)."""

    name: str
    version: str
    task: str
    sha256: str  # model.onnx
    package_sha256: str
    size: int
    registered: int  # ms since the epoch
    registered_by: str | None
    active: bool
    manifest: dict[str, Any] = field(repr=False)

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "version": self.version, "task": self.task, "active": self.active,
                "sha256": self.sha256, "package_sha256": self.package_sha256, "size": self.size,
                "registered": _iso(self.registered), "registered_by": self.registered_by,
                "manifest": self.manifest}


class Registry:
    def __init__(self, db: Database, clock: Callable[[], float] = time.time):
        self.db = db
        self.clock = clock

    def register(self, pkg: ModelPackage, *, activate: bool = False, by: str | None = None) -> ModelVersion:
        """Store a checked package as ``manifest.name``/``manifest.version``; raises Conflict if that
        version holds a different package."""
        m = pkg.manifest
        data = pkg.to_zip()
        digest = sha256(data)
        now = self._now()
        row = {"name": m.name, "version": m.version, "task": m.task, "sha256": m.sha256,
               "package_sha256": digest, "size": len(data), "registered": now, "registered_by": by,
               "manifest": json.dumps(m.model_dump(mode="json"), sort_keys=True)}
        try:
            with self.db.write() as conn:
                existing = conn.execute(select(ai_models.c.package_sha256).where(
                    ai_models.c.name == m.name, ai_models.c.version == m.version)).scalar_one_or_none()
                if existing is None:
                    conn.execute(ai_models.insert().values(**row))
                    conn.execute(ai_model_packages.insert().values(name=m.name, version=m.version, data=data))
                elif existing != digest:
                    raise Conflict(f"model {m.name} version {m.version} is already registered with another "
                                   f"package ({existing}); give the new one another version")
                if activate:
                    self._activate(conn, m.name, m.version, now)
        except IntegrityError as e:  # a concurrent registration of the same version won
            raise Conflict(f"model {m.name} version {m.version} was registered concurrently; retry") from e
        return self.get(m.name, m.version)

    def list(self, name: str | None = None) -> list[ModelVersion]:
        """Registered versions, by name, newest first within a name."""
        stmt = _versions()
        if name is not None:
            stmt = stmt.where(ai_models.c.name == name)
        with self.db.read() as conn:
            rows = conn.execute(stmt.order_by(ai_models.c.name, ai_models.c.registered.desc(),
                                              ai_models.c.version.desc())).all()
        return [_version(r) for r in rows]

    def get(self, name: str, version: str | None = None) -> ModelVersion:
        """One version; ``version=None`` is the active one. Raises NotFound."""
        with self.db.read() as conn:
            version = version or self._active_version(conn, name)
            row = conn.execute(_versions().where(ai_models.c.name == name,
                                                 ai_models.c.version == version)).first()
        if row is None:
            raise NotFound(f"model {name} has no version {version}")
        return _version(row)

    def load(self, name: str, version: str | None = None) -> ModelPackage:
        """The package of a version (default: the active one), its digest checked again."""
        with self.db.read() as conn:
            version = version or self._active_version(conn, name)
            row = conn.execute(select(ai_models.c.package_sha256, ai_model_packages.c.data)
                               .join(ai_model_packages, (ai_model_packages.c.name == ai_models.c.name)
                                     & (ai_model_packages.c.version == ai_models.c.version))
                               .where(ai_models.c.name == name, ai_models.c.version == version)).first()
        if row is None:
            raise NotFound(f"model {name} has no version {version}")
        data = bytes(row.data)
        if sha256(data) != row.package_sha256:
            raise ChecksumMismatch([f"stored package of {name} {version} does not match its digest "
                                    f"{row.package_sha256}: the registry's copy was changed"])
        return from_bytes(data, expected_sha256=row.package_sha256)

    def activate(self, name: str, version: str) -> ModelVersion:
        """Make ``version`` the one active version of ``name``; raises NotFound."""
        for attempt in (1, 2):
            try:
                with self.db.write() as conn:
                    if conn.execute(select(ai_models.c.version).where(
                            ai_models.c.name == name, ai_models.c.version == version)).first() is None:
                        raise NotFound(f"model {name} has no version {version}")
                    self._activate(conn, name, version, self._now())
                break
            except IntegrityError:  # PostgreSQL: a concurrent first activation inserted the row; update it now
                if attempt == 2:
                    raise
        return self.get(name, version)

    def remove(self, name: str, version: str, *, force: bool = False) -> None:
        """Delete one version and its package; the active version only with ``force`` (raises Conflict)."""
        with self.db.write() as conn:
            if conn.execute(select(ai_models.c.version).where(ai_models.c.name == name,
                                                             ai_models.c.version == version)).first() is None:
                raise NotFound(f"model {name} has no version {version}")
            active = conn.execute(select(ai_active_models.c.version)
                                  .where(ai_active_models.c.name == name)).scalar_one_or_none()
            if active == version:
                if not force:
                    raise Conflict(f"{name} {version} is the active version: activate another one first, "
                                   "or force the removal (then no version of it is served)")
                conn.execute(delete(ai_active_models).where(ai_active_models.c.name == name))
            for table in (ai_model_packages, ai_models):
                conn.execute(delete(table).where(table.c.name == name, table.c.version == version))

    def next_version(self, name: str) -> str:
        """One more than the highest all-digit version of ``name`` ("1" for a new name)."""
        with self.db.read() as conn:
            versions = conn.scalars(select(ai_models.c.version).where(ai_models.c.name == name)).all()
        return str(max((int(v) for v in versions if v.isdigit()), default=0) + 1)

    def _activate(self, conn: Connection, name: str, version: str, now: int) -> None:
        done = conn.execute(update(ai_active_models).where(ai_active_models.c.name == name)
                            .values(version=version, activated=now)).rowcount
        if not done:
            conn.execute(ai_active_models.insert().values(name=name, version=version, activated=now))

    def _active_version(self, conn: Connection, name: str) -> str:
        version = conn.execute(select(ai_active_models.c.version)
                               .where(ai_active_models.c.name == name)).scalar_one_or_none()
        if version is None:
            known = conn.execute(select(ai_models.c.name).where(ai_models.c.name == name).limit(1)).first()
            raise NotFound(f"model {name} has no active version" if known else f"no model named {name}")
        return str(version)

    def _now(self) -> int:
        return int(self.clock() * 1000)


def _versions() -> Any:
    is_active = (ai_active_models.c.version == ai_models.c.version).label("active")
    return (select(ai_models, is_active)
            .outerjoin(ai_active_models, ai_active_models.c.name == ai_models.c.name))


def _version(r: Any) -> ModelVersion:
    return ModelVersion(name=r.name, version=r.version, task=r.task, sha256=r.sha256,
                        package_sha256=r.package_sha256, size=r.size, registered=r.registered,
                        registered_by=r.registered_by, active=bool(r.active), manifest=json.loads(r.manifest))


def _iso(ms: int) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(ms / 1000)) + f".{ms % 1000:03d}Z"
