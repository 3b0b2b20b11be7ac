"""The ``medcloud`` command line: parse arguments, build Settings, call into the package."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated, Any

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
    no_auth: Annotated[bool, typer.Option("--no-auth", help="No access tokens: everyone is admin. "
                                          "Refused unless --host is loopback.")] = False,
    tls_cert: Annotated[Path | None, typer.Option("--tls-cert", help="PEM certificate (chain): serve https.")] = None,
    tls_key: Annotated[Path | None, typer.Option("--tls-key", help="PEM private key of --tls-cert.")] = None,
    dicom_port: Annotated[int | None, typer.Option("--dicom-port", help="DIMSE SCP port (default 11112; 0 = off).")
                          ] = None,
) -> None:
    """Run the server (FHIR R4 at /fhir, DICOMweb at /dicomweb); requires access tokens unless --no-auth."""
    import uvicorn

    from medcloud.app import SETTINGS_ENV, build_services
    from medcloud.security import startup

    settings = _settings(data_dir=data_dir, db=db, host=host, port=port, workers=workers,
                         auth=False if no_auth else None, tls_cert=tls_cert, tls_key=tls_key,
                         dicom_port=dicom_port)
    problems = startup.serve_problems(settings)
    for problem in problems:
        console.print(f"[red]cannot start:[/red] {problem}", highlight=False, soft_wrap=True)
    if problems:
        raise typer.Exit(2)
    startup.warn_if_open(settings)
    try:
        services = build_services(settings)  # migrate once here, before workers start
        try:
            auth_note = startup.admin_credentials(settings, services.db) if settings.auth else None
        finally:
            services.close()
    except Exception as e:  # unreachable database, bad URL, failed migration
        console.print(f"[red]cannot start:[/red] {e}")
        raise typer.Exit(1) from e
    base = f"{settings.public_base}/fhir"
    console.print(f"[bold green]medcloud[/bold green] FHIR R4 server at [bold]{base}[/bold]")
    console.print(f"  data: {settings.data_dir.resolve()}  database: {_safe_url(settings.db_url)}")
    if auth_note is None:
        console.print("  authentication: [bold red]OFF[/bold red] (--no-auth, loopback only)")
    else:
        console.print(f"  authentication: on; {auth_note}", highlight=False, soft_wrap=True)
    console.print(f"  try:  curl {base}/metadata")
    console.print(f"        medcloud load path/to/bundles --server {base}"
                  + ("" if auth_note is None else " --token $MEDCLOUD_TOKEN"))
    os.environ[SETTINGS_ENV] = settings.model_dump_json()
    from contextlib import ExitStack

    from medcloud.imaging.dimse.scp import running

    with ExitStack() as stack:
        # The DIMSE SCP lives in this process only: uvicorn --workers N starts N app processes, and
        # exactly one may bind the DICOM port (docs/imaging.md, DIMSE). A taken port does not stop
        # FHIR/DICOMweb; it is reported loudly.
        try:
            scp = stack.enter_context(running(settings))
        except OSError as e:
            scp = None
            console.print(f"  [bold red]DIMSE NOT STARTED:[/bold red] port {settings.dicom_port}: "
                          f"{e.strerror or e} (--dicom-port N to move it, 0 to turn it off)", highlight=False)
        if scp is not None:
            console.print(f"  DIMSE: AE {settings.dicom_ae_title} on {scp.host}:{scp.port}", highlight=False)
        _run_uvicorn(uvicorn, settings)


def _run_uvicorn(uvicorn: Any, settings: Settings) -> None:
    uvicorn.run(
        "medcloud.app:create_app_from_env",
        factory=True,
        host=settings.host,
        port=settings.port,
        workers=settings.workers,
        log_level=settings.log_level,
        access_log=False,
        ssl_certfile=str(settings.tls_cert) if settings.tls_cert else None,
        ssl_keyfile=str(settings.tls_key) if settings.tls_key else None,
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

    for module, name in (("medcloud.fhir.cli", None), ("medcloud.analytics.cli", "sof"),
                         ("medcloud.security.audit_cli", "audit"), ("medcloud.security.oauth.cli", "admin"),
                         ("medcloud.security.keys_cli", "keys"), ("medcloud.security.deid.cli", None),
                         ("medcloud.imaging.dimse.cli", "dicom"),
                         ("medcloud.analytics.cohort_cli", "cohort"), ("medcloud.analytics.stats_cli", "stats"),
                         ("medcloud.ai.cli", "ai"), ("medcloud.analytics.ml_cli", "ml"), ("medcloud.cds.cli", "cds")):
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
