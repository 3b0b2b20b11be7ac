"""SQLQuery Libraries (SQL-on-FHIR v2 StructureDefinition-SQLQuery) and running them (``$sqlquery-run``).

A SQLQuery is a FHIR ``Library`` (type ``sql-query``) holding one SQL query over ViewDefinition
tables: ``relatedArtifact`` (``depends-on``) names each ViewDefinition and its table ``label``,
``parameter`` declares the ``:name`` placeholders (``use = in``), ``content`` carries the SQL
(base64 ``data``; a ``application/sql;dialect=duckdb`` variant is preferred, else the default
``application/sql``).

Running one (``execute``): each view is materialised as a DuckDB table under its label, the
connection is sandboxed (no file or network access, configuration locked; ``cohorts.sandbox``), the
query must be one SELECT, and its ``:name`` placeholders are bound as prepared-statement parameters
— never spliced into the text. Results are rows for ``_format=fhir`` (Parameters ``row`` parts typed
by the spec's SQL -> FHIR table) or a csv / json / ndjson / parquet file.
"""

from __future__ import annotations

import base64
import datetime as dt
import re
from collections.abc import Mapping
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Any

from medcloud.analytics.engines._sources import Source
from medcloud.errors import Invalid, Unprocessable
from medcloud.fhir.primitives import date_range

LIBRARY_TYPES = "https://sql-on-fhir.org/ig/CodeSystem/LibraryTypesCodes"
SQL_TEXT = "https://sql-on-fhir.org/ig/StructureDefinition/sql-text"
DIALECT = "duckdb"
PARAMETER_TYPES = {"string": "valueString", "integer": "valueInteger", "date": "valueDate",
                   "dateTime": "valueDateTime", "boolean": "valueBoolean", "decimal": "valueDecimal"}
_LABEL = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


@dataclass(frozen=True, slots=True)
class Dependency:
    label: str  # the table name in the SQL
    resource: str  # canonical URL or reference of the ViewDefinition


@dataclass(frozen=True, slots=True)
class SqlQuery:
    sql: str
    dependencies: tuple[Dependency, ...]
    parameters: Mapping[str, str]  # name -> FHIR type


def parse_library(library: Any, where: str = "Library") -> SqlQuery:
    """A SQLQuery from a Library resource; a malformed one raises Invalid (400) naming the element."""
    if not isinstance(library, dict) or library.get("resourceType") != "Library":
        raise Invalid("a SQLQuery is a Library resource", expression=where)
    codes = [c.get("code") for c in ((library.get("type") or {}).get("coding") or []) if isinstance(c, dict)]
    if "sql-query" not in codes:
        raise Invalid(f"the Library is not a SQLQuery: type must be {LIBRARY_TYPES}#sql-query", expression=f"{where}.type")
    deps: list[Dependency] = []
    for i, art in enumerate(library.get("relatedArtifact") or []):
        if not isinstance(art, dict) or art.get("type") != "depends-on":
            continue
        label, resource = art.get("label"), art.get("resource")
        at = f"{where}.relatedArtifact[{i}]"
        if not isinstance(label, str) or not _LABEL.match(label):
            raise Invalid("each ViewDefinition dependency needs a label that is an SQL identifier", expression=at)
        if not isinstance(resource, str) or not resource:
            raise Invalid("each ViewDefinition dependency needs a resource (its canonical URL)", expression=at)
        if label.lower() in {d.label.lower() for d in deps}:
            raise Invalid(f"the table label {label!r} is used twice", expression=at)
        deps.append(Dependency(label, resource))
    params: dict[str, str] = {}
    for i, p in enumerate(library.get("parameter") or []):
        at = f"{where}.parameter[{i}]"
        if not isinstance(p, dict) or p.get("use", "in") != "in":
            continue
        name, ptype = p.get("name"), p.get("type")
        if not isinstance(name, str) or not _LABEL.match(name):
            raise Invalid("each parameter needs a name that is an identifier", expression=at)
        if ptype not in PARAMETER_TYPES:
            raise Invalid(f"parameter {name}: type must be one of {', '.join(PARAMETER_TYPES)}", expression=at)
        params[name] = ptype
    return SqlQuery(_sql_text(library, where), tuple(deps), params)


