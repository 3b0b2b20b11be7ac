"""An incremental Parquet copy of the store for analytics (``medcloud sof sync``).

Layout of the output folder::

    _sync.json                 the manifest: high-water mark, the parts of each type, a counter
    Patient/000001.parquet     one part per run and type: id, version, last_updated, deleted, resource
    Observation/000002.parquet ...

The first run streams every current resource once; each later run reads only the rows of
``resources`` whose ``last_updated`` is after the high-water mark (the ``ix_resources_type_lu_deleted``
index) and appends them as a new part: updated resources as their new version, deleted ones as a
tombstone (``deleted`` true, no resource). Readers keep, per id, the highest version and drop
tombstones (``WarehouseSource``), so nothing is rewritten on a sync. A type with more than
``COMPACT_AT`` parts is compacted into one part.

Crash safety: parts are written to a temporary name and renamed; the manifest is replaced last
(write, fsync, rename), and readers read only the parts the manifest lists. A run killed at any
point leaves the previous manifest, hence the previous state, readable; its stray files are
removed by the next run.

Late commits: a version's ``last_updated`` is taken before its transaction commits, so a slow
transaction can become visible with a timestamp just below the mark. Each run therefore re-reads
``OVERLAP`` (5 minutes) before the mark and drops the (id, version) pairs it already holds.
"""

from __future__ import annotations

import json
import os
import re
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sqlalchemy import select

from medcloud.analytics.errors import SourceError
from medcloud.analytics.fhirpath._sqltext import sql_str
from medcloud.storage.resources import current_join
from medcloud.storage.schema import resource_history, resources
from medcloud.storage.sql.database import Database

MANIFEST = "_sync.json"
OVERLAP = 5 * 60 * 1_000_000  # µs
COMPACT_AT = 16
BATCH = 5000
_PART = re.compile(r"^\d{6}\.parquet$")
_COLUMNS = "id VARCHAR, version BIGINT, last_updated BIGINT, deleted BOOLEAN, resource VARCHAR"


@dataclass(frozen=True, slots=True)
class SyncResult:
    high_water: int | None
    changed: dict[str, int]  # rows appended per type (versions and tombstones)
    deleted: dict[str, int]  # tombstones among them
    compacted: tuple[str, ...]


def is_warehouse(path: Path) -> bool:
    return (path / MANIFEST).is_file()


def read_manifest(out: Path) -> dict[str, Any]:
    path = out / MANIFEST
    if not path.exists():
        return {"format": 1, "high_water": None, "seq": 0, "parts": {}}
    try:
        state = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise SourceError(f"{path}: not a medcloud sync manifest: {e}") from e
    if not isinstance(state, dict) or state.get("format") != 1:
        raise SourceError(f"{path}: unknown sync manifest format")
    return state


def sync(db: Database, out: Path, *, batch: int = BATCH) -> SyncResult:
    """Bring the Parquet copy in ``out`` up to date with the store (first run: a full copy)."""
    import duckdb

    out.mkdir(parents=True, exist_ok=True)
    state = read_manifest(out)
    mark: int | None = state["high_water"]
    parts: dict[str, list[str]] = {t: list(p) for t, p in state["parts"].items()}
    con = duckdb.connect(":memory:")
    try:
        con.execute(f"CREATE TEMP TABLE changes (type VARCHAR, {_COLUMNS})")
        newest = mark
        for rows in _changes(db, None if mark is None else mark - OVERLAP, batch):
            if mark is None:
                rows = [r for r in rows if not r[4]]  # first run: nothing to tombstone
            if rows:
                cols = list(zip(*rows, strict=True))
                con.execute("INSERT INTO changes SELECT unnest(?), unnest(?), unnest(?), unnest(?), unnest(?), "
                            "unnest(?)", [list(c) for c in cols])
                newest = max(newest or 0, max(cols[3]))
        changed: dict[str, int] = {}
        deleted: dict[str, int] = {}
        types = [r[0] for r in con.execute("SELECT DISTINCT type FROM changes ORDER BY 1").fetchall()]
        for rtype in types:
            held = [out / p for p in parts.get(rtype, [])]
            if held:  # the overlap window: drop versions this copy already has
                con.execute(f"DELETE FROM changes WHERE type = ? AND (id, version) IN "
                            f"(SELECT (id, version) FROM read_parquet({_files(held)}))", [rtype])
            counts = con.execute("SELECT count(*), count(*) FILTER (WHERE deleted) FROM changes WHERE type = ?",
                                 [rtype]).fetchone()
            if not counts or not counts[0]:
                continue
            state["seq"] += 1
            name = f"{rtype}/{state['seq']:06d}.parquet"
            _copy(con, f"SELECT {_names()} FROM changes WHERE type = {sql_str(rtype)} ORDER BY id, version",
                  out / name)
            parts.setdefault(rtype, []).append(name)
            changed[rtype], deleted[rtype] = int(counts[0]), int(counts[1])
        compacted = []
        for rtype, names in sorted(parts.items()):
            if len(names) > COMPACT_AT:
                state["seq"] += 1
                name = f"{rtype}/{state['seq']:06d}.parquet"
                _copy(con, f"SELECT {_names()} FROM {_latest([out / n for n in names], keep_deleted=False)}",
                      out / name)
                parts[rtype] = [name]
                compacted.append(rtype)
    finally:
        con.close()
    state.update(high_water=newest, parts=parts)
    _write_manifest(out, state)
    _remove_unlisted(out, parts)
    return SyncResult(newest, changed, deleted, tuple(compacted))


