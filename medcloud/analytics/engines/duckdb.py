"""Run ViewDefinitions on DuckDB (embedded, in-process).

Uses only the extensions built into the DuckDB wheel (json, parquet); nothing is installed or
loaded at run time. Every engine owns an explicit connection, never DuckDB's module-level default
(DuckDB Python DB API, "Default Connection").
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import tempfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import duckdb

from medcloud.analytics.engines._duckdb_view import REPEAT_DEPTH, compile_view
from medcloud.analytics.engines._sources import (
    NdjsonSource,
    OnError,
    ParquetSource,
    ResourcesSource,
    Source,
    find_bad_lines,
    source_from_path,
)
from medcloud.analytics.errors import BadLine, EvaluationError, SourceError
from medcloud.analytics.fhirpath._sqltext import MACROS, sql_str
from medcloud.analytics.viewdef import Column, ViewDefinition, parse_view

__all__ = [
    "DuckDBEngine",
    "NdjsonSource",
    "ParquetSource",
    "ResourcesSource",
    "ViewResult",
    "WriteResult",
    "source_from_path",
]

OutputFormat = Literal["csv", "parquet", "ndjson", "json"]

# Default FHIR type -> SQL type mapping ("Type Hinting with Tags", StructureDefinition-ViewDefinition-notes).
_FHIR_SQL_TYPES = {
    "boolean": "BOOLEAN",
    "integer": "INTEGER",
    "positiveInt": "INTEGER",
    "unsignedInt": "INTEGER",
    "integer64": "BIGINT",
    "instant": "TIMESTAMPTZ",
    "base64Binary": "BLOB",
}
_STRING_TYPES = {
    "canonical",
    "code",
    "date",
    "dateTime",
    "decimal",
    "id",
    "markdown",
    "oid",
    "string",
    "time",
    "uri",
    "url",
    "uuid",
}
_ANSI_TYPE = re.compile(r"^[A-Za-z][A-Za-z0-9 _]*(\(\s*\d+(\s*,\s*\d+)?\s*\))?$")


@dataclass(frozen=True, slots=True)
class ViewResult:
    columns: tuple[str, ...]
    rows: list[dict[str, Any]]
    skipped: tuple[BadLine, ...] = ()  # malformed input lines left out (NdjsonSource on_error="skip")


@dataclass(frozen=True, slots=True)
class WriteResult:
    path: Path
    rows: int
    skipped: tuple[BadLine, ...] = ()


def _column_type(col: Column) -> str | None:
    """The SQL type for a column, or None to keep the JSON cell (collections, complex types)."""
    for name, value in col.tags:
        if name == "ansi/type" and _ANSI_TYPE.match(value):
            return value.upper().replace("CHARACTER VARYING", "VARCHAR")
    if col.collection:
        return None
    fhir_type = (col.type or "string").rsplit("/", 1)[-1]
    if fhir_type in _FHIR_SQL_TYPES:
        return _FHIR_SQL_TYPES[fhir_type]
    if fhir_type in _STRING_TYPES:
        return "VARCHAR"
    return None


class DuckDBEngine:
    """Compile views to DuckDB SQL and run them over a Source."""

    name = "duckdb"

    def __init__(
        self, connection: duckdb.DuckDBPyConnection | None = None, *, repeat_depth: int = REPEAT_DEPTH,
        schema_aware: bool = True,
    ):
        self.con = connection if connection is not None else duckdb.connect(":memory:")
        self.repeat_depth = repeat_depth
        # False: read every element through the general collection path, for data that breaks the
        # R4 schema (an array where one value is allowed); docs/analytics.md "Schema-aware compilation".
        self.schema_aware = schema_aware
        for macro in MACROS:
            self.con.execute(macro)

    def close(self) -> None:
        self.con.close()

    def __enter__(self) -> DuckDBEngine:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @staticmethod
    def view(view: ViewDefinition | dict[str, Any]) -> ViewDefinition:
        return view if isinstance(view, ViewDefinition) else parse_view(view)

    def sql(
        self, view: ViewDefinition | dict[str, Any], source: Source, *, typed: bool = False
    ) -> tuple[str, tuple[str, ...]]:
        """The SELECT that produces the view's rows (JSON cells unless ``typed``)."""
        v = self.view(view)
        types = {c.name: _column_type(c) for c in v.columns} if typed else None
        return compile_view(v, source.relation(self.con, v.resource), self.repeat_depth, types, self.schema_aware)

    def run(
        self, view: ViewDefinition | dict[str, Any], source: Source | Sequence[dict[str, Any]]
    ) -> ViewResult:
        """Rows as dicts of JSON values (FHIR JSON representation of each cell)."""
        src = _as_source(source)
        try:
            query, columns = self.sql(view, src)
            with self._errors(src, self.view(view)):
                records = self.con.execute(query).fetchall()
        finally:
            if src is not source and isinstance(src, ResourcesSource):
                src.drop(self.con)  # a temp table made for this call only
        rows = [
            {c: (None if v is None else json.loads(v)) for c, v in zip(columns, rec, strict=True)}
            for rec in records
        ]
        return ViewResult(columns, rows, self._skipped(src, self.view(view)))

    def write(
        self, view: ViewDefinition | dict[str, Any], source: Source, out: str | Path, fmt: OutputFormat,
        *, limit: int | None = None, header: bool = True,
    ) -> WriteResult:
        """Write the view to ``out`` (at most ``limit`` rows; csv ``header`` line or not).

        Nothing is left at ``out`` when the run fails.
        """
        v = self.view(view)
        out = Path(out)
        query, _ = self.sql(v, source, typed=fmt in ("csv", "parquet"))
        if limit is not None:
            query = f"SELECT * FROM ({query}) AS __rows LIMIT {int(limit)}"
        options = {
            # COMMENT '': DuckDB would otherwise quote every value holding '#', which RFC 4180
            # does not ask for (and Spark's writer does not do).
            "csv": f"FORMAT csv, HEADER {'true' if header else 'false'}, COMMENT ''",
            "parquet": "FORMAT parquet",
            "ndjson": "FORMAT json",
            "json": "FORMAT json, ARRAY true",
        }[fmt]
        out.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{out.name}.", suffix=".partial", dir=out.parent)
        os.close(fd)
        try:
            with self._errors(source, v):
                copied = self.con.execute(f"COPY ({query}) TO {sql_str(tmp)} ({options})").fetchone()
            os.replace(tmp, out)
        finally:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
        return WriteResult(out, int(copied[0]) if copied else 0, self._skipped(source, v))

    def _skipped(self, source: Source, view: ViewDefinition) -> tuple[BadLine, ...]:
        if not isinstance(source, NdjsonSource) or source.on_error != "skip":
            return ()
        files = source.files(view.resource)
        if not files:
            return ()
        row = self.con.execute(
            f"SELECT count(*) FROM read_ndjson_objects([{', '.join(sql_str(str(f)) for f in files)}], "
            "ignore_errors = true) WHERE json IS NULL"
        ).fetchone()
        return find_bad_lines(files) if row and row[0] else ()

    @contextlib.contextmanager
    def _errors(self, source: Source, view: ViewDefinition) -> Iterator[None]:
        """DuckDB errors -> medcloud categories, with file:line detail for malformed NDJSON."""
        try:
            yield
        except (duckdb.InvalidInputException, duckdb.ConversionException, duckdb.OutOfRangeException) as exc:
            text = str(exc)
            if "Malformed JSON" in text and isinstance(source, NdjsonSource):
                bad = find_bad_lines(source.files(view.resource))
                raise SourceError(
                    "malformed NDJSON input (use on_error='skip' to leave such lines out)", bad
                ) from exc
            message = text.split("Error: ", 1)[-1].strip()
            raise EvaluationError(message) from exc
        except duckdb.IOException as exc:
            raise SourceError(str(exc)) from exc


