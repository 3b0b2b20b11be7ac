"""``medcloud ai``: the model registry from the shell (models, register, activate, remove).

Works on the store directly (``--data-dir`` / ``--db``), like ``medcloud admin``. Exit codes:
0 ok, 1 refused (bad package, unknown model, conflict), 2 configuration or database problem.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, TypeVar

import orjson
import typer
from rich.console import Console
from rich.table import Table

from medcloud.errors import MedcloudError

app = typer.Typer(name="ai", no_args_is_help=True, help="AI model registry: ONNX model packages.")
console = Console(stderr=True, soft_wrap=True)
out = Console(soft_wrap=True)

DataDir = Annotated[Path | None, typer.Option("--data-dir", help="Data directory (SQLite database, files).")]
DbUrl = Annotated[str | None, typer.Option("--db", help="Database URL, e.g. postgresql://user@host/db.")]
T = TypeVar("T")

if TYPE_CHECKING:  # the registry (SQLAlchemy, onnx) is imported when a command runs, not at start-up
    from medcloud.ai.registry import Registry


@contextmanager
def registry(data_dir: Path | None, db: str | None) -> Iterator[Registry]:
    """The registry of a store (migrated first); configuration and connection problems exit 2."""
    from sqlalchemy.exc import SQLAlchemyError

    from medcloud.ai.registry import Registry
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
        yield Registry(database)
    finally:
        database.dispose()


def _run(action: Callable[[], T]) -> T:
    try:
        return action()
    except MedcloudError as e:
        console.print(f"[red]error:[/red] {e.message}", highlight=False)
        raise typer.Exit(1) from e


@app.command("models")
def models(
    name: Annotated[str | None, typer.Argument(help="Only this model's versions.")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="JSON on standard output (with manifests).")] = False,
    data_dir: DataDir = None,
    db: DbUrl = None,
) -> None:
    """List registered model versions; the active one of each name is marked."""
    with registry(data_dir, db) as reg:
        versions = reg.list(name)
    if as_json:
        out.print_json(orjson.dumps([v.to_json() for v in versions]).decode())
        return
    table = Table(title=f"{len(versions)} model version(s)")
    for column in ("name", "version", "active", "task", "labels", "model sha256", "size", "registered"):
        table.add_column(column, overflow="fold")
    for v in versions:
        table.add_row(v.name, v.version, "[green]active[/green]" if v.active else "", v.task,
                      ", ".join(v.manifest.get("labels", [])), v.sha256[:16], f"{v.size:,}",
                      v.to_json()["registered"])
    Console(width=160).print(table)


@app.command("register")
def register(
    package: Annotated[Path, typer.Argument(help="Package directory, .zip or .tar.gz.")],
    activate: Annotated[bool, typer.Option("--activate", help="Make it the active version of its name.")] = False,
    sha256: Annotated[str | None, typer.Option("--sha256", help="Expected package digest (refused if "
                                                                 "different).")] = None,
    data_dir: DataDir = None,
    db: DbUrl = None,
) -> None:
    """Check a model package and register it as a new version."""
    from medcloud.ai import package as packages

    pkg = _run(lambda: packages.read(package, expected_sha256=sha256))
    with registry(data_dir, db) as reg:
        version = _run(lambda: reg.register(pkg, activate=activate, by="cli"))
    console.print(f"registered {version.name} {version.version}" + (" (active)" if version.active else "")
                  + f", package sha256 {version.package_sha256}", highlight=False)


@app.command("activate")
def activate(
    name: Annotated[str, typer.Argument(help="Model name.")],
    version: Annotated[str, typer.Argument(help="The version to serve from now on.")],
    data_dir: DataDir = None,
    db: DbUrl = None,
) -> None:
    """Make one version the active version of its name."""
    with registry(data_dir, db) as reg:
        _run(lambda: reg.activate(name, version))
    console.print(f"{name} {version} is active", highlight=False)


@app.command("remove")
def remove(
    name: Annotated[str, typer.Argument(help="Model name.")],
    version: Annotated[str, typer.Argument(help="The version to delete.")],
    force: Annotated[bool, typer.Option("--force", help="Remove even the active version.")] = False,
    data_dir: DataDir = None,
    db: DbUrl = None,
) -> None:
    """Delete one version and its package."""
    with registry(data_dir, db) as reg:
        _run(lambda: reg.remove(name, version, force=force))
    console.print(f"removed {name} {version}", highlight=False)
