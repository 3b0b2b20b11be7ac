"""Alembic environment: runs on the connection medcloud hands over (see storage/migrate.py)."""

from __future__ import annotations

from alembic import context
from sqlalchemy import create_engine

from medcloud.storage.schema import metadata

config = context.config


def run() -> None:
    conn = config.attributes.get("connection")
    if conn is None:
        engine = create_engine(config.get_main_option("sqlalchemy.url") or "")
        with engine.begin() as c:
            context.configure(connection=c, target_metadata=metadata, render_as_batch=c.dialect.name == "sqlite")
            context.run_migrations()
        return
    context.configure(connection=conn, target_metadata=metadata, render_as_batch=conn.dialect.name == "sqlite")
    context.run_migrations()


run()