def _sql_text(library: dict[str, Any], where: str) -> str:
    chosen: tuple[int, dict[str, Any]] | None = None
    for i, c in enumerate(library.get("content") or []):
        if not isinstance(c, dict):
            continue
        media = [x.strip().lower() for x in str(c.get("contentType") or "").split(";")]
        if media[0] != "application/sql":
            continue
        dialect = next((x.split("=", 1)[1].strip() for x in media[1:] if x.startswith("dialect=")), None)
        if dialect == DIALECT:
            chosen = (i, c)
            break
        if dialect is None and chosen is None:
            chosen = (i, c)
    if chosen is None:
        raise Invalid(f"the Library has no application/sql content (default or dialect={DIALECT})",
                      expression=f"{where}.content")
    i, content = chosen
    try:
        return base64.b64decode(str(content["data"]), validate=True).decode("utf-8")
    except (KeyError, ValueError, UnicodeDecodeError) as e:
        raise Invalid("content.data must hold the base64-encoded SQL", expression=f"{where}.content[{i}].data") from e


def bind(query: SqlQuery, given: Mapping[str, tuple[str, Any]]) -> dict[str, Any]:
    """Python values for the declared parameters from (value[x] key, value) pairs; 400 on any mismatch."""
    unknown = sorted(set(given) - set(query.parameters))
    if unknown:
        raise Invalid(f"unknown parameter(s) {', '.join(unknown)}; the query declares "
                      f"{', '.join(query.parameters) or 'none'}", expression="parameters")
    missing = sorted(set(query.parameters) - set(given))
    if missing:
        raise Invalid(f"missing parameter(s) {', '.join(missing)}", expression="parameters")
    out: dict[str, Any] = {}
    for name, ptype in query.parameters.items():
        key, value = given[name]
        if key != PARAMETER_TYPES[ptype]:
            raise Invalid(f"parameter {name} is declared {ptype}: give it as {PARAMETER_TYPES[ptype]}, not {key}",
                          expression="parameters")
        out[name] = _python(name, ptype, value)
    return out


def _python(name: str, ptype: str, value: Any) -> Any:
    bad = Invalid(f"parameter {name}: {value!r} is not a valid {ptype}", expression="parameters")
    if ptype == "boolean":
        if not isinstance(value, bool):
            raise bad
        return value
    if ptype == "integer":
        if isinstance(value, bool) or not isinstance(value, int):
            raise bad
        return value
    if ptype == "decimal":
        try:
            return Decimal(str(value))
        except InvalidOperation as e:
            raise bad from e
    if not isinstance(value, str):
        raise bad
    if ptype in ("date", "dateTime"):
        # Bound as ISO text: view columns of FHIR type date/dateTime are text (partial dates are valid
        # FHIR), and ISO-8601 text of one precision compares in date order; CAST(:d AS DATE) for a DATE.
        try:
            date_range(value)
        except Invalid as e:
            raise bad from e
    return value


def placeholders(sql: str, names: set[str]) -> str:
    """``:name`` -> DuckDB's ``$name`` for declared names where a value can start, outside string
    literals, quoted names and comments (``::`` casts and slices such as ``x[1:n]`` are left alone)."""
    out: list[str] = []
    i, n = 0, len(sql)
    while i < n:
        ch = sql[i]
        if ch in ("'", '"'):
            j = i + 1
            while j < n and not (sql[j] == ch and (j + 1 >= n or sql[j + 1] != ch)):
                j += 2 if sql[j] == ch else 1
            out.append(sql[i:j + 1])
            i = j + 1
        elif sql.startswith("--", i):
            j = sql.find("\n", i)
            j = n if j < 0 else j
            out.append(sql[i:j])
            i = j
        elif sql.startswith("/*", i):
            j = sql.find("*/", i + 2)
            j = n if j < 0 else j + 2
            out.append(sql[i:j])
            i = j
        elif ch == ":" and not sql.startswith("::", i) and (i == 0 or sql[i - 1] != ":") and _operand_start(sql, i):
            m = re.match(r"[A-Za-z_][A-Za-z0-9_]*", sql[i + 1:])
            if m and m.group(0) in names:
                out.append("$" + m.group(0))
                i += 1 + len(m.group(0))
            else:
                out.append(ch)
                i += 1
        else:
            out.append(ch)
            i += 1
    return "".join(out)


