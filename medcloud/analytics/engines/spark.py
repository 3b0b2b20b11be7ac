"""Run ViewDefinitions on Apache Spark: each view is compiled to one Spark SQL statement
(``spark_view.py``) over a relation of FHIR resources as JSON text; nothing runs row by row in Python.

pyspark is optional (``pip install medcloud[spark]``): this module imports it only when an engine is
built, so ``available()`` can answer without it. Local mode by default (``local[2]``, no UI); pass a
``master`` URL (``spark://host:7077``) or an existing ``SparkSession`` in production. Nothing is
downloaded at run time: only what the pyspark wheel ships (VARIANT / ``parse_json`` need Spark 4.0+).
"""

from __future__ import annotations

import contextlib
import csv
import importlib.util
import itertools
import json
import re
import shutil
import tempfile
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from medcloud.analytics.engines._duckdb_view import REPEAT_DEPTH
from medcloud.analytics.engines._sources import (
    NdjsonSource,
    ParquetSource,
    ResourcesSource,
    Source,
    find_bad_lines,
)
from medcloud.analytics.engines.duckdb import OutputFormat, ViewResult, WriteResult, _column_type
from medcloud.analytics.engines.spark_view import compile_view
from medcloud.analytics.errors import BadLine, EngineUnavailable, EvaluationError, SourceError
from medcloud.analytics.fhirpath.to_spark import sql_str
from medcloud.analytics.viewdef import ViewDefinition, parse_view

if TYPE_CHECKING:
    from pyspark.sql import DataFrame, SparkSession

__all__ = ["SparkEngine", "available", "local_session"]

_views = itertools.count(1)
_SPARK_TYPES = {"VARCHAR": "STRING", "INTEGER": "INT", "TIMESTAMPTZ": "TIMESTAMP", "BLOB": "BINARY"}


def available() -> bool:
    """True when pyspark is importable."""
    return importlib.util.find_spec("pyspark") is not None


def local_session(
    master: str = "local[2]", app_name: str = "medcloud-sof", conf: Mapping[str, str] | None = None
) -> SparkSession:
    """A small SparkSession: no UI, 2 shuffle partitions, 1 GB driver (tests and single machines);
    ``conf`` adds or overrides Spark settings."""
    if not available():
        raise EngineUnavailable("the Spark engine needs pyspark (pip install 'medcloud[spark]')")
    from pyspark.sql import SparkSession

    builder = (
        SparkSession.builder.master(master)
        .appName(app_name)
        .config("spark.ui.enabled", "false")
        .config("spark.sql.shuffle.partitions", "2")
        .config("spark.driver.memory", "1g")
        .config("spark.sql.session.timeZone", "UTC")
        .config("spark.ui.showConsoleProgress", "false")
        .config("spark.default.parallelism", "2")
    )
    for key, value in (conf or {}).items():
        builder = builder.config(key, value)
    session = builder.getOrCreate()
    session.sparkContext.setLogLevel("FATAL")
    return session


def _typed(cell: str, sql_type: str | None) -> str:
    if sql_type is None:
        return cell
    sql_type = _SPARK_TYPES.get(sql_type, sql_type)
    value = f"try_variant_get(parse_json({cell}), '$', 'string')"
    if sql_type == "STRING":  # a JSON string unquoted; numbers, booleans, objects as their JSON text
        return f"CASE WHEN startswith({cell}, '\"') THEN {value} ELSE {cell} END"
    if sql_type == "BINARY":
        return f"unbase64({value})"
    return f"CAST({value} AS {sql_type})"


def _q(name: str) -> str:
    return "`" + name.replace("`", "``") + "`"


