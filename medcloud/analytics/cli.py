"""``sof``: run SQL-on-FHIR views and the conformance suite from the shell.

Mounted by medcloud/cli.py as ``medcloud sof``. Exit codes: 0 ok, 1 conformance failures,
2 engine not available, 3 invalid input (view, FHIRPath, data), 4 evaluation error.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from collections.abc import Iterator
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from medcloud.analytics.conformance import report, run_suite
from medcloud.analytics.engines._sources import ResourcesSource, Source, source_from_path
from medcloud.analytics.engines.duckdb import DuckDBEngine
from medcloud.analytics.errors import EngineUnavailable, EvaluationError, SourceError
from medcloud.errors import Invalid, MedcloudError

if TYPE_CHECKING:
    from medcloud.analytics.engines.spark import SparkEngine
    from medcloud.analytics.remote import Credentials
    from medcloud.storage.sql.database import Database

app = typer.Typer(name="sof", help="SQL-on-FHIR v2 views on DuckDB or Spark.", no_args_is_help=True)


class Engine(StrEnum):
    duckdb = "duckdb"
    spark = "spark"


class Format(StrEnum):
    csv = "csv"
    parquet = "parquet"
    ndjson = "ndjson"
    json = "json"


class OnError(StrEnum):
    fail = "fail"
    skip = "skip"


def _engine(engine: Engine, spark_master: str | None = None) -> DuckDBEngine | SparkEngine:
    if engine is Engine.spark:
        from medcloud.analytics.engines.spark import SparkEngine, available

        if not available():
            typer.echo("the Spark engine needs pyspark (pip install 'medcloud[spark]')", err=True)
            raise typer.Exit(2)
        try:
            return SparkEngine(master=spark_master)
        except EngineUnavailable as exc:
            typer.echo(str(exc), err=True)
            raise typer.Exit(2) from exc
    return DuckDBEngine()


SparkMaster = Annotated[
    str | None,
    typer.Option("--spark-master", help="Spark master URL for --engine spark (default local[2])"),
]


DbOption = Annotated[str | None, typer.Option("--db", help="database URL of a medcloud store (PostgreSQL)")]
TokenOption = Annotated[str | None, typer.Option("--token", help="bearer token for a server URL source "
                                                 "(default $MEDCLOUD_TOKEN)")]
ClientIdOption = Annotated[str | None, typer.Option("--client-id", help="client_credentials: client id")]
ClientSecretOption = Annotated[str | None, typer.Option("--client-secret", help="client_credentials: secret",
                                                        envvar="MEDCLOUD_CLIENT_SECRET")]
TokenUrlOption = Annotated[str | None, typer.Option("--token-url", help="token endpoint (default: from the "
                                                    "server's .well-known/smart-configuration)")]
ScopeOption = Annotated[str, typer.Option("--scope", help="scopes to ask for with client_credentials")]
_EMPTY = ResourcesSource(())


@app.command("test")
def test(
    path: Annotated[Path, typer.Argument(exists=True, help="a conformance test file or a folder of them")],
    report_file: Annotated[
        Path | None, typer.Option("--report", help="write the official test report JSON")
    ] = None,
    engine: Annotated[Engine, typer.Option(help="view runner")] = Engine.duckdb,
    spark_master: SparkMaster = None,
) -> None:
    """Run SQL-on-FHIR conformance tests; exit 1 when any test fails."""
    with _engine(engine, spark_master) as runner:
        results = run_suite(path, runner)
    if report_file is not None:
        _atomic_write(report_file, json.dumps(report(results), indent=2) + "\n")
    failed = [r for r in results if not r.passed]
    for r in failed:
        typer.echo(f"FAIL {r.file}: {r.name}: {r.reason}", err=True)
    typer.echo(f"{len(results) - len(failed)}/{len(results)} passed ({engine.value})")
    if failed:
        raise typer.Exit(1)


@app.command("run")
def run(
    view_file: Annotated[Path, typer.Argument(exists=True, dir_okay=False, help="ViewDefinition JSON")],
    source: Annotated[str, typer.Option(help="a medcloud data dir, a FHIR server URL, a `sof sync` folder, "
                                             "or an NDJSON/Parquet file/folder")],
    out: Annotated[Path, typer.Option(help="output file")],
    fmt: Annotated[Format, typer.Option("--format", help="output format")] = Format.csv,
    on_error: Annotated[
        OnError, typer.Option(help="malformed NDJSON lines: fail the run or skip them")
    ] = OnError.fail,
    engine: Annotated[Engine, typer.Option(help="view runner")] = Engine.duckdb,
    spark_master: SparkMaster = None,
    db: DbOption = None,
    token: TokenOption = None,
    client_id: ClientIdOption = None,
    client_secret: ClientSecretOption = None,
    token_url: TokenUrlOption = None,
    scope: ScopeOption = "system/*.rs",
) -> None:
    """Run one ViewDefinition over a data dir, a server, a sync folder or NDJSON/Parquet, and write the rows."""
    try:
        view = json.loads(view_file.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        typer.echo(f"{view_file}: not JSON: {exc}", err=True)
        raise typer.Exit(3) from exc
    from medcloud.analytics.remote import Credentials

    creds = Credentials(token or os.environ.get("MEDCLOUD_TOKEN"), client_id, client_secret, token_url, scope)
    try:
        with _source(source, view, on_error, db, creds) as src, _engine(engine, spark_master) as runner:
            result = runner.write(view, src, out, fmt.value)
    except Invalid as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(3) from exc
    except (EvaluationError, MedcloudError) as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(4) from exc
    for bad in result.skipped:
        typer.echo(f"skipped {bad}", err=True)
    typer.echo(f"{result.rows} rows -> {out}")


@contextlib.contextmanager
def _source(spec: str, view: object, on_error: OnError, db_url: str | None, creds: Credentials) -> Iterator[Source]:
    """The Source for ``--source``: server URL, sync folder, medcloud data dir (or --db), NDJSON/Parquet."""
    from medcloud.analytics.server import warehouse

    if spec.startswith(("http://", "https://")):
        from medcloud.analytics.engines._sources import NdjsonSource
        from medcloud.analytics.remote import fetch
        from medcloud.analytics.viewdef import parse_view

        rtype = parse_view(view).resource if isinstance(view, dict) else ""
        with tempfile.TemporaryDirectory(prefix="medcloud-sof-") as tmp:
            got = fetch(spec, rtype, Path(tmp), creds)
            for note in got.notes:
                typer.echo(note, err=True)
            yield NdjsonSource(tuple(got.files), on_error.value) if got.files else _EMPTY
        return
    path = Path(spec)
    if not path.exists() and db_url is None:
        raise SourceError(f"{spec}: no such file or directory")
    if path.is_dir() and warehouse.is_warehouse(path):
        yield warehouse.WarehouseSource(path)
        return
    if db_url is not None or (path / "medcloud.db").is_file():
        with _store(path, db_url) as database:
            from medcloud.analytics.server.store import StoreQuery, StoreSource
            from medcloud.analytics.viewdef import parse_view

            rtype = parse_view(view).resource if isinstance(view, dict) else ""
            yield StoreSource(database, StoreQuery(rtype))
        return
    yield source_from_path(path, on_error.value)


@contextlib.contextmanager
def _store(data_dir: Path, db_url: str | None) -> Iterator[Database]:
    """The medcloud store of a data dir (or --db), read directly: no server, no HTTP."""
    from medcloud.config import Settings
    from medcloud.storage.sql.database import Database

    settings = Settings(data_dir=data_dir, db=db_url) if db_url else Settings(data_dir=data_dir)
    database = Database.connect(settings.db_url, pool_size=2)
    try:
        yield database
    finally:
        database.dispose()


@app.command("sync")
def sync(
    data_dir: Annotated[Path, typer.Option("--data-dir", help="medcloud data dir (its SQLite store)")] = Path(
        "./medcloud-data"),
    out: Annotated[Path, typer.Option(help="Parquet folder to create or bring up to date")] = Path("warehouse"),
    db: DbOption = None,
) -> None:
    """Copy the store into Parquet once, then only what changed since the last run (by _lastUpdated)."""
    from medcloud.analytics.server.warehouse import sync as run_sync

    if db is None and not (data_dir / "medcloud.db").is_file():
        typer.echo(f"error: {data_dir} holds no medcloud store (medcloud.db); give --data-dir or --db", err=True)
        raise typer.Exit(3)
    try:
        with _store(data_dir, db) as database:
            result = run_sync(database, out)
    except MedcloudError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(3) from exc
    for rtype in sorted(result.changed):
        typer.echo(f"{rtype}: {result.changed[rtype]} changed ({result.deleted[rtype]} deleted)")
    typer.echo(f"up to date -> {out}" + (f" (compacted {', '.join(result.compacted)})" if result.compacted else ""))


def _atomic_write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    with os.fdopen(fd, "w", encoding="utf-8") as fh:
        fh.write(text)
    os.replace(tmp, path)