def _operand_start(sql: str, i: int) -> bool:
    """Whether a ``:`` at ``i`` can start a value (after an operator, ``(``, ``,`` or a keyword's space),
    not continue one (``l[1:n]``, ``x):``, ``'a':``)."""
    before = sql[:i].rstrip()
    if not before:
        return True
    last = before[-1]
    if last.isalnum() or last == "_":  # "AND :p" (a keyword, then a space) or a slice bound "l[1:n]"
        word = re.search(r"[A-Za-z_][A-Za-z0-9_]*$", before)
        return word is not None and before != sql[:i] and word.group(0).upper() in _KEYWORDS
    return last not in ")]'\""


_KEYWORDS = frozenset({"AND", "OR", "NOT", "WHERE", "SELECT", "BY", "IN", "LIKE", "ILIKE", "THEN", "ELSE", "WHEN",
                       "BETWEEN", "IS", "ON", "HAVING", "LIMIT", "OFFSET", "CASE", "RETURN", "AS", "DISTINCT"})


@dataclass(frozen=True, slots=True)
class Result:
    columns: tuple[str, ...]
    types: tuple[str, ...]  # DuckDB type names
    frame: Any  # pandas.DataFrame


def execute(query: SqlQuery, tables: Mapping[str, tuple[Any, Source]], values: Mapping[str, Any]) -> Result:
    """Run ``query`` with each label -> (ViewDefinition, Source) materialised as a table; sandboxed."""
    import duckdb

    from medcloud.analytics.cohorts import sandbox
    from medcloud.analytics.engines.duckdb import DuckDBEngine

    with DuckDBEngine() as engine:
        for label, (view, source) in tables.items():
            sql, _ = engine.sql(view, source, typed=True)
            engine.con.execute(f'CREATE TEMP TABLE "{label}" AS {sql}')
        sandbox(engine.con)
        text = placeholders(query.sql, set(query.parameters))
        try:
            statements = engine.con.extract_statements(text)
        except duckdb.Error as e:
            raise Invalid(f"the SQL does not parse: {str(e).splitlines()[0]}", expression="content") from e
        if len(statements) != 1 or statements[0].type != duckdb.StatementType.SELECT:
            raise Invalid("the SQL must be exactly one SELECT statement", expression="content")
        try:
            cur = engine.con.execute(text, dict(values))
            columns = tuple(d[0] for d in cur.description or [])
            types = tuple(str(d[1]) for d in cur.description or [])
            frame = cur.df()
        except duckdb.Error as e:
            raise Unprocessable(f"the SQL failed: {str(e).splitlines()[0]}") from e
    return Result(columns, types, frame)


# ISO SQL -> FHIR value[x] (OperationDefinition-SQLQueryRun, "SQL to FHIR type mapping"); DuckDB spellings.
_FHIR_TYPES = {
    "BOOLEAN": "valueBoolean", "TINYINT": "valueInteger", "SMALLINT": "valueInteger", "INTEGER": "valueInteger",
    "UTINYINT": "valueInteger", "USMALLINT": "valueInteger", "BIGINT": "valueInteger64",
    "UINTEGER": "valueInteger64", "FLOAT": "valueDecimal", "DOUBLE": "valueDecimal", "VARCHAR": "valueString",
    "JSON": "valueString", "BLOB": "valueBase64Binary", "DATE": "valueDate", "TIME": "valueTime",
    "TIMESTAMP": "valueDateTime", "TIMESTAMP WITH TIME ZONE": "valueInstant",
}


