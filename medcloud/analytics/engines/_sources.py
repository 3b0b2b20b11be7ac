"""Where resources come from: NDJSON files/folders, Parquet files/folders, or in-memory dicts.

Each source answers one question for the DuckDB engine: the SQL of a relation with a JSON column
``resource`` holding the resources of a given type (others may be present; the view filters them).
"""

from __future__ import annotations

import itertools
import json
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, Protocol

from medcloud.analytics.errors import BadLine, SourceError
from medcloud.analytics.fhirpath._sqltext import sql_str

OnError = Literal["fail", "skip"]
_tables = itertools.count(1)
_NDJSON_SUFFIXES = (".ndjson", ".ndjson.gz", ".jsonl", ".jsonl.gz")


class Source(Protocol):
    def relation(self, con: object, resource_type: str) -> str: ...


def _list(paths: Path | Sequence[Path], suffixes: tuple[str, ...]) -> list[Path]:
    items = [paths] if isinstance(paths, Path) else list(paths)
    out: list[Path] = []
    for p in items:
        if p.is_dir():
            out.extend(
                sorted(f for f in p.iterdir() if f.name.endswith(suffixes) and not f.name.startswith("."))
            )
        elif p.exists():
            out.append(p)
        else:
            raise SourceError(f"{p}: no such file or directory")
    return out


def _for_type(files: list[Path], resource_type: str) -> list[Path]:
    """Bulk-export layout (Patient.ndjson, Patient.000.ndjson, Patient-2.parquet): read only that type."""
    pattern = re.compile(rf"^{re.escape(resource_type)}(?:[.\-_]|$)")
    typed = [f for f in files if pattern.match(f.name)]
    named_by_type = all(re.match(r"^[A-Z][A-Za-z]+(?:[.\-_]|$)", f.name) for f in files)
    return typed if named_by_type else files


def _sql_list(files: Iterable[Path]) -> str:
    return "[" + ", ".join(sql_str(str(f)) for f in files) + "]"


@dataclass(frozen=True)
class NdjsonSource:
    """NDJSON files or folders. ``on_error``: "fail" refuses the run on a malformed line (reported
    with file and line number); "skip" leaves such lines out and records them in ``skipped``."""

    paths: tuple[Path, ...]
    on_error: OnError = "fail"

    def files(self, resource_type: str | None = None) -> list[Path]:
        files = _list(list(self.paths), _NDJSON_SUFFIXES)
        if not files:
            raise SourceError(f"no NDJSON files in {', '.join(map(str, self.paths))}")
        return files if resource_type is None else _for_type(files, resource_type)

    def relation(self, con: object, resource_type: str) -> str:
        files = self.files(resource_type)
        if not files:
            return "(SELECT CAST(NULL AS JSON) AS resource WHERE FALSE)"
        return (
            f"(SELECT json AS resource FROM read_ndjson_objects({_sql_list(files)}, "
            f"ignore_errors = {'true' if self.on_error == 'skip' else 'false'}))"
        )


def find_bad_lines(files: Iterable[Path], limit: int = 1000) -> tuple[BadLine, ...]:
    """Exact file:line of malformed NDJSON lines; run only after DuckDB reported a problem."""
    import gzip

    bad: list[BadLine] = []
    for f in files:
        opener = gzip.open if f.name.endswith(".gz") else open
        with opener(f, "rt", encoding="utf-8", errors="replace") as fh:
            for number, line in enumerate(fh, start=1):
                if not line.strip():
                    continue
                try:
                    value = json.loads(line)
                except json.JSONDecodeError as exc:
                    bad.append(BadLine(str(f), number, f"malformed JSON: {exc.msg} at column {exc.colno}"))
                else:
                    if not isinstance(value, dict) or "resourceType" not in value:
                        bad.append(BadLine(str(f), number, "not a FHIR resource (no resourceType)"))
                if len(bad) >= limit:
                    return tuple(bad)
    return tuple(bad)


@dataclass(frozen=True)
class ParquetSource:
    """Parquet files or folders with one row per resource in a JSON/VARCHAR column ``resource``
    (the layout ``ndjson_to_parquet`` writes)."""

    paths: tuple[Path, ...]

    def relation(self, con: object, resource_type: str) -> str:
        files = _list(list(self.paths), (".parquet",))
        if not files:
            raise SourceError(f"no Parquet files in {', '.join(map(str, self.paths))}")
        files = _for_type(files, resource_type)
        return (
            f"(SELECT resource FROM read_parquet({_sql_list(files)}))"
            if files
            else "(SELECT CAST(NULL AS JSON) AS resource WHERE FALSE)"
        )


@dataclass(frozen=True)
class ResourcesSource:
    """Resources already in memory (tests, the $run operation): copied once into a temp table."""

    resources: tuple[dict, ...]
    table: str = field(default_factory=lambda: f"__resources_{next(_tables)}", compare=False)

    def relation(self, con: object, resource_type: str) -> str:
        name = self.table
        import duckdb

        assert isinstance(con, duckdb.DuckDBPyConnection)
        exists = con.execute(
            "SELECT count(*) FROM duckdb_tables() WHERE table_name = ? AND temporary", [name]
        ).fetchone()
        if not exists or not exists[0]:
            con.execute(f"CREATE TEMP TABLE {name} (resource JSON)")
            texts = [json.dumps(r, separators=(",", ":")) for r in self.resources]
            if texts:
                con.execute(f"INSERT INTO {name} SELECT CAST(unnest(?) AS JSON)", [texts])
        return name

    def drop(self, con: object) -> None:
        import duckdb

        assert isinstance(con, duckdb.DuckDBPyConnection)
        con.execute(f"DROP TABLE IF EXISTS {self.table}")


def source_from_path(path: str | Path, on_error: OnError = "fail") -> Source:
    """An NDJSON or Parquet source for a file or folder, decided by the file names it holds."""
    p = Path(path)
    if not p.exists():
        raise SourceError(f"{p}: no such file or directory")
    names = [f.name for f in p.iterdir()] if p.is_dir() else [p.name]
    if any(n.endswith(".parquet") for n in names) and not any(n.endswith(_NDJSON_SUFFIXES) for n in names):
        return ParquetSource((p,))
    return NdjsonSource((p,), on_error)
