"""Compile a FHIRPath AST into one Spark SQL expression (the Spark twin of ``to_duckdb.py``).

Resources are Spark ``VARIANT`` values (``parse_json``, Spark 4.0+), the closest Spark type to
DuckDB's ``JSON``. The kinds mirror the DuckDB compiler one for one:

    COLL  ARRAY<VARIANT>   a collection (never NULL; empty array for ``{}``)
    ONE   VARIANT          at most one node (NULL for ``{}``)
    BOOL  BOOLEAN, STR STRING, NUM DOUBLE, INT BIGINT

Spark differs from DuckDB in ways that shape the SQL: lambda indexes and ``get()`` are 0-based,
there are no macros (helpers are inlined, a one-element ``transform`` acts as LET), VARIANT values
are not comparable (equality and distinctness go through ``to_json``), and string literals use
backslash escapes. Only ANSI-safe functions (``get``, ``try_cast``, ``try_variant_get``) are used,
so results do not depend on ``spark.sql.ansi.enabled``.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from decimal import Decimal

from medcloud.analytics.fhirpath import ast
from medcloud.analytics.fhirpath._core import SCALARS, CompilerCore, Scope, Sql
from medcloud.analytics.fhirpath.to_duckdb import (
    _CONSTANT_KINDS,
    _DATETIME_ELEMENTS,
    _INTEGERS,
    _STRINGY,
)

__all__ = ["EMPTY", "SparkCompiler", "constant_sql", "sql_str"]

EMPTY = "CAST(array() AS ARRAY<VARIANT>)"
_SCALARS = SCALARS
_NUMERIC_TYPES = "('BIGINT', 'DOUBLE', 'FLOAT', 'INT', 'SMALLINT', 'TINYINT')"


def sql_str(value: str) -> str:
    """A Spark SQL string literal (backslash is an escape character in Spark literals)."""
    return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"


def vtype(x: str) -> str:
    """Spark's name for the JSON type of a VARIANT: STRING, BIGINT, DECIMAL(p,s), OBJECT<...>, ..."""
    return f"schema_of_variant({x})"


def is_num(x: str) -> str:
    return f"({vtype(x)} IN {_NUMERIC_TYPES} OR {vtype(x)} LIKE 'DECIMAL%')"


def is_int(x: str) -> str:
    return f"({vtype(x)} IN ('BIGINT', 'INT', 'SMALLINT', 'TINYINT'))"


def is_obj(x: str) -> str:
    return f"({vtype(x)} LIKE 'OBJECT%')"


def is_str(x: str) -> str:
    return f"({vtype(x)} = 'STRING')"


def is_bool(x: str) -> str:
    return f"({vtype(x)} = 'BOOLEAN')"


# parse_json keeps a decimal without its trailing zeros, so 97.0 is DECIMAL(2,0) and prints as 97;
# the ".0" keeps it a decimal in the output (DuckDB keeps the written text).
def _whole_decimal(x: str) -> str:
    return f"({vtype(x)} LIKE 'DECIMAL(%,0)')"


def json_text(x: str) -> str:
    """The JSON text of a VARIANT node (NULL for ``{}``), decimals kept decimal."""
    return f"CASE WHEN {_whole_decimal(x)} THEN concat(to_json({x}), '.0') ELSE to_json({x}) END"


def json_array_text(coll: str, var: str) -> str:
    """The JSON text of a collection, its decimals kept decimal."""
    return f"concat('[', array_join(transform({coll}, {var} -> {json_text(var)}), ','), ']')"


def text(x: str) -> str:
    """DuckDB's ``x ->> '$'``: a string as itself, anything else as its JSON text."""
    return (
        f"CASE WHEN {_whole_decimal(x)} THEN concat(to_json({x}), '.0') "
        f"ELSE try_variant_get({x}, '$', 'string') END"
    )


# FHIR primitive type -> predicate on the VARIANT type (see to_duckdb._JSON_TYPES_FOR).
def _type_test(type_name: str, x: str) -> str:
    t = type_name.lower()
    if t == "boolean":
        return is_bool(x)
    if t == "decimal":
        return is_num(x)
    if t in _INTEGERS:
        return is_int(x)
    if t in _STRINGY:
        return is_str(x)
    return is_obj(x)


def constant_sql(value_type: str, value: object) -> Sql:
    """The SQL literal for a ViewDefinition ``constant.value[x]`` (type name without ``value``)."""
    kind = _CONSTANT_KINDS[value_type.lower()]
    if kind == "BOOL":
        return Sql("TRUE" if value else "FALSE", kind)
    if kind == "INT":
        return Sql(f"CAST({int(value)} AS BIGINT)", kind)  # type: ignore[call-overload]
    if kind == "NUM":
        return Sql(f"CAST({Decimal(str(value))} AS DOUBLE)", kind)
    return Sql(sql_str(str(value)), kind, value_type[0].lower() + value_type[1:])


