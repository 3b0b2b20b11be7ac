"""Engine creation and transaction scopes for SQLite (WAL) and PostgreSQL (psycopg 3)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from sqlalchemy import Connection, Engine, create_engine, event

from medcloud.storage.schema import metadata
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
                url, pool_size=pool_size, max_overflow=pool_size * 2, pool_pre_ping=True,
            )
        return cls(engine)

    @property
    def is_sqlite(self) -> bool:
        return self.dialect.name == "sqlite"

    def create_all(self) -> None:
        metadata.create_all(self.engine)

    @contextmanager
    def write(self) -> Iterator[Connection]:
        """A read-write transaction (SQLite: BEGIN IMMEDIATE, so writers queue instead of failing)."""
        with self.engine.connect().execution_options(medcloud_write=True) as conn, conn.begin():
            yield conn

    @contextmanager
    def read(self) -> Iterator[Connection]:
        """A read-only transaction: one consistent snapshot for everything read inside it."""
        with self.engine.connect() as conn, conn.begin():
            yield conn

    def dispose(self) -> None:
        self.engine.dispose()


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
        if conn.get_execution_options().get("medcloud_write"):
            conn.exec_driver_sql("BEGIN IMMEDIATE")
        else:
            conn.exec_driver_sql("BEGIN")
