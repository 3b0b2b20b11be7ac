"""The ``medcloud`` command line: parse arguments, build Settings, call into the package."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from medcloud.config import Settings

app = typer.Typer(no_args_is_help=True, add_completion=False, help="medcloud: a self-hostable health-data cloud.")
db_app = typer.Typer(no_args_is_help=True, help="Database administration.")
app.add_typer(db_app, name="db")
console = Console(stderr=True)

DataDir = Annotated[Path | None, typer.Option("--data-dir", help="Data directory (SQLite database, files).")]
DbUrl = Annotated[str | None, typer.Option("--db", help="Database URL, e.g. postgresql://user@host/db.")]


def _settings(**overrides: object) -> Settings:
    try:
        return Settings().with_overrides(**overrides)
    except Exception as e:  # pydantic ValidationError: bad env/toml/flag values
        console.print(f"[red]invalid configuration:[/red] {e}")
        raise typer.Exit(2) from e


@app.command()
def serve(
    data_dir: DataDir = None,
    db: DbUrl = None,
    host: Annotated[str | None, typer.Option(help="Address to bind (default 127.0.0.1).")] = None,
    port: Annotated[int | None, typer.Option(help="HTTP port (default 8080).")] = None,
    workers: Annotated[int | None, typer.Option(help="Worker processes.")] = None,
) -> None:
    """Run the server (FHIR R4 at /fhir)."""
    import uvicorn

    from medcloud.app import SETTINGS_ENV, build_services

    settings = _settings(data_dir=data_dir, db=db, host=host, port=port, workers=workers)
    try:
        build_services(settings).close()  # migrate once here, before workers start
    except Exception as e:  # unreachable database, bad URL, failed migration
        console.print(f"[red]cannot start:[/red] {e}")
        raise typer.Exit(1) from e
    base = f"http://{settings.host}:{settings.port}/fhir"
    console.print(f"[bold green]medcloud[/bold green] FHIR R4 server at [bold]{base}[/bold]")
    console.print(f"  data: {settings.data_dir.resolve()}  database: {_safe_url(settings.db_url)}")
    console.print(f"  try:  curl {base}/metadata")
    console.print(f"        medcloud load path/to/bundles --server {base}")
    os.environ[SETTINGS_ENV] = settings.model_dump_json()
    uvicorn.run(
        "medcloud.app:create_app_from_env",
        factory=True,
        host=settings.host,
        port=settings.port,
        workers=settings.workers,
        log_level=settings.log_level,
        access_log=False,
    )


@db_app.command("upgrade")
def db_upgrade(data_dir: DataDir = None, db: DbUrl = None) -> None:
    """Create or migrate the database schema to the latest revision."""
    from medcloud.storage.migrate import current, upgrade
    from medcloud.storage.sql.database import Database

    settings = _settings(data_dir=data_dir, db=db)
    database = Database.connect(settings.db_url)
    try:
        upgrade(database)
        console.print(f"database at revision {current(database)}: {_safe_url(settings.db_url)}")
    except Exception as e:
        console.print(f"[red]upgrade failed:[/red] {e}")
        raise typer.Exit(1) from e
    finally:
        database.dispose()


def _safe_url(url: str) -> str:
    from sqlalchemy.engine import make_url

    return make_url(url).render_as_string(hide_password=True)


def _register_subcommands() -> None:
    """Capabilities add their own command groups (load/export, sof, ...) without touching this file's core."""
    import importlib

    for module, name in (("medcloud.fhir.cli", None), ("medcloud.analytics.cli", "sof")):
        try:
            mod = importlib.import_module(module)
        except ModuleNotFoundError as e:
            if e.name != module:
                raise
            continue
        if name is None:
            mod.register(app)
        else:
            app.add_typer(mod.app, name=name)


_register_subcommands()


def main() -> None:
    app(prog_name="medcloud")


if __name__ == "__main__":
    main()
