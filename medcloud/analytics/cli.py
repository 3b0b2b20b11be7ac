"""``sof``: run SQL-on-FHIR views and the conformance suite from the shell.

Mounted by medcloud/cli.py as ``medcloud sof``. Exit codes: 0 ok, 1 conformance failures,
2 engine not available, 3 invalid input (view, FHIRPath, data), 4 evaluation error.
"""

from __future__ import annotations

import json
import os
import tempfile
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from medcloud.analytics.conformance import report, run_suite
from medcloud.analytics.engines._sources import source_from_path
from medcloud.analytics.engines.duckdb import DuckDBEngine
from medcloud.analytics.errors import EngineUnavailable, EvaluationError
from medcloud.errors import Invalid, MedcloudError

if TYPE_CHECKING:
    from medcloud.analytics.engines.spark import SparkEngine

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
    source: Annotated[Path, typer.Option(exists=True, help="NDJSON or Parquet file/folder")],
    out: Annotated[Path, typer.Option(help="output file")],
    fmt: Annotated[Format, typer.Option("--format", help="output format")] = Format.csv,
    on_error: Annotated[
        OnError, typer.Option(help="malformed NDJSON lines: fail the run or skip them")
    ] = OnError.fail,
    engine: Annotated[Engine, typer.Option(help="view runner")] = Engine.duckdb,
    spark_master: SparkMaster = None,
) -> None:
    """Run one ViewDefinition over a folder of resources and write the rows."""
    try:
        view = json.loads(view_file.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        typer.echo(f"{view_file}: not JSON: {exc}", err=True)
        raise typer.Exit(3) from exc
    try:
        with _engine(engine, spark_master) as runner:
            result = runner.write(view, source_from_path(source, on_error.value), out, fmt.value)
    except Invalid as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(3) from exc
    except (EvaluationError, MedcloudError) as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(4) from exc
    for bad in result.skipped:
        typer.echo(f"skipped {bad}", err=True)
    typer.echo(f"{result.rows} rows -> {out}")


def _atomic_write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    with os.fdopen(fd, "w", encoding="utf-8") as fh:
        fh.write(text)
    os.replace(tmp, path)
