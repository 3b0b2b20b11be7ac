"""FHIRPath functions as DuckDB SQL: the Shareable View Definition subset
(https://sql-on-fhir.org/ig/StructureDefinition-ShareableViewDefinition.html), the required
getResourceKey()/getReferenceKey(), the experimental join()/lowBoundary()/highBoundary(), and the
common FHIRPath N1 functions views reach for (string, math, subsetting, conversion)."""

from __future__ import annotations

import re
from typing import TYPE_CHECKING

from medcloud.analytics.errors import ViewDefinitionError
from medcloud.analytics.fhirpath import ast
from medcloud.analytics.fhirpath._common_functions import register as register_common
from medcloud.analytics.fhirpath._core import FunctionTable, Impl, Scope, Sql
from medcloud.analytics.fhirpath._sqltext import STRING_TYPES, sql_str

if TYPE_CHECKING:
    from medcloud.analytics.fhirpath.to_duckdb import Compiler

_TABLE: FunctionTable[Compiler] = FunctionTable()
_fn = _TABLE.fn
call = _TABLE.call
register_common(_TABLE)


def _sql(text: str, kind: str, hint: str | None = None, path: tuple[str, str] | None = None) -> Sql:
    return Sql(text, kind, hint, path)  # type: ignore[arg-type]


# -- existence and filtering (FHIRPath N1 §5.1, §5.2) ----------------------------------------------
def _bools(c: Compiler, base: Sql) -> str:
    v = c.var()
    return f"list_transform({c.to_coll(base)}, lambda {v}: CAST({v} AS VARCHAR) = 'true')"


@_fn("allTrue")
def _all_true(c: Compiler, base: Sql, args: tuple[ast.Node, ...], s: Scope) -> Sql:
    return _sql(f"coalesce(list_bool_and({_bools(c, base)}), TRUE)", "BOOL")


@_fn("anyTrue")
def _any_true(c: Compiler, base: Sql, args: tuple[ast.Node, ...], s: Scope) -> Sql:
    return _sql(f"coalesce(list_bool_or({_bools(c, base)}), FALSE)", "BOOL")


@_fn("allFalse")
def _all_false(c: Compiler, base: Sql, args: tuple[ast.Node, ...], s: Scope) -> Sql:
    return _sql(f"NOT coalesce(list_bool_or({_bools(c, base)}), FALSE)", "BOOL")


@_fn("anyFalse")
def _any_false(c: Compiler, base: Sql, args: tuple[ast.Node, ...], s: Scope) -> Sql:
    return _sql(f"NOT coalesce(list_bool_and({_bools(c, base)}), TRUE)", "BOOL")


@_fn("distinct")
def _distinct(c: Compiler, base: Sql, args: tuple[ast.Node, ...], s: Scope) -> Sql:
    v, i = c.var(), c.var()
    return _sql(
        c.let(
            c.to_coll(base),
            lambda lst: f"list_filter({lst}, lambda {v}, {i}: list_position({lst}, {v}) = {i})",
        ),
        "COLL",
    )


@_fn("isDistinct")
def _is_distinct(c: Compiler, base: Sql, args: tuple[ast.Node, ...], s: Scope) -> Sql:
    return _sql(c.let(c.to_coll(base), lambda lst: f"(len(list_distinct({lst})) = len({lst}))"), "BOOL")


# -- subsetting (§5.3) -------------------------------------------------------------------------
@_fn("first")
def _first(c: Compiler, base: Sql, args: tuple[ast.Node, ...], s: Scope) -> Sql:
    if base.kind != "COLL":
        return base
    if base.path is not None:
        json, path = base.path
        stringy = base.fhir_type in STRING_TYPES
        if path.endswith("[*]") and path.count("[*]") == 1:
            path = path[:-3] + "[0]"  # the first item of the one array
            if stringy:
                return _sql(f"({json} ->> {sql_str(path)})", "STR", base.fhir_type)
            return _sql(f"json_extract({json}, {sql_str(path)})", "ONE", base.fhir_type, (json, path))
        if stringy:
            return _sql(f"json_extract_string({json}, {sql_str(path)})[1]", "STR", base.fhir_type)
    return _sql(f"{base.text}[1]", "ONE", base.fhir_type)


