"""Engine creation and transaction scopes for SQLite (WAL) and PostgreSQL (psycopg 3)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from sqlalchemy import Connection, Engine, create_engine, event
from sqlalchemy.sql import ClauseElement

from medcloud.storage.sql.dialect import Dialect, dialect_for


class Database:
    """A SQLAlchemy engine plus its dialect seam. ``write()`` and ``read()`` open transactions."""

    def __init__(self, engine: Engine):
        self.engine = engine
        self.dialect: Dialect = dialect_for(engine.dialect.name)

    @classmethod
    def connect(cls, url: str, *, pool_size: int = 8) -> Database:
        if url.startswith("sqlite"):
            path = url.split("///", 1)[1] if "///" in url else ""
            if path and path != ":memory:":
                Path(path).parent.mkdir(parents=True, exist_ok=True)
            engine = create_engine(
                url, connect_args={"check_same_thread": False, "timeout": 60}, pool_size=pool_size,
                max_overflow=pool_size * 2,
            )
            _configure_sqlite(engine)
        else:
            engine = create_engine(
                # No pre-ping: it costs a round trip per checkout; a dropped connection surfaces as
                # OperationalError (503, retry) and SQLAlchemy invalidates the pool on disconnects.
                url, pool_size=pool_size, max_overflow=pool_size * 2, pool_recycle=3600,
                # psycopg prepares a statement run 5 times, and PostgreSQL then may switch it to a
                # generic plan that ignores the values: for searches over skewed index tables that
                # turned 40 ms into 3-7 s (a nested loop over a whole patient's references).
                connect_args={"options": "-c plan_cache_mode=force_custom_plan"},
            )
        return cls(engine)

    @property
    def is_sqlite(self) -> bool:
        return self.dialect.name == "sqlite"

    @contextmanager
    def write(self) -> Iterator[Connection]:
        """A read-write transaction (SQLite: BEGIN IMMEDIATE, so writers queue instead of failing)."""
        with self.engine.connect().execution_options(medcloud_write=True) as conn, conn.begin():
            yield conn

    @contextmanager
    def read(self, *, snapshot: bool = True) -> Iterator[Connection]:
        """A read-only transaction: one consistent snapshot for everything read inside it.

        ``snapshot=False`` is for requests that run a single statement (read by id): no
        BEGIN/COMMIT round trips, the statement is atomic on its own.
        """
        if snapshot:
            with self.engine.connect() as conn, conn.begin():
                yield conn
        elif self.is_sqlite:
            with self.engine.connect().execution_options(medcloud_autocommit=True) as conn:
                yield conn
        else:
            with self.engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
                yield conn

    def dispose(self) -> None:
        self.engine.dispose()

    def analyze(self, *, vacuum: bool = False) -> None:
        """Refresh the query planner's statistics (search plans depend on them).

        SQLite: a sampled ``ANALYZE`` (``analysis_limit``: ~20 ms on 120k resources) under
        ``BEGIN IMMEDIATE``. Not ``PRAGMA optimize``: SQLite 3.40's never analyzes a table that has
        no statistics yet, so after a bulk load it did nothing; and a plain ``ANALYZE`` fails with
        "database is locked" when a writer commits between its read and its write (it did on every
        try during a bulk load), while ``BEGIN IMMEDIATE`` waits for the write lock (busy_timeout).
        PostgreSQL: ``ANALYZE``, since autovacuum may be off or lag behind bulk loads; ``vacuum``
        makes it ``VACUUM (ANALYZE)``, which also sets the visibility map so that searches answer
        rid sets and counts by index-only scans instead of a heap visit per row (5 s for 117k
        resources: for after a bulk load, not during it). SQLite ignores ``vacuum``.
        """
        if self.is_sqlite:
            raw = self.engine.raw_connection()
            try:
                cur = raw.cursor()
                cur.execute("PRAGMA analysis_limit=1000")
                cur.execute("BEGIN IMMEDIATE")
                try:
                    cur.execute("ANALYZE")
                    cur.execute("COMMIT")
                except BaseException:
                    cur.execute("ROLLBACK")
                    raise
                finally:
                    cur.close()
            finally:
                raw.close()
            return
        with self.engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
            conn.exec_driver_sql("VACUUM (ANALYZE)" if vacuum else "ANALYZE")

    def prepared(self, stmt: ClauseElement) -> Prepared:
        return Prepared(self, stmt)


class Prepared:
    """A Core statement compiled once for this engine and run on a raw pooled DBAPI connection.

    For the hottest single-statement reads (read by id): SQLAlchemy's per-execution bookkeeping
    costs ~10x the query itself there. Same SQL text as the Core path, no transaction (one
    statement is atomic on its own); rows come back as plain tuples without type processing.
    """

    def __init__(self, db: Database, stmt: ClauseElement):
        compiled: Any = stmt.compile(dialect=db.engine.dialect)  # a SQLCompiler: .positional, .positiontup
        self._db = db
        self._sql = str(compiled)
        self._order = tuple(compiled.positiontup) if compiled.positional and compiled.positiontup else None
        self._pg = not db.is_sqlite

    def first(self, params: dict[str, Any]) -> tuple[Any, ...] | None:
        args: Any = tuple(params[n] for n in self._order) if self._order is not None else params
        raw = self._db.engine.raw_connection()
        try:
            if self._pg:
                raw.driver_connection.autocommit = True  # type: ignore[union-attr]
            cur = raw.cursor()
            try:
                cur.execute(self._sql, args)
                row = cur.fetchone()
            finally:
                cur.close()
            if self._pg:
                raw.driver_connection.autocommit = False  # type: ignore[union-attr]
        finally:
            raw.close()
        return tuple(row) if row is not None else None


def _configure_sqlite(engine: Engine) -> None:
    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_conn: Any, _record: Any) -> None:
        # Take transaction control away from the sqlite3 module so BEGIN is ours (see "begin" below).
        dbapi_conn.isolation_level = None
        cur = dbapi_conn.cursor()
        cur.execute("PRAGMA journal_mode=WAL")
        cur.execute("PRAGMA synchronous=NORMAL")
        cur.execute("PRAGMA busy_timeout=60000")
        cur.execute("PRAGMA cache_size=-65536")
        cur.execute("PRAGMA mmap_size=268435456")
        cur.execute("PRAGMA temp_store=MEMORY")
        cur.close()

    @event.listens_for(engine, "begin")
    def _on_begin(conn: Connection) -> None:
        opts = conn.get_execution_options()
        if opts.get("medcloud_write"):
            conn.exec_driver_sql("BEGIN IMMEDIATE")
        elif not opts.get("medcloud_autocommit"):
            conn.exec_driver_sql("BEGIN")
