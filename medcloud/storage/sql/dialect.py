"""The few places where SQLite and PostgreSQL differ, answered by one small object each.

Everything else (every query builder in medcloud) is shared SQLAlchemy Core.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol

from sqlalchemy import Connection, Table, Text, text
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.compiler import compiles
from sqlalchemy.sql import Insert
from sqlalchemy.sql.functions import FunctionElement


class Dialect(Protocol):
    name: str

    def insert_ignore(self, table: Table) -> Insert: ...

    def upsert(self, table: Table, keys: list[str], update: list[str]) -> Any: ...

    def lock_key(self, conn: Connection, key: str) -> None:
        """Serialise writers that contend for ``key`` until the transaction ends."""

    def bulk_insert(self, conn: Connection, table: Table, columns: Sequence[str], rows: list[tuple[Any, ...]]) -> None:
        """Insert many plain tuples as fast as the driver allows (no per-row SQLAlchemy processing)."""


class SQLiteDialect:
    name = "sqlite"

    def insert_ignore(self, table: Table) -> Insert:
        return sqlite.insert(table).on_conflict_do_nothing()

    def upsert(self, table: Table, keys: list[str], update: list[str]) -> Any:
        stmt = sqlite.insert(table)
        return stmt.on_conflict_do_update(index_elements=keys, set_={c: stmt.excluded[c] for c in update})

    def lock_key(self, conn: Connection, key: str) -> None:
        # Write transactions start with BEGIN IMMEDIATE, so SQLite already has one writer at a time.
        return None

    def bulk_insert(self, conn: Connection, table: Table, columns: Sequence[str], rows: list[tuple[Any, ...]]) -> None:
        # The driver's executemany over one prepared statement: SQLAlchemy's per-row bookkeeping
        # costs ~30 µs a row, several times the insert itself.
        sql = f"INSERT INTO {table.name} ({', '.join(columns)}) VALUES ({', '.join('?' * len(columns))})"
        conn.exec_driver_sql(sql, rows)


class PostgresDialect:
    name = "postgresql"

    def insert_ignore(self, table: Table) -> Insert:
        return postgresql.insert(table).on_conflict_do_nothing()

    def upsert(self, table: Table, keys: list[str], update: list[str]) -> Any:
        stmt = postgresql.insert(table)
        return stmt.on_conflict_do_update(index_elements=keys, set_={c: stmt.excluded[c] for c in update})

    def lock_key(self, conn: Connection, key: str) -> None:
        conn.execute(text("SELECT pg_advisory_xact_lock(hashtextextended(:k, 0))"), {"k": key})

    def bulk_insert(self, conn: Connection, table: Table, columns: Sequence[str], rows: list[tuple[Any, ...]]) -> None:
        # COPY ... FROM STDIN inside the current transaction: ~4x cheaper than INSERT batches.
        cursor = conn.connection.dbapi_connection.cursor()  # type: ignore[union-attr]
        try:
            with cursor.copy(f"COPY {table.name} ({', '.join(columns)}) FROM STDIN") as copy:
                for row in rows:
                    copy.write_row(row)
        finally:
            cursor.close()


def dialect_for(name: str) -> Dialect:
    if name == "sqlite":
        return SQLiteDialect()
    if name == "postgresql":
        return PostgresDialect()
    raise ValueError(f"unsupported database dialect {name!r} (use SQLite or PostgreSQL)")


# ---------------------------------------------------------------- SQL functions that differ


class json_text(FunctionElement[str]):
    """The stored UTF-8 JSON bytes of a resource as text (``_content`` search)."""

    type = Text()
    inherit_cache = True
    name = "json_text"


class narrative_text(FunctionElement[str]):
    """``text.div`` of the stored JSON bytes of a resource, or NULL (``_text`` search)."""

    type = Text()
    inherit_cache = True
    name = "narrative_text"


@compiles(json_text, "sqlite")
def _json_text_sqlite(element: json_text, compiler: Any, **kw: Any) -> str:
    return f"CAST({compiler.process(element.clauses, **kw)} AS TEXT)"


@compiles(json_text, "postgresql")
def _json_text_pg(element: json_text, compiler: Any, **kw: Any) -> str:
    return f"convert_from({compiler.process(element.clauses, **kw)}, 'UTF8')"


@compiles(narrative_text, "sqlite")
def _narrative_sqlite(element: narrative_text, compiler: Any, **kw: Any) -> str:
    return f"json_extract(CAST({compiler.process(element.clauses, **kw)} AS TEXT), '$.text.div')"


@compiles(narrative_text, "postgresql")
def _narrative_pg(element: narrative_text, compiler: Any, **kw: Any) -> str:
    return f"(convert_from({compiler.process(element.clauses, **kw)}, 'UTF8')::jsonb -> 'text' ->> 'div')"