def _changes(db: Database, after: int | None, batch: int) -> Iterator[list[tuple[Any, ...]]]:
    """(type, id, version, last_updated, deleted, json) of current rows updated after ``after``, in rid batches."""
    last_rid = 0
    while True:
        stmt = (select(resources.c.rid, resources.c.type, resources.c.id, resources.c.version,
                       resources.c.last_updated, resources.c.deleted, resource_history.c.content)
                .select_from(current_join())
                .where(resources.c.rid > last_rid)
                .order_by(resources.c.rid).limit(batch))
        if after is not None:
            stmt = stmt.where(resources.c.last_updated > after)
        with db.read() as conn:
            rows = conn.execute(stmt).all()
        if not rows:
            return
        last_rid = rows[-1][0]
        yield [(t, i, v, lu, bool(d), None if d or c is None else bytes(c).decode("utf-8"))
               for _rid, t, i, v, lu, d, c in rows]


def _names() -> str:
    return "id, version, last_updated, deleted, resource"


def _files(paths: list[Path]) -> str:
    return "[" + ", ".join(sql_str(str(p)) for p in paths) + "]"


def _latest(paths: list[Path], *, keep_deleted: bool) -> str:
    """The newest version of each id across parts (tombstones dropped unless ``keep_deleted``)."""
    where = "__rn = 1" + ("" if keep_deleted else " AND NOT deleted")
    return (f"(SELECT * EXCLUDE (__rn) FROM (SELECT *, row_number() OVER (PARTITION BY id ORDER BY version DESC) "
            f"AS __rn FROM read_parquet({_files(paths)})) WHERE {where})")


def _copy(con: Any, query: str, target: Path) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".partial", dir=target.parent)
    os.close(fd)
    try:
        con.execute(f"COPY ({query}) TO {sql_str(tmp)} (FORMAT parquet)")
        with open(tmp, "rb") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, target)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def _write_manifest(out: Path, state: dict[str, Any]) -> None:
    fd, tmp = tempfile.mkstemp(prefix=f".{MANIFEST}.", dir=out)
    with os.fdopen(fd, "w", encoding="utf-8") as fh:
        json.dump(state, fh, indent=1, sort_keys=True)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, out / MANIFEST)


def _remove_unlisted(out: Path, parts: dict[str, list[str]]) -> None:
    listed = {n for names in parts.values() for n in names}
    for folder in out.iterdir():
        if not folder.is_dir():
            continue
        for f in folder.iterdir():
            rel = f"{folder.name}/{f.name}"
            if rel not in listed and (_PART.match(f.name) or f.name.endswith(".partial")):
                f.unlink()


@dataclass(frozen=True)
class WarehouseSource:
    """An analytics ``Source`` over a ``sync`` folder: the newest version of each resource, no tombstones."""

    path: Path

    def relation(self, con: object, resource_type: str) -> str:
        names = read_manifest(self.path)["parts"].get(resource_type) or []
        if not names:
            return "(SELECT CAST(NULL AS JSON) AS resource WHERE FALSE)"
        latest = _latest([self.path / n for n in names], keep_deleted=False)
        return f"(SELECT CAST(resource AS JSON) AS resource FROM {latest})"