@_fn("last")
def _last(c: Compiler, base: Sql, args: tuple[ast.Node, ...], s: Scope) -> Sql:
    if base.kind != "COLL":
        return base
    return _sql(f"{base.text}[-1]", "ONE", base.fhir_type)


@_fn("tail")
def _tail(c: Compiler, base: Sql, args: tuple[ast.Node, ...], s: Scope) -> Sql:
    return _sql(f"{c.to_coll(base)}[2:]", "COLL", base.fhir_type)


@_fn("skip", 1, 1)
def _skip(c: Compiler, base: Sql, args: tuple[ast.Node, ...], s: Scope) -> Sql:
    n = c.to_int(c.node(args[0], s))
    return _sql(f"{c.to_coll(base)}[greatest({n}, 0) + 1:]", "COLL", base.fhir_type)


@_fn("take", 1, 1)
def _take(c: Compiler, base: Sql, args: tuple[ast.Node, ...], s: Scope) -> Sql:
    n = c.to_int(c.node(args[0], s))
    return _sql(f"{c.to_coll(base)}[1:greatest({n}, 0)]", "COLL", base.fhir_type)


# -- boolean and utility (§5.5, §6.5, §7) ------------------------------------------------------
@_fn("hasValue")
def _has_value(c: Compiler, base: Sql, args: tuple[ast.Node, ...], s: Scope) -> Sql:
    one = c.to_one(base).text
    return _sql(
        c.let(one, lambda x: f"({x} IS NOT NULL AND json_type({x}) NOT IN ('OBJECT', 'ARRAY'))"), "BOOL"
    )


# -- FHIR additions: extension(), getResourceKey(), getReferenceKey() ----------------------------------
@_fn("extension", 1, 1)
def _extension(c: Compiler, base: Sql, args: tuple[ast.Node, ...], s: Scope) -> Sql:
    url = c.to_str(c.node(args[0], s))
    e = c.var()
    # ``member`` reads the resource's own extensions from its pre-extracted fields and maps over a
    # collection itself: one lambda fewer per call than mapping here (planning cost per query).
    exts = c.to_coll(c.member(base, "extension"))
    return _sql(f"list_filter({exts}, lambda {e}: ({e} ->> 'url') = {url})", "COLL", "Extension")


@_fn("getResourceKey")
def _get_resource_key(c: Compiler, base: Sql, args: tuple[ast.Node, ...], s: Scope) -> Sql:
    # The key is the logical id: references in the supported forms resolve to it (see fp_ref_key).
    key = c.member(c.to_one(base), "id")
    return _sql(f"{key.text}[1]", "ONE") if key.kind == "COLL" else key


@_fn("getReferenceKey", 0, 1)
def _get_reference_key(c: Compiler, base: Sql, args: tuple[ast.Node, ...], s: Scope) -> Sql:
    resource_type = "NULL"
    if args:
        name = ast.type_name_of(args[0])
        if name is None and isinstance(args[0], ast.Literal) and args[0].type == "string":
            name = str(args[0].value)
        if name is None:
            raise ViewDefinitionError("", "getReferenceKey() takes a resource type such as Patient")
        resource_type = sql_str(name)
    if base.kind == "ONE":  # one Reference (the usual ``subject.getReferenceKey()``): one key or {}
        return _sql(f"fp_ref_key({base.text}, {resource_type})", "STR", "string")
    v, k = c.var(), c.var()
    return _sql(
        f"list_filter(list_transform({c.to_coll(base)}, lambda {v}: to_json(fp_ref_key({v}, {resource_type}))), "
        f"lambda {k}: {k} IS NOT NULL)",
        "COLL",
        "string",
    )


_TEMPORAL = ("date", "dateTime", "instant", "time")