def _q(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def _as_source(source: Source | Sequence[dict[str, Any]]) -> Source:
    if isinstance(source, list | tuple):
        return ResourcesSource(tuple(source))
    return source  # type: ignore[return-value]


def ndjson_to_parquet(source: str | Path, out_dir: str | Path, on_error: OnError = "fail") -> list[Path]:
    """Convert an NDJSON folder into one Parquet file per resource type with a ``resource`` column."""
    con = duckdb.connect(":memory:")
    try:
        src = source_from_path(source, on_error)
        if not isinstance(src, NdjsonSource):
            raise SourceError(f"{source}: expected NDJSON files")
        files = src.files()
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        rel = f"read_ndjson_objects([{', '.join(sql_str(str(f)) for f in files)}], ignore_errors = {str(on_error == 'skip').lower()})"
        types = [
            r[0]
            for r in con.execute(
                f"SELECT DISTINCT json ->> 'resourceType' FROM {rel} WHERE json IS NOT NULL ORDER BY 1"
            ).fetchall()
        ]
        written = []
        for t in types:
            target = out / f"{t}.parquet"
            con.execute(
                f"COPY (SELECT json AS resource FROM {rel} WHERE (json ->> 'resourceType') = {sql_str(t)}) "
                f"TO {sql_str(str(target))} (FORMAT parquet)"
            )
            written.append(target)
        return written
    finally:
        con.close()