class SparkCompiler(CompilerCore):
    """Spark SQL text for the shared walk in ``_core.CompilerCore``; one instance per view."""

    EMPTY = EMPTY
    VAR_PREFIX = "v_"

    # -- dialect hooks -------------------------------------------------------------------------
    def quote(self, value: str) -> str:
        return sql_str(value)

    def size(self, coll: str) -> str:
        return f"size({coll})"

    def concat(self, a: str, b: str) -> str:
        return f"concat({a}, {b})"

    def filter(self, coll: str, var: str, index: str, body: str) -> str:
        return f"filter({coll}, ({var}, {index}) -> {body})"

    def transform(self, coll: str, var: str, index: str, body: str) -> str:
        return f"transform({coll}, ({var}, {index}) -> {body})"

    def lambda_index(self, index: str) -> str:
        return f"CAST({index} AS BIGINT)"  # Spark lambda indexes count from 0

    def binary(self, op: str, left: Sql, right: Sql) -> Sql:
        from medcloud.analytics.fhirpath import to_spark_operators

        return to_spark_operators.binary(self, op, left, right)

    def call(self, n: ast.Call, s: Scope) -> Sql:
        from medcloud.analytics.fhirpath import to_spark_functions

        return to_spark_functions.call(self, n, s)

    # -- kind conversions ----------------------------------------------------------------------
    def let(self, value: str, body: Callable[[str], str], cast: str = "") -> str:
        """Evaluate ``value`` once and use it several times in ``body``."""
        if re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*(\.`[^`]+`)?", value):
            return body(value)
        v = self.var()
        return f"get(transform(array({value}), {v} -> {body(v)}), 0)"

    def items(self, v: str) -> str:
        """A JSON node (or array of nodes) as a collection: arrays flatten, null is empty."""
        return self.let(
            v,
            lambda y: (
                f"CASE WHEN {y} IS NULL OR is_variant_null({y}) THEN {EMPTY} "
                f"ELSE coalesce(try_variant_get({y}, '$', 'array<variant>'), array({y})) END"
            ),
        )

    def to_coll(self, e: Sql) -> str:
        if e.kind == "COLL":
            return e.text
        v = self.var()
        return f"filter(array({self.to_one(e).text}), {v} -> {v} IS NOT NULL)"

    def to_one(self, e: Sql, what: str = "a single value") -> Sql:
        if e.kind == "ONE":
            return e
        if e.kind == "COLL":
            msg = sql_str(f"expected {what} but the expression returned several values")
            return Sql(
                self.let(
                    e.text, lambda c: f"CASE WHEN size({c}) > 1 THEN raise_error({msg}) ELSE get({c}, 0) END"
                ),
                "ONE",
                e.fhir_type,
            )
        return Sql(f"CAST({e.text} AS VARIANT)", "ONE", e.fhir_type)

    def to_bool(self, e: Sql) -> str:
        if e.kind == "BOOL":
            return e.text
        if e.kind in ("STR", "NUM", "INT"):
            return f"({e.text} IS NOT NULL)"
        one = self.to_one(e, "a single boolean").text
        return self.let(
            one,
            lambda x: (
                f"CASE WHEN {x} IS NULL THEN NULL WHEN {is_bool(x)} "
                f"THEN try_variant_get({x}, '$', 'boolean') ELSE TRUE END"
            ),
        )

    def to_str(self, e: Sql) -> str:
        if e.kind == "STR":
            return e.text
        if e.kind == "BOOL":
            return f"lower(CAST({e.text} AS STRING))"
        if e.kind in _SCALARS:
            return f"CAST({e.text} AS STRING)"
        return text(self.to_one(e).text)

    def to_num(self, e: Sql) -> str:
        if e.kind in ("NUM", "INT"):
            return e.text
        if e.kind in ("STR", "BOOL"):
            return f"try_cast({e.text} AS DOUBLE)"
        return f"try_cast({text(self.to_one(e).text)} AS DOUBLE)"

    def to_int(self, e: Sql) -> str:
        if e.kind == "INT":
            return e.text
        if e.kind in _SCALARS:
            return f"try_cast({e.text} AS BIGINT)"
        return f"try_cast({text(self.to_one(e).text)} AS BIGINT)"

    def to_json(self, e: Sql) -> str:
        return self.to_one(e).text

    # -- nodes -------------------------------------------------------------------------------
    def member(self, base: Sql, name: str) -> Sql:
        path = sql_str(f'$["{name}"]')
        hint = "date" if name == "birthDate" else ("dateTime" if name in _DATETIME_ELEMENTS else None)
        if base.kind == "ONE":
            return Sql(self.items(f"try_variant_get({base.text}, {path}, 'variant')"), "COLL", hint)
        if base.kind in _SCALARS:
            return Sql(EMPTY, "COLL")
        v = self.var()
        inner = self.items(f"try_variant_get({v}, {path}, 'variant')")
        return Sql(f"flatten(transform({base.text}, {v} -> {inner}))", "COLL", hint)

    def _indexer(self, n: ast.Indexer, s: Scope) -> Sql:
        coll = self.to_coll(self.node(n.target, s))
        idx = self.to_int(self.node(n.index, s))
        return Sql(
            self.let(idx, lambda i: f"CASE WHEN {i} < 0 THEN NULL ELSE get({coll}, CAST({i} AS INT)) END"),
            "ONE",
        )

    def of_type_filter(self, coll: Sql, type_name: str) -> Sql:
        v = self.var()
        return Sql(f"filter({self.to_coll(coll)}, {v} -> {_type_test(type_name, v)})", "COLL")