def _boundary(side: str) -> Impl[Compiler]:
    def impl(c: Compiler, base: Sql, args: tuple[ast.Node, ...], s: Scope) -> Sql:
        precision = c.to_int(c.node(args[0], s)) if args else "NULL"
        hint = sql_str(base.fhir_type) if base.fhir_type in _TEMPORAL else "NULL"
        return _sql(f"fp_{side}({c.to_one(base).text}, {precision}, {hint})", "ONE", base.fhir_type)

    return impl


_fn("lowBoundary", 0, 1)(_boundary("low"))
_fn("highBoundary", 0, 1)(_boundary("high"))


# -- strings (§5.6) ------------------------------------------------------------------------------
@_fn("join", 0, 1)
def _join(c: Compiler, base: Sql, args: tuple[ast.Node, ...], s: Scope) -> Sql:
    sep = c.to_str(c.node(args[0], s)) if args else "''"
    if base.path is not None and "[*]" in base.path[1]:  # one JSONPath: no lambda to bind
        strings = f"json_extract_string({base.path[0]}, {sql_str(base.path[1])})"  # NULL joins to '' below
    else:
        v = c.var()
        strings = f"list_transform({c.to_coll(base)}, lambda {v}: {v} ->> '$')"
    if re.fullmatch(r"'(?:[^']|'')*'", sep):  # list_aggr of an empty list or NULL is NULL
        # list_aggr directly: array_to_string() is a macro over it that costs more to bind.
        return _sql(f"coalesce(list_aggr({strings}, 'string_agg', {sep}), '')", "STR")
    # array_to_string() wants a constant separator; a computed one folds the list instead.
    strings = f"coalesce({strings}, CAST([] AS VARCHAR[]))"
    a, b = c.var(), c.var()
    return _sql(
        c.let(
            strings,
            lambda lst: (
                f"CASE WHEN len({lst}) = 0 THEN '' "
                f"ELSE list_reduce({lst}, lambda {a}, {b}: {a} || {sep} || {b}) END"
            ),
        ),
        "STR",
    )


def _string_fn(name: str, nargs: int, kind: str, template: str) -> None:
    def impl(c: Compiler, base: Sql, args: tuple[ast.Node, ...], s: Scope) -> Sql:
        values = [c.to_str(base)] + [
            c.to_int(c.node(a, s)) if "{int" in template else c.to_str(c.node(a, s)) for a in args
        ]
        text = template.format(
            *values, int1=values[1] if len(values) > 1 else None, int2=values[2] if len(values) > 2 else None
        )
        return _sql(f"({text})", kind)

    _fn(name, nargs, nargs)(impl)


_string_fn("startsWith", 1, "BOOL", "starts_with({0}, {1})")
_string_fn("endsWith", 1, "BOOL", "ends_with({0}, {1})")
_string_fn("upper", 0, "STR", "upper({0})")
_string_fn("lower", 0, "STR", "lower({0})")
_string_fn("trim", 0, "STR", "trim({0})")
_string_fn("length", 0, "INT", "CAST(length({0}) AS BIGINT)")
_string_fn("indexOf", 1, "INT", "CAST(strpos({0}, {1}) - 1 AS BIGINT)")
_string_fn("replace", 2, "STR", "replace({0}, {1}, {2})")
_string_fn("matches", 1, "BOOL", "regexp_matches({0}, {1})")
_string_fn("replaceMatches", 2, "STR", "regexp_replace({0}, {1}, {2}, 'g')")
_string_fn("toString", 0, "STR", "{0}")


@_fn("contains", 1, 1)
def _contains(c: Compiler, base: Sql, args: tuple[ast.Node, ...], s: Scope) -> Sql:
    return _sql(f"contains({c.to_str(base)}, {c.to_str(c.node(args[0], s))})", "BOOL")


