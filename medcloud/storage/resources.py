"""The versioned resource store: current rows, full history, and their search-index rows.

All methods take an open ``Connection`` so that callers (one interaction, or a whole transaction
Bundle) decide the transaction boundary; nothing here commits.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from sqlalchemy import Connection, and_, bindparam, delete, func, insert, select, update

from medcloud.storage.schema import (
    INDEX_TABLES,
    compartments,
    resource_history,
    resources,
)
from medcloud.storage.sql.database import Database, Prepared
from medcloud.storage.sql.dialect import Dialect, dialect_for


class IndexEntriesLike(Protocol):
    string: list[tuple[Any, ...]]
    token: list[tuple[Any, ...]]
    date: list[tuple[Any, ...]]
    number: list[tuple[Any, ...]]
    quantity: list[tuple[Any, ...]]
    reference: list[tuple[Any, ...]]
    uri: list[tuple[Any, ...]]
    compartments: list[tuple[str, str]]


_INDEX_COLUMNS: dict[str, tuple[str, ...]] = {
    name: tuple(c.name for c in table.columns if c.name not in ("rid", "type"))
    for name, table in INDEX_TABLES.items()
}


@dataclass(frozen=True, slots=True)
class Stored:
    """One stored version of a resource (content is None for a delete)."""

    rid: int
    type: str
    id: str
    version: int
    last_updated: int  # microseconds since epoch
    deleted: bool
    content: bytes | None
    method: str = ""
    vid: int = 0


@dataclass(frozen=True, slots=True)
class NewVersion:
    """A version to write: ``content`` already carries id and meta (versionId, lastUpdated)."""

    type: str
    id: str
    version: int
    last_updated: int
    method: str
    content: bytes | None  # None = delete
    index: IndexEntriesLike | None


_HISTORY_INSERT = ("rid", "type", "id", "version", "last_updated", "method", "deleted", "content")

_CURRENT_COLS = (
    resources.c.rid,
    resources.c.type,
    resources.c.id,
    resources.c.version,
    resources.c.last_updated,
    resources.c.deleted,
    resource_history.c.content,
)

_HISTORY_COLS = (
    resource_history.c.rid,
    resource_history.c.type,
    resource_history.c.id,
    resource_history.c.version,
    resource_history.c.last_updated,
    resource_history.c.deleted,
    resource_history.c.content,
    resource_history.c.method,
    resource_history.c.vid,
)


def current_join():
    """``resources`` joined with the history row of each resource's current version."""
    return resources.join(
        resource_history,
        and_(resource_history.c.rid == resources.c.rid, resource_history.c.version == resources.c.version),
    )


# Built once: constructing Core expressions per request costs more than running them.
_READ = (
    select(*_CURRENT_COLS)
    .select_from(current_join())
    .where(resources.c.type == bindparam("t"), resources.c.id == bindparam("i"))
)
_READ_FOR_UPDATE = _READ.with_for_update(of=resources)
# A search reads each page this way; built once for the same reason (the rid list is expanded).
_READ_RIDS = (
    select(*_CURRENT_COLS)
    .select_from(current_join())
    .where(resources.c.rid.in_(bindparam("rids", expanding=True)), resources.c.deleted.is_(False))
)