def _fhir_type(sql_type: str) -> str | None:
    if sql_type.startswith("DECIMAL"):
        return "valueDecimal"
    return _FHIR_TYPES.get(sql_type)


def to_parameters(result: Result) -> dict[str, Any]:
    """``_format=fhir``: one ``row`` per result row, NULLs omitted; an unmappable column type is 422."""
    kinds = []
    for name, sql_type in zip(result.columns, result.types, strict=True):
        kind = _fhir_type(sql_type)
        if kind is None:
            raise Unprocessable(f"column {name!r} has SQL type {sql_type}, which has no FHIR type; cast it in the "
                                "query (for example to VARCHAR)")
        kinds.append(kind)
    rows = []
    for record in result.frame.itertuples(index=False, name=None):
        parts = [{"name": name, kind: _fhir_value(kind, value)}
                 for name, kind, value in zip(result.columns, kinds, record, strict=True) if not _is_null(value)]
        rows.append({"name": "row", "part": parts})
    out: dict[str, Any] = {"resourceType": "Parameters"}
    if rows:
        out["parameter"] = rows
    return out


def _is_null(value: Any) -> bool:
    import pandas as pd

    try:
        return bool(pd.isna(value))
    except (TypeError, ValueError):
        return False


def _fhir_value(kind: str, value: Any) -> Any:
    if kind == "valueBoolean":
        return bool(value)
    if kind == "valueInteger":
        return int(value)
    if kind == "valueInteger64":
        return str(int(value))  # integer64 is a JSON string (FHIR R5 datatypes)
    if kind == "valueDecimal":
        return float(value) if not isinstance(value, Decimal) else value
    if kind == "valueBase64Binary":
        return base64.b64encode(bytes(value)).decode("ascii")
    if kind == "valueDate":
        return value.isoformat()[:10] if hasattr(value, "isoformat") else str(value)
    if kind == "valueTime":
        return value.isoformat() if hasattr(value, "isoformat") else str(value)
    if kind == "valueDateTime":
        return value.to_pydatetime().replace(tzinfo=None).isoformat() if hasattr(value, "to_pydatetime") \
            else value.isoformat()
    if kind == "valueInstant":
        stamp = value.to_pydatetime() if hasattr(value, "to_pydatetime") else value
        stamp = stamp.astimezone(dt.UTC)
        millis = round(stamp.microsecond / 1000)
        stamp = stamp.replace(microsecond=0) + dt.timedelta(milliseconds=millis)
        return stamp.strftime("%Y-%m-%dT%H:%M:%S.") + f"{stamp.microsecond // 1000:03d}Z"
    return str(value)


def write(result: Result, out: Path, fmt: str, *, header: bool = True) -> None:
    """The result as a csv / json / ndjson / parquet file (an unsandboxed connection of its own)."""
    import duckdb

    options = {"csv": f"FORMAT csv, HEADER {'true' if header else 'false'}", "parquet": "FORMAT parquet",
               "ndjson": "FORMAT json", "json": "FORMAT json, ARRAY true"}[fmt]
    con = duckdb.connect(":memory:")
    try:
        con.register("__result", result.frame)
        # pandas widened some types (DATE -> timestamp, DECIMAL -> double): cast back to the query's types.
        cells = ", ".join(f'CAST("{c.replace(chr(34), chr(34) * 2)}" AS {t}) AS "{c.replace(chr(34), chr(34) * 2)}"'
                          for c, t in zip(result.columns, result.types, strict=True))
        target = str(out).replace(chr(39), chr(39) * 2)
        con.execute(f"COPY (SELECT {cells or '*'} FROM __result) TO '{target}' ({options})")
    finally:
        con.close()