@_fn("substring", 1, 2)
def _substring(c: Compiler, base: Sql, args: tuple[ast.Node, ...], s: Scope) -> Sql:
    text = c.to_str(base)
    start = c.to_int(c.node(args[0], s))
    if len(args) == 2:
        return _sql(
            f"(CASE WHEN {start} < 0 OR {start} >= length({text}) THEN NULL "
            f"ELSE substr({text}, {start} + 1, {c.to_int(c.node(args[1], s))}) END)",
            "STR",
        )
    return _sql(
        f"(CASE WHEN {start} < 0 OR {start} >= length({text}) THEN NULL "
        f"ELSE substr({text}, {start} + 1) END)",
        "STR",
    )


@_fn("split", 1, 1)
def _split(c: Compiler, base: Sql, args: tuple[ast.Node, ...], s: Scope) -> Sql:
    v = c.var()
    parts = f"string_split({c.to_str(base)}, {c.to_str(c.node(args[0], s))})"
    return _sql(f"coalesce(list_transform({parts}, lambda {v}: to_json({v})), CAST([] AS JSON[]))", "COLL")


# -- conversion and math (§5.5, §5.7) ------------------------------------------------------------
@_fn("toInteger")
def _to_integer(c: Compiler, base: Sql, args: tuple[ast.Node, ...], s: Scope) -> Sql:
    if base.kind == "BOOL":
        return _sql(f"CAST({base.text} AS BIGINT)", "INT")
    return _sql(f"TRY_CAST({c.to_str(base)} AS BIGINT)", "INT")


@_fn("toDecimal")
def _to_decimal(c: Compiler, base: Sql, args: tuple[ast.Node, ...], s: Scope) -> Sql:
    if base.kind == "BOOL":
        return _sql(f"CAST(CAST({base.text} AS INTEGER) AS DOUBLE)", "NUM")
    return _sql(f"TRY_CAST({c.to_str(base)} AS DOUBLE)", "NUM")


def _math_fn(name: str, template: str, kind: str = "NUM") -> None:
    def impl(c: Compiler, base: Sql, args: tuple[ast.Node, ...], s: Scope) -> Sql:
        x = c.to_num(base)
        extra = [c.to_num(c.node(a, s)) for a in args]
        return _sql(
            template.format(x, *extra, *(["0"] if not extra else [])),
            "INT" if (kind == "SAME" and base.kind == "INT") else ("NUM" if kind == "SAME" else kind),
        )

    _fn(name, 0, 1 if "{1}" in template else 0)(impl)


_math_fn("abs", "abs({0})", "SAME")
_math_fn("ceiling", "CAST(ceil({0}) AS BIGINT)", "INT")
_math_fn("floor", "CAST(floor({0}) AS BIGINT)", "INT")
_math_fn("truncate", "CAST(trunc({0}) AS BIGINT)", "INT")
_math_fn("round", "round({0}, CAST({1} AS INTEGER))")
_math_fn("sqrt", "(CASE WHEN {0} < 0 THEN NULL ELSE sqrt({0}) END)")
_math_fn("ln", "(CASE WHEN {0} <= 0 THEN NULL ELSE ln({0}) END)")
_math_fn("exp", "exp({0})")


def _aggregate(name: str, sql_fn: str) -> None:
    def impl(c: Compiler, base: Sql, args: tuple[ast.Node, ...], s: Scope) -> Sql:
        v = c.var()
        nums = f"list_transform({c.to_coll(base)}, lambda {v}: TRY_CAST({v} AS DOUBLE))"
        return _sql(f"{sql_fn}({nums})", "NUM")

    _fn(name)(impl)


_aggregate("sum", "list_sum")
_aggregate("min", "list_min")
_aggregate("max", "list_max")
_aggregate("avg", "list_avg")


@_fn("today")
def _today(c: Compiler, base: Sql, args: tuple[ast.Node, ...], s: Scope) -> Sql:
    return _sql("strftime(current_date, '%Y-%m-%d')", "STR", "date")


@_fn("now")
def _now(c: Compiler, base: Sql, args: tuple[ast.Node, ...], s: Scope) -> Sql:
    return _sql("strftime(current_timestamp, '%Y-%m-%dT%H:%M:%S.%g%z')", "STR", "dateTime")


def supported_functions() -> tuple[str, ...]:
    return _TABLE.names()