class ResourceStore:
    """Reads and writes resource versions and their index rows on a caller-owned connection."""

    def __init__(self) -> None:
        self._prepared: dict[int, Prepared] = {}

    def read(self, conn: Connection, rtype: str, rid_id: str, *, lock: bool = False) -> Stored | None:
        row = conn.execute(_READ_FOR_UPDATE if lock else _READ, {"t": rtype, "i": rid_id}).first()
        return Stored(*row) if row else None

    def read_now(self, db: Database, rtype: str, rid_id: str) -> Stored | None:
        """``read`` as one statement outside any transaction: the fast path of read by id."""
        prepared = self._prepared.get(id(db))
        if prepared is None:
            prepared = self._prepared[id(db)] = db.prepared(_READ)
        row = prepared.first({"t": rtype, "i": rid_id})
        if row is None:
            return None
        rid, t, i, version, lu, deleted, content = row
        return Stored(rid, t, i, version, lu, bool(deleted), bytes(content) if content is not None else None)

    def read_many(self, conn: Connection, keys: Iterable[tuple[str, str]]) -> dict[tuple[str, str], Stored]:
        """Current versions (not deleted) of several (type, id) pairs."""
        by_type: dict[str, list[str]] = {}
        for t, i in keys:
            by_type.setdefault(t, []).append(i)
        out: dict[tuple[str, str], Stored] = {}
        for t, ids in by_type.items():
            for chunk in _chunks(ids, 500):
                stmt = (
                    select(*_CURRENT_COLS)
                    .select_from(current_join())
                    .where(resources.c.type == t, resources.c.id.in_(chunk), resources.c.deleted.is_(False))
                )
                for row in conn.execute(stmt):
                    s = Stored(*row)
                    out[(s.type, s.id)] = s
        return out

    def read_rids(self, conn: Connection, rids: Sequence[int]) -> list[Stored]:
        """Current versions of ``rids``, in the given order, skipping deleted ones."""
        found: dict[int, Stored] = {}
        for chunk in _chunks(list(rids), 500):
            for row in conn.execute(_READ_RIDS, {"rids": chunk}):
                found[row[0]] = Stored(*row)
        return [found[r] for r in rids if r in found]

    def vread(self, conn: Connection, rtype: str, rid_id: str, version: int) -> Stored | None:
        stmt = select(*_HISTORY_COLS).where(
            resource_history.c.type == rtype,
            resource_history.c.id == rid_id,
            resource_history.c.version == version,
        )
        row = conn.execute(stmt).first()
        return Stored(*row[:7], method=row[7], vid=row[8]) if row else None

    def write(self, conn: Connection, versions: Sequence[NewVersion]) -> list[int]:
        """Write new versions (creates, updates, deletes) in bulk; returns their rids in order.

        The caller has checked versions and preconditions under its lock; a create of an existing
        (type, id) violates the unique index and aborts the transaction.
        """
        if not versions:
            return []
        existing = self._existing_rids(conn, [(v.type, v.id) for v in versions if v.version > 1])
        rids: list[int] = [0] * len(versions)
        new_idx = [i for i, v in enumerate(versions) if (v.type, v.id) not in existing]
        if new_idx:
            rows = [
                {
                    "type": versions[i].type,
                    "id": versions[i].id,
                    "version": versions[i].version,
                    "last_updated": versions[i].last_updated,
                    "deleted": versions[i].content is None,
                }
                for i in new_idx
            ]
            result = conn.execute(
                insert(resources).returning(resources.c.rid, sort_by_parameter_order=True), rows
            )
            for i, rid in zip(new_idx, result.scalars().all(), strict=True):
                rids[i] = rid
        upd = []
        for i, v in enumerate(versions):
            if (v.type, v.id) in existing:
                rids[i] = existing[(v.type, v.id)]
                upd.append(
                    {"b_rid": rids[i], "b_version": v.version, "b_lu": v.last_updated, "b_deleted": v.content is None}
                )
        if upd:
            conn.execute(
                update(resources)
                .where(resources.c.rid == bindparam("b_rid"))
                .values(version=bindparam("b_version"), last_updated=bindparam("b_lu"), deleted=bindparam("b_deleted")),
                upd,
            )
            self.delete_index(conn, [u["b_rid"] for u in upd])
        self._dialect(conn).bulk_insert(
            conn,
            resource_history,
            _HISTORY_INSERT,
            [
                (rids[i], v.type, v.id, v.version, v.last_updated, v.method, v.content is None, v.content)
                for i, v in enumerate(versions)
            ],
        )
        self.write_index(conn, [(rids[i], v.type, v.index) for i, v in enumerate(versions) if v.index is not None])
        return rids

    def _existing_rids(self, conn: Connection, keys: list[tuple[str, str]]) -> dict[tuple[str, str], int]:
        out: dict[tuple[str, str], int] = {}
        by_type: dict[str, list[str]] = {}
        for t, i in keys:
            by_type.setdefault(t, []).append(i)
        for t, ids in by_type.items():
            for chunk in _chunks(ids, 500):
                q = select(resources.c.type, resources.c.id, resources.c.rid).where(
                    resources.c.type == t, resources.c.id.in_(chunk)
                )
                for rt, rid_id, rid in conn.execute(q):
                    out[(rt, rid_id)] = rid
        return out

    def write_index(self, conn: Connection, items: Sequence[tuple[int, str, IndexEntriesLike]]) -> None:
        per_table: dict[str, list[tuple[Any, ...]]] = {name: [] for name in INDEX_TABLES}
        comp_rows: list[tuple[Any, ...]] = []
        for rid, rtype, entries in items:
            for name in _INDEX_COLUMNS:
                rows = per_table[name]
                for tup in getattr(entries, name):
                    rows.append((rid, rtype, *tup))
            for comp_type, comp_id in entries.compartments:
                comp_rows.append((rid, rtype, comp_type, comp_id))
        dialect = self._dialect(conn)
        for name, rows in per_table.items():
            if rows:
                dialect.bulk_insert(conn, INDEX_TABLES[name], ("rid", "type", *_INDEX_COLUMNS[name]), rows)
        if comp_rows:
            dialect.bulk_insert(conn, compartments, ("rid", "type", "comp_type", "comp_id"), comp_rows)

    @staticmethod
    def _dialect(conn: Connection) -> Dialect:
        return dialect_for(conn.dialect.name)

    def delete_index(self, conn: Connection, rids: Sequence[int]) -> None:
        for chunk in _chunks(list(rids), 500):
            for table in (*INDEX_TABLES.values(), compartments):
                conn.execute(delete(table).where(table.c.rid.in_(chunk)))

    def history(
        self,
        conn: Connection,
        *,
        rtype: str | None = None,
        rid_id: str | None = None,
        since: int | None = None,
        at: int | None = None,
        before_vid: int | None = None,
        limit: int = 50,
    ) -> list[Stored]:
        """Versions newest first (by ``vid``), optionally for one type or resource, keyset-paged."""
        stmt = select(*_HISTORY_COLS)
        if rtype is not None:
            stmt = stmt.where(resource_history.c.type == rtype)
        if rid_id is not None:
            stmt = stmt.where(resource_history.c.id == rid_id)
        if since is not None:
            stmt = stmt.where(resource_history.c.last_updated >= since)
        if at is not None:
            # _at: each resource as it was at that instant, i.e. its newest version not after it.
            newest = select(func.max(resource_history.c.vid)).where(resource_history.c.last_updated <= at)
            if rtype is not None:
                newest = newest.where(resource_history.c.type == rtype)
            if rid_id is not None:
                newest = newest.where(resource_history.c.id == rid_id)
            stmt = stmt.where(resource_history.c.vid.in_(newest.group_by(resource_history.c.rid)))
        if before_vid is not None:
            stmt = stmt.where(resource_history.c.vid < before_vid)
        stmt = stmt.order_by(resource_history.c.vid.desc()).limit(limit)
        return [Stored(*row[:7], method=row[7], vid=row[8]) for row in conn.execute(stmt)]


def _chunks(items: list[Any], n: int) -> Iterable[list[Any]]:
    for i in range(0, len(items), n):
        yield items[i : i + n]