class SparkEngine:
    """Compile views to Spark SQL and run them over a Source (same API as ``DuckDBEngine``)."""

    name = "spark"

    def __init__(
        self,
        session: SparkSession | None = None,
        *,
        master: str | None = None,
        repeat_depth: int = REPEAT_DEPTH,
    ) -> None:
        if session is None and available():
            from pyspark.sql import SparkSession

            # getOrCreate() hands back a session that is already running: stop only one we started.
            self._owns_session = SparkSession.getActiveSession() is None
        else:
            self._owns_session = False
        self.spark = session if session is not None else local_session(master or "local[2]")
        self.repeat_depth = repeat_depth
        # repeat is unrolled into nested lambdas; resolving them takes more analyzer rounds than
        # Spark's default 100.
        self.spark.conf.set("spark.sql.analyzer.maxIterations", "1000")
        # ResourcesSource.table (unique per instance) -> temp view. Not id(source): a collected
        # source's id is reused by the next one, which would then read the old resources.
        self._tables: dict[str, str] = {}
        self._spools: dict[str, Path] = {}  # temp view -> the folder spooled for it

    def close(self) -> None:
        for table in self._tables.values():
            self.spark.catalog.dropTempView(table)
        self._tables.clear()
        for folder in self._spools.values():
            shutil.rmtree(folder, ignore_errors=True)
        self._spools.clear()
        if self._owns_session:
            self.spark.stop()

    def __enter__(self) -> SparkEngine:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @staticmethod
    def view(view: ViewDefinition | dict[str, Any]) -> ViewDefinition:
        return view if isinstance(view, ViewDefinition) else parse_view(view)

    # -- sources -------------------------------------------------------------------------------
    def relation(self, source: Source, resource_type: str) -> str:
        """A temp view with a STRING column ``resource`` holding (at least) that type's resources."""
        if isinstance(source, ResourcesSource):
            key = source.table
            if key not in self._tables:
                self._tables[key] = self._register(self._local(source.resources))
            return self._tables[key]
        if isinstance(source, NdjsonSource | ParquetSource):
            return self._register(self._frame(source, resource_type))
        # The store and a ``sync`` warehouse are DuckDB relations (keyset batches out of SQLite/
        # PostgreSQL; newest version per id): spooled once to a Parquet file Spark reads, removed
        # when the call ends.
        folder = self._spool(source, resource_type)
        name = self._register(self.spark.read.parquet(str(folder)))
        self._spools[name] = folder
        return name

    def _spool(self, source: Source, resource_type: str) -> Path:
        import duckdb

        from medcloud.analytics.fhirpath._sqltext import sql_str as duck_str

        folder = Path(tempfile.mkdtemp(prefix="medcloud-spark-spool-"))
        con = duckdb.connect(":memory:")
        try:
            relation = source.relation(con, resource_type)
            target = folder / f"{resource_type}.parquet"
            con.execute(f"COPY (SELECT CAST(resource AS VARCHAR) AS resource FROM {relation} AS spool__) "
                        f"TO {duck_str(str(target))} (FORMAT parquet)")
        except BaseException:
            shutil.rmtree(folder, ignore_errors=True)
            raise
        finally:
            con.close()
        return folder

    def _local(self, resources: Sequence[dict[str, Any]]) -> DataFrame:
        # An inline VALUES list is a LocalRelation: it stays in the JVM (createDataFrame on a Python
        # list would start Python workers for every query) and small views are evaluated on the driver.
        if not resources:
            return self.spark.sql("SELECT CAST(NULL AS STRING) AS resource WHERE FALSE")
        values = ", ".join(f"({sql_str(json.dumps(r, separators=(',', ':')))})" for r in resources)
        return self.spark.sql(f"SELECT resource FROM VALUES {values} AS t(resource)")

    def _frame(self, source: Source, resource_type: str) -> DataFrame:
        if isinstance(source, NdjsonSource):
            files = source.files(resource_type)
            if not files:
                return self._local([])
            lines = self.spark.read.text([str(f) for f in files])
            return lines.selectExpr("value AS resource").where("trim(resource) <> ''")
        if isinstance(source, ParquetSource):
            from medcloud.analytics.engines._sources import _for_type, _list

            files = _list(list(source.paths), (".parquet",))
            if not files:
                raise SourceError(f"no Parquet files in {', '.join(map(str, source.paths))}")
            typed = _for_type(files, resource_type)
            if not typed:
                return self._local([])
            return self.spark.read.parquet(*[str(f) for f in typed]).selectExpr(
                "CAST(resource AS STRING) AS resource"
            )
        raise SourceError(f"the Spark engine cannot read {type(source).__name__}")  # pragma: no cover

    def _register(self, df: DataFrame) -> str:
        name = f"medcloud_resources_{next(_views)}"
        df.createOrReplaceTempView(name)
        return name

    def _bad_lines(self, source: Source, view: ViewDefinition, table: str) -> tuple[BadLine, ...]:
        """Malformed NDJSON lines: one counting pass in Spark, file:line detail only when there are any."""
        if not isinstance(source, NdjsonSource):
            return ()
        row = self.spark.sql(
            f"SELECT count(*) AS n FROM {table} WHERE try_parse_json(resource) IS NULL "
            "OR try_variant_get(try_parse_json(resource), '$.resourceType', 'string') IS NULL"
        ).first()
        if not row or not row["n"]:
            return ()
        bad = find_bad_lines(source.files(view.resource)) or (BadLine("?", 0, "malformed JSON"),)
        if source.on_error == "fail":
            raise SourceError("malformed NDJSON input (use on_error='skip' to leave such lines out)", bad)
        return bad

    # -- running -------------------------------------------------------------------------------
    def sql(
        self, view: ViewDefinition | dict[str, Any], source: Source, *, typed: bool = False
    ) -> tuple[str, tuple[str, ...]]:
        """The Spark SQL SELECT that produces the view's rows (JSON text cells unless ``typed``)."""
        return self._sql(self.view(view), self.relation(source, self.view(view).resource), typed)

    def _sql(self, v: ViewDefinition, table: str, typed: bool) -> tuple[str, tuple[str, ...]]:
        query, columns = compile_view(v, table, self.repeat_depth)
        if not typed:
            return query, columns
        by_name = {c.name: c for c in v.columns}
        cells = ", ".join(f"{_typed(_q(c), _column_type(by_name[c]))} AS {_q(c)}" for c in columns)
        return f"SELECT {cells} FROM ({query}) AS view__", columns

    def run(
        self, view: ViewDefinition | dict[str, Any], source: Source | Sequence[dict[str, Any]]
    ) -> ViewResult:
        """Rows as dicts of JSON values (FHIR JSON representation of each cell)."""
        src: Source = (
            ResourcesSource(tuple(source)) if isinstance(source, list | tuple) else source  # type: ignore[assignment]
        )
        v = self.view(view)
        table = self.relation(src, v.resource)
        try:
            skipped = self._bad_lines(src, v, table)
            query, columns = self._sql(v, table, typed=False)
            with _errors():
                records = self.spark.sql(query).collect()
        finally:
            self._release(src, table, made_here=src is not source)
        rows = [
            {c: (None if x is None else json.loads(x)) for c, x in zip(columns, rec, strict=True)}
            for rec in records
        ]
        return ViewResult(columns, rows, skipped)

    def _release(self, source: Source, table: str, made_here: bool = False) -> None:
        """Drop a per-call temp view; in-memory sources keep theirs until close() unless made here."""
        if isinstance(source, ResourcesSource) and not made_here:
            return
        if isinstance(source, ResourcesSource):
            self._tables.pop(source.table, None)
        self.spark.catalog.dropTempView(table)
        spooled = self._spools.pop(table, None)
        if spooled is not None:
            shutil.rmtree(spooled, ignore_errors=True)

    def write(
        self, view: ViewDefinition | dict[str, Any], source: Source, out: str | Path, fmt: OutputFormat
    ) -> WriteResult:
        """Write the view to one file ``out``; nothing is left at ``out`` when the run fails."""
        v = self.view(view)
        out = Path(out)
        table = self.relation(source, v.resource)
        try:
            return self._write(v, source, table, out, fmt)
        finally:
            self._release(source, table)

    def _write(
        self, v: ViewDefinition, source: Source, table: str, out: Path, fmt: OutputFormat
    ) -> WriteResult:
        skipped = self._bad_lines(source, v, table)
        query, columns = self._sql(v, table, typed=fmt in ("csv", "parquet"))
        if fmt in ("ndjson", "json"):
            members = ", ".join(
                f"concat({sql_str(json.dumps(c) + ':')}, coalesce({_q(c)}, 'null'))" for c in columns
            )
            query = f"SELECT concat('{{', concat_ws(',', {members}), '}}') AS value FROM ({query}) AS rows__"
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".partial", dir=out.parent))
        try:
            # No repartition(1): the view is a narrow plan (project/generate), so part-NNNNN files
            # follow the input splits in order and concatenating them keeps the source's row order
            # (the DuckDB engine's order) while every core works.
            df = self.spark.sql(query)
            with _errors():
                writer = df.write.mode("overwrite")
                if fmt == "csv":
                    writer.options(**_CSV_OPTIONS).csv(str(tmp / "d"))
                elif fmt == "parquet":
                    writer.parquet(str(tmp / "d"))
                else:
                    writer.text(str(tmp / "d"))
            parts = sorted(p for p in (tmp / "d").iterdir() if p.name.startswith("part-"))
            rows = self._assemble(parts, tmp / "out", fmt, columns)
            (tmp / "out").replace(out)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        return WriteResult(out, rows, skipped)

    def _assemble(self, parts: list[Path], target: Path, fmt: OutputFormat, columns: tuple[str, ...]) -> int:
        if fmt == "parquet":
            return _merge_parquet(parts, target)
        rows = 0
        with target.open("w", encoding="utf-8", newline="") as dst:
            if fmt == "json":
                dst.write("[")
            if fmt == "csv":
                # Spark writes the header into every part file; write it once, as DuckDB does.
                w = csv.writer(dst, lineterminator="\n")
                w.writerow(columns)
            for part in parts:
                with part.open(encoding="utf-8", newline="") as src:
                    for k, line in enumerate(src):
                        if fmt == "csv" and k == 0:
                            continue
                        if fmt == "json":
                            dst.write(("," if rows else "") + "\n" + line.rstrip("\n"))
                        else:
                            dst.write(line)
                        rows += 1
            if fmt == "json":
                dst.write("\n]\n")
        return rows


