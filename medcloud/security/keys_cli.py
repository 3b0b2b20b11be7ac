"""``medcloud keys rotate|status``: the key ring for encryption at rest (docs/security.md)."""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console

app = typer.Typer(no_args_is_help=True, help="Encryption-at-rest keys: rotate the KEK, show the key ring.")
console = Console(stderr=True)

DataDir = Annotated[Path | None, typer.Option("--data-dir", help="Data directory (SQLite database, files).")]
DbUrl = Annotated[str | None, typer.Option("--db", help="Database URL, e.g. postgresql://user@host/db.")]


def _open(data_dir: Path | None, db: str | None) -> tuple[Any, Any]:
    from medcloud.config import Settings
    from medcloud.errors import MedcloudError
    from medcloud.security.at_rest import master_key_file
    from medcloud.security.keys import KeyStore
    from medcloud.storage.migrate import upgrade
    from medcloud.storage.sql.database import Database

    try:
        settings = Settings().with_overrides(data_dir=data_dir, db=db)
    except Exception as e:  # pydantic ValidationError: bad env/toml/flag values
        console.print(f"[red]invalid configuration:[/red] {e}")
        raise typer.Exit(2) from e
    database = Database.connect(settings.db_url)
    try:
        upgrade(database)
        return settings, KeyStore.open(database, master_key_file(settings))
    except MedcloudError as e:
        database.dispose()
        console.print(f"[red]cannot open the key ring:[/red] {e.message}", highlight=False)
        raise typer.Exit(1) from e
    except Exception as e:  # unreachable database, bad URL
        database.dispose()
        console.print(f"[red]cannot open the database:[/red] {e}", highlight=False)
        raise typer.Exit(1) from e


@app.command()
def rotate(
    data_dir: DataDir = None,
    db: DbUrl = None,
    grace: Annotated[float | None, typer.Option(help="Seconds to wait for running servers to load the new "
                                                     "KEK before re-wrapping (default: key cache TTL + 1).")] = None,
) -> None:
    """Create a new KEK version, re-wrap every blob's data key under it, retire the old versions.

    Safe while servers run; resumable: if interrupted, run it again.
    """
    from medcloud.errors import MedcloudError
    from medcloud.security.keys import CACHE_TTL
    from medcloud.security.rotation import ROTATION, blob_locations
    from medcloud.security.rotation import rotate as run_rotation

    settings, keys = _open(data_dir, db)
    try:
        resuming = keys.get_state(ROTATION) is not None
        console.print("resuming the interrupted rotation" if resuming else "creating a new KEK version")
        report = run_rotation(keys, blob_locations(settings), grace=CACHE_TTL + 1.0 if grace is None else grace,
                              on_wait=lambda message: console.print(message, highlight=False))
    except MedcloudError as e:
        console.print(f"[red]rotation stopped:[/red] {e.message}", highlight=False)
        raise typer.Exit(1) from e
    finally:
        keys.db.dispose()
    console.print(f"KEK version {report.target} is current: {report.rewrapped} file(s) re-wrapped, "
                  f"{report.current} now under it, {report.plaintext} plaintext (not encrypted), "
                  f"{report.passes} pass(es)", highlight=False)
    for problem in report.failed[:20]:
        console.print(f"[red]failed[/red] {problem}", highlight=False, soft_wrap=True)
    if report.failed:
        console.print(f"[red]{len(report.failed)} file(s) could not be re-wrapped; the old KEK versions stay "
                      "active. Fix or remove those files and run `medcloud keys rotate` again.[/red]")
        raise typer.Exit(1)
    if report.superseded:
        console.print("a newer KEK version was created meanwhile (another rotation); nothing retired: "
                      "run `medcloud keys rotate` again once it has finished")
    elif not report.retired:
        console.print("no older KEK version was active")
    else:
        console.print(f"retired KEK version(s) {', '.join(map(str, report.retired))}")


@app.command()
def status(data_dir: DataDir = None, db: DbUrl = None) -> None:
    """KEK versions (current, active, retired), an unfinished rotation, and files per KEK."""
    from medcloud.errors import MedcloudError
    from medcloud.security.rotation import ROTATION, blob_locations, census

    settings, keys = _open(data_dir, db)
    try:
        versions = keys.versions()
        rotation = keys.get_state(ROTATION)
        counts = census(blob_locations(settings))
    except MedcloudError as e:  # the object store (blob_store = "s3://...") is unreachable
        console.print(f"[red]cannot count the blobs:[/red] {e.message}", highlight=False)
        raise typer.Exit(1) from e
    finally:
        keys.db.dispose()
    current = max((v.version for v in versions if v.status == "active"), default=None)
    typer.echo(f"master key: {keys.source} (id {keys.root_kid.hex()})")
    for v in versions:
        created = dt.datetime.fromtimestamp(v.created, tz=dt.UTC).strftime("%Y-%m-%d %H:%M:%SZ")
        mark = "current" if v.version == current else v.status
        typer.echo(f"  KEK {v.version:>3}  id {v.kid.hex()}  {mark:<8} created {created}  "
                   f"files {counts.get(v.kid.hex(), 0)}")
    unknown = {k: n for k, n in counts.items() if k != "plaintext" and k not in {v.kid.hex() for v in versions}}
    for kid, n in unknown.items():
        typer.echo(f"  unknown id {kid}: {n} file(s) cannot be opened")
    typer.echo(f"  plaintext files (written before encryption): {counts.get('plaintext', 0)}")
    if rotation is not None:
        typer.echo(f"rotation to KEK {rotation.get('target')} is unfinished: run `medcloud keys rotate` to complete it")
