"""Read current resources of one type straight out of the store, for DuckDB (no HTTP, no export files).

Rows come in keyset batches on ``rid`` (never OFFSET, never the whole type in memory), each batch in
its own short read transaction, as the Bulk export does (``fhir/operations/_export_run.py``). The
caller's authorization is applied twice, like search: in SQL (a patient-confined read filter limits
the rows to that patient's compartment) and per row (``admit``, the guard's ``can_read``).
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

from sqlalchemy import ColumnElement, or_, select

from medcloud.storage.resources import Stored, current_join
from medcloud.storage.schema import compartments, resource_history, resources
from medcloud.storage.sql.database import Database

BATCH = 1000
_tables = itertools.count(1)

Admit = Callable[[Stored], bool]


@dataclass(frozen=True, slots=True)
class StoreQuery:
    """Which current resources of ``rtype`` to read.

    ``patients``: only members of these Patient compartments (None: no confinement);
    ``since``: only resources last updated after this instant (µs since the epoch).
    """

    rtype: str
    patients: tuple[str, ...] | None = None
    since: int | None = None


def batches(db: Database, q: StoreQuery, *, admit: Admit | None = None, batch: int = BATCH) -> Iterator[list[bytes]]:
    """The stored JSON of each matching resource, ``batch`` rows at a time (filtered by ``admit``)."""
    after = 0
    while True:
        with db.read() as conn:
            rows = [Stored(*r) for r in conn.execute(_query(q, after, batch))]
        if not rows:
            return
        after = rows[-1].rid
        kept = [bytes(s.content) for s in rows if s.content is not None and (admit is None or admit(s))]
        if kept:
            yield kept


def _query(q: StoreQuery, after: int, limit: int) -> Any:
    stmt = (
        select(resources.c.rid, resources.c.type, resources.c.id, resources.c.version, resources.c.last_updated,
               resources.c.deleted, resource_history.c.content)
        .select_from(current_join())
        .where(resources.c.type == q.rtype, resources.c.deleted.is_(False), resources.c.rid > after)
        .order_by(resources.c.rid)
        .limit(limit)
    )
    if q.since is not None:
        stmt = stmt.where(resources.c.last_updated > q.since)
    if q.patients is not None:
        members = select(compartments.c.rid).where(
            compartments.c.comp_type == "Patient", compartments.c.type == q.rtype,
            compartments.c.comp_id.in_(q.patients))
        cond: ColumnElement[bool] = resources.c.rid.in_(members)
        if q.rtype == "Patient":  # a Patient is in its own compartment by id
            cond = or_(cond, resources.c.id.in_(q.patients))
        stmt = stmt.where(cond)
    return stmt


@dataclass(frozen=True)
class StoreSource:
    """An analytics ``Source`` over the store: the batches are copied once into a DuckDB temp table."""

    db: Database
    query: StoreQuery
    admit: Admit | None = None

    def relation(self, con: object, resource_type: str) -> str:
        import duckdb

        assert isinstance(con, duckdb.DuckDBPyConnection)
        name = f"__store_{next(_tables)}"
        con.execute(f"CREATE TEMP TABLE {name} (resource JSON)")
        if resource_type == self.query.rtype:
            for chunk in batches(self.db, self.query, admit=self.admit):
                con.execute(f"INSERT INTO {name} SELECT CAST(unnest(?) AS JSON)",
                            [[c.decode("utf-8") for c in chunk]])
        return name