# RFC 4180 as DuckDB's COPY writes it: quote only when needed, "" inside quotes, keep whitespace,
# an empty string as "" and NULL as nothing. Spark's writer defaults differ on all of these
# (backslash escapes, trimmed whitespace).
_CSV_OPTIONS = {
    "header": "true",
    "quote": '"',
    "escape": '"',
    "ignoreLeadingWhiteSpace": "false",
    "ignoreTrailingWhiteSpace": "false",
    "nullValue": "",
    "emptyValue": '""',
    "lineSep": "\n",
}


def _merge_parquet(parts: list[Path], target: Path) -> int:
    """One Parquet file from Spark's part files, in part order.

    DuckDB (a core dependency) rewrites them, so a view's Parquet file has the same schema and
    encoding on both engines; Spark's own part files carry Spark-only metadata.
    """
    import duckdb

    con = duckdb.connect(":memory:")
    try:
        if not parts:
            raise EvaluationError("Spark wrote no Parquet part file")
        files = "[" + ", ".join(sql_str(str(p)) for p in parts) + "]"
        copied = con.execute(
            f"COPY (SELECT * FROM read_parquet({files})) TO {sql_str(str(target))} (FORMAT parquet)"
        ).fetchone()
    finally:
        con.close()
    return int(copied[0]) if copied else 0


@contextlib.contextmanager
def _errors() -> Iterator[None]:
    """Errors the compiled SQL raises on purpose (``raise_error``) -> EvaluationError."""
    try:
        yield
    except Exception as exc:
        text = str(exc)
        if "USER_RAISED_EXCEPTION" not in text:
            raise
        match = re.search(r"\[USER_RAISED_EXCEPTION\]\s*(.*?)(?:\s+SQLSTATE:|$)", text, re.S)
        raise EvaluationError(match.group(1).strip() if match else text) from exc
