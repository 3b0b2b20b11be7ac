"""What CLI commands that work on a store share: resolve the settings, open and migrate the database.

Configuration and connection problems are printed on the command's console and exit 2.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

import typer
from rich.console import Console

if TYPE_CHECKING:
    from medcloud.config import Settings
    from medcloud.storage.sql.database import Database


@contextmanager
def open_store(data_dir: Path | None, db: str | None, console: Console) -> Iterator[tuple[Settings, Database]]:
    """Settings (flags over env/toml) and a migrated database, disposed of on exit."""
    from sqlalchemy.exc import SQLAlchemyError

    from medcloud.config import Settings
    from medcloud.storage.migrate import upgrade
    from medcloud.storage.sql.database import Database

    try:
        settings = Settings().with_overrides(data_dir=data_dir, db=db)
    except Exception as e:  # pydantic ValidationError: bad env/toml/flag values
        console.print(f"[red]invalid configuration:[/red] {e}")
        raise typer.Exit(2) from e
    database = Database.connect(settings.db_url, pool_size=1)
    try:
        try:
            upgrade(database)
        except (SQLAlchemyError, OSError) as e:
            console.print(f"[red]cannot open the database:[/red] {str(e).splitlines()[0]}")
            raise typer.Exit(2) from e
        yield settings, database
    finally:
        database.dispose()
