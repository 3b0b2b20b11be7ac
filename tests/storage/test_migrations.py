"""The alembic migrations produce exactly the schema the code declares, on SQLite and PostgreSQL."""

from __future__ import annotations

from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import create_engine

from medcloud.storage.migrate import current, upgrade
from medcloud.storage.schema import metadata
from medcloud.storage.sql.database import Database


def test_upgrade_to_head_matches_the_declared_schema(backend):
    db = Database.connect(backend)
    try:
        upgrade(db)
        upgrade(db)  # idempotent
        assert current(db) is not None
        with db.engine.connect() as conn:
            diff = compare_metadata(MigrationContext.configure(conn), metadata)
        assert diff == [], f"schema drift between migrations and schema.py: {diff}"
    finally:
        db.dispose()


def test_db_upgrade_command_creates_a_fresh_sqlite_database(tmp_path):
    from typer.testing import CliRunner

    from medcloud.cli import app

    result = CliRunner().invoke(app, ["db", "upgrade", "--data-dir", str(tmp_path)])
    assert result.exit_code == 0, result.output
    eng = create_engine(f"sqlite:///{tmp_path / 'medcloud.db'}")
    with eng.connect() as c:
        assert {"resources", "resource_history", "idx_token", "jobs"} <= set(
            r[0] for r in c.exec_driver_sql("SELECT name FROM sqlite_master WHERE type='table'")
        )
    eng.dispose()
