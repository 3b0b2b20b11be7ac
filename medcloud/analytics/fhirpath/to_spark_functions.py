"""FHIRPath functions as Spark SQL: the same set and semantics as ``_functions.py`` (DuckDB)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from medcloud.analytics.errors import ViewDefinitionError
from medcloud.analytics.fhirpath import ast
from medcloud.analytics.fhirpath._common_functions import register as register_common
from medcloud.analytics.fhirpath._core import FunctionTable, Impl, Scope, Sql
from medcloud.analytics.fhirpath.to_spark import EMPTY, is_obj, sql_str, text
from medcloud.analytics.fhirpath.to_spark_boundary import boundary
from medcloud.analytics.fhirpath.to_spark_operators import distinct, json_texts

if TYPE_CHECKING:
    from medcloud.analytics.fhirpath.to_spark import SparkCompiler

_TABLE: FunctionTable[SparkCompiler] = FunctionTable()
_fn = _TABLE.fn
call = _TABLE.call
register_common(_TABLE)


def _sql(txt: str, kind: str, hint: str | None = None) -> Sql:
    return Sql(txt, kind, hint)  # type: ignore[arg-type]


# -- existence and filtering (FHIRPath N1 §5.1, §5.2) ----------------------------------------------
def _bools(c: SparkCompiler, base: Sql) -> str:
    v = c.var()
    return f"transform({c.to_coll(base)}, {v} -> to_json({v}) = 'true')"


@_fn("allTrue")
def _all_true(c: SparkCompiler, base: Sql, args: tuple[ast.Node, ...], s: Scope) -> Sql:
    x = c.var()
    return _sql(f"forall({_bools(c, base)}, {x} -> {x})", "BOOL")


@_fn("anyTrue")
def _any_true(c: SparkCompiler, base: Sql, args: tuple[ast.Node, ...], s: Scope) -> Sql:
    x = c.var()
    return _sql(f"exists({_bools(c, base)}, {x} -> {x})", "BOOL")


@_fn("allFalse")
def _all_false(c: SparkCompiler, base: Sql, args: tuple[ast.Node, ...], s: Scope) -> Sql:
    x = c.var()
    return _sql(f"(NOT exists({_bools(c, base)}, {x} -> {x}))", "BOOL")


@_fn("anyFalse")
def _any_false(c: SparkCompiler, base: Sql, args: tuple[ast.Node, ...], s: Scope) -> Sql:
    x = c.var()
    return _sql(f"(NOT forall({_bools(c, base)}, {x} -> {x}))", "BOOL")


@_fn("distinct")
def _distinct(c: SparkCompiler, base: Sql, args: tuple[ast.Node, ...], s: Scope) -> Sql:
    return _sql(c.let(c.to_coll(base), lambda lst: distinct(c, lst)), "COLL")


@_fn("isDistinct")
def _is_distinct(c: SparkCompiler, base: Sql, args: tuple[ast.Node, ...], s: Scope) -> Sql:
    texts = json_texts(c, c.to_coll(base))
    return _sql(c.let(texts, lambda t: f"(size(array_distinct({t})) = size({t}))"), "BOOL")


# -- subsetting (§5.3) -------------------------------------------------------------------------
@_fn("first")
def _first(c: SparkCompiler, base: Sql, args: tuple[ast.Node, ...], s: Scope) -> Sql:
    if base.kind != "COLL":
        return base
    return _sql(f"get({base.text}, 0)", "ONE", base.fhir_type)


@_fn("last")
def _last(c: SparkCompiler, base: Sql, args: tuple[ast.Node, ...], s: Scope) -> Sql:
    if base.kind != "COLL":
        return base
    return _sql(c.let(base.text, lambda lst: f"get({lst}, size({lst}) - 1)"), "ONE", base.fhir_type)


def _from(c: SparkCompiler, coll: str, start: str, end: str | None = None) -> str:
    v, i = c.var(), c.var()
    cond = f"{i} >= {start}" + (f" AND {i} < {end}" if end is not None else "")
    return f"filter({coll}, ({v}, {i}) -> {cond})"


@_fn("tail")
def _tail(c: SparkCompiler, base: Sql, args: tuple[ast.Node, ...], s: Scope) -> Sql:
    return _sql(_from(c, c.to_coll(base), "1"), "COLL", base.fhir_type)


@_fn("skip", 1, 1)
def _skip(c: SparkCompiler, base: Sql, args: tuple[ast.Node, ...], s: Scope) -> Sql:
    n = c.to_int(c.node(args[0], s))
    return _sql(_from(c, c.to_coll(base), f"greatest({n}, 0)"), "COLL", base.fhir_type)


@_fn("take", 1, 1)
def _take(c: SparkCompiler, base: Sql, args: tuple[ast.Node, ...], s: Scope) -> Sql:
    n = c.to_int(c.node(args[0], s))
    return _sql(_from(c, c.to_coll(base), "0", f"greatest({n}, 0)"), "COLL", base.fhir_type)


# -- boolean and utility (§5.5, §6.5, §7) ------------------------------------------------------
@_fn("hasValue")
def _has_value(c: SparkCompiler, base: Sql, args: tuple[ast.Node, ...], s: Scope) -> Sql:
    one = c.to_one(base).text
    return _sql(
        c.let(
            one,
            lambda x: f"({x} IS NOT NULL AND NOT {is_obj(x)} AND schema_of_variant({x}) NOT LIKE 'ARRAY%')",
        ),
        "BOOL",
    )


# -- FHIR additions: extension(), getResourceKey(), getReferenceKey() ----------------------------------
@_fn("extension", 1, 1)
def _extension(c: SparkCompiler, base: Sql, args: tuple[ast.Node, ...], s: Scope) -> Sql:
    url = c.to_str(c.node(args[0], s))
    v, e = c.var(), c.var()
    exts = c.member(_sql(v, "ONE"), "extension").text
    return _sql(
        f"flatten(transform({c.to_coll(base)}, {v} -> filter({exts}, "
        f"{e} -> try_variant_get({e}, '$.url', 'string') = {url})))",
        "COLL",
    )


@_fn("getResourceKey")
def _get_resource_key(c: SparkCompiler, base: Sql, args: tuple[ast.Node, ...], s: Scope) -> Sql:
    return _sql(f"get({c.member(c.to_one(base), 'id').text}, 0)", "ONE")


def _ref_key(c: SparkCompiler, r: str, t: str) -> str:
    """getReferenceKey([type]) for one Reference (see _sqltext.fp_ref_key)."""
    ref_sql = f"try_variant_get({r}, '$.reference', 'string')"
    typ = f"try_variant_get({r}, '$.type', 'string')"

    def on_ref(ref: str) -> str:
        parts = f"split(split_part({ref}, '/_history/', 1), '/')"
        return (
            f"CASE WHEN {ref} IS NULL OR contains({ref}, '?') OR startswith({ref}, '#') THEN NULL "
            f"WHEN startswith({ref}, 'urn:uuid:') THEN CASE WHEN {t} IS NULL OR {typ} = {t} THEN substr({ref}, 10) END "
            + "ELSE "
            + c.let(
                parts,
                lambda p: (
                    f"CASE WHEN size({p}) >= 2 AND get({p}, size({p}) - 1) <> '' "
                    f"AND ascii(get({p}, size({p}) - 2)) BETWEEN 65 AND 90 "
                    f"AND ({t} IS NULL OR get({p}, size({p}) - 2) = {t}) THEN get({p}, size({p}) - 1) END"
                ),
            )
            + " END"
        )

    return c.let(ref_sql, on_ref)


@_fn("getReferenceKey", 0, 1)
def _get_reference_key(c: SparkCompiler, base: Sql, args: tuple[ast.Node, ...], s: Scope) -> Sql:
    resource_type = "CAST(NULL AS STRING)"
    if args:
        name = ast.type_name_of(args[0])
        if name is None and isinstance(args[0], ast.Literal) and args[0].type == "string":
            name = str(args[0].value)
        if name is None:
            raise ViewDefinitionError("", "getReferenceKey() takes a resource type such as Patient")
        resource_type = sql_str(name)
    v, k = c.var(), c.var()
    return _sql(
        f"filter(transform({c.to_coll(base)}, {v} -> CAST({_ref_key(c, v, resource_type)} AS VARIANT)), "
        f"{k} -> {k} IS NOT NULL)",
        "COLL",
    )


def _boundary(side: str) -> Impl[SparkCompiler]:
    def impl(c: SparkCompiler, base: Sql, args: tuple[ast.Node, ...], s: Scope) -> Sql:
        precision = c.to_int(c.node(args[0], s)) if args else None
        return _sql(
            boundary(c, side == "low", c.to_one(base).text, precision, base.fhir_type), "ONE", base.fhir_type
        )

    return impl


_fn("lowBoundary", 0, 1)(_boundary("low"))
_fn("highBoundary", 0, 1)(_boundary("high"))


# -- strings (§5.6) ------------------------------------------------------------------------------
@_fn("join", 0, 1)
def _join(c: SparkCompiler, base: Sql, args: tuple[ast.Node, ...], s: Scope) -> Sql:
    sep = c.to_str(c.node(args[0], s)) if args else "''"
    v = c.var()
    strings = f"transform({c.to_coll(base)}, {v} -> {text(v)})"
    return _sql(f"array_join({strings}, {sep})", "STR")


def _string_fn(name: str, nargs: int, kind: str, template: str) -> None:
    def impl(c: SparkCompiler, base: Sql, args: tuple[ast.Node, ...], s: Scope) -> Sql:
        values = [c.to_str(base)] + [c.to_str(c.node(a, s)) for a in args]
        return _sql(f"({template.format(*values)})", kind)

    _fn(name, nargs, nargs)(impl)


_string_fn("startsWith", 1, "BOOL", "startswith({0}, {1})")
_string_fn("endsWith", 1, "BOOL", "endswith({0}, {1})")
_string_fn("upper", 0, "STR", "upper({0})")
_string_fn("lower", 0, "STR", "lower({0})")
_string_fn("trim", 0, "STR", "trim({0})")
_string_fn("length", 0, "INT", "CAST(char_length({0}) AS BIGINT)")
_string_fn("indexOf", 1, "INT", "CAST(instr({0}, {1}) - 1 AS BIGINT)")
_string_fn("replace", 2, "STR", "replace({0}, {1}, {2})")
_string_fn("matches", 1, "BOOL", "regexp_like({0}, {1})")
_string_fn("replaceMatches", 2, "STR", "regexp_replace({0}, {1}, {2})")
_string_fn("toString", 0, "STR", "{0}")


@_fn("contains", 1, 1)
def _contains(c: SparkCompiler, base: Sql, args: tuple[ast.Node, ...], s: Scope) -> Sql:
    return _sql(f"contains({c.to_str(base)}, {c.to_str(c.node(args[0], s))})", "BOOL")


@_fn("substring", 1, 2)
def _substring(c: SparkCompiler, base: Sql, args: tuple[ast.Node, ...], s: Scope) -> Sql:
    txt = c.to_str(base)
    start = c.to_int(c.node(args[0], s))
    length = f", {c.to_int(c.node(args[1], s))}" if len(args) == 2 else ""
    return _sql(
        f"(CASE WHEN {start} < 0 OR {start} >= char_length({txt}) THEN NULL "
        f"ELSE substr({txt}, {start} + 1{length}) END)",
        "STR",
    )


@_fn("split", 1, 1)
def _split(c: SparkCompiler, base: Sql, args: tuple[ast.Node, ...], s: Scope) -> Sql:
    v = c.var()
    # split() takes a regex; \Q...\E makes the separator literal like DuckDB's string_split.
    sep = c.to_str(c.node(args[0], s))
    parts = f"split({c.to_str(base)}, concat('\\\\Q', {sep}, '\\\\E'))"
    return _sql(f"coalesce(transform({parts}, {v} -> CAST({v} AS VARIANT)), {EMPTY})", "COLL")


# -- conversion and math (§5.5, §5.7) ------------------------------------------------------------
@_fn("toInteger")
def _to_integer(c: SparkCompiler, base: Sql, args: tuple[ast.Node, ...], s: Scope) -> Sql:
    if base.kind == "BOOL":
        return _sql(f"CAST({base.text} AS BIGINT)", "INT")
    return _sql(f"try_cast({c.to_str(base)} AS BIGINT)", "INT")


@_fn("toDecimal")
def _to_decimal(c: SparkCompiler, base: Sql, args: tuple[ast.Node, ...], s: Scope) -> Sql:
    if base.kind == "BOOL":
        return _sql(f"CAST(CAST({base.text} AS INT) AS DOUBLE)", "NUM")
    return _sql(f"try_cast({c.to_str(base)} AS DOUBLE)", "NUM")


def _math_fn(name: str, template: str, kind: str = "NUM") -> None:
    def impl(c: SparkCompiler, base: Sql, args: tuple[ast.Node, ...], s: Scope) -> Sql:
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
_math_fn("truncate", "CAST({0} AS BIGINT)", "INT")
_math_fn("round", "CAST(round({0}, CAST({1} AS INT)) AS DOUBLE)")
_math_fn("sqrt", "(CASE WHEN {0} < 0 THEN NULL ELSE sqrt({0}) END)")
_math_fn("ln", "(CASE WHEN {0} <= 0 THEN NULL ELSE ln({0}) END)")
_math_fn("exp", "exp({0})")


def _aggregate(name: str, template: str) -> None:
    def impl(c: SparkCompiler, base: Sql, args: tuple[ast.Node, ...], s: Scope) -> Sql:
        v = c.var()
        nums = f"filter(transform({c.to_coll(base)}, {v} -> try_variant_get({v}, '$', 'double')), {v} -> {v} IS NOT NULL)"
        return _sql(c.let(nums, lambda n: template.format(n=n, a=c.var(), b=c.var())), "NUM")

    _fn(name)(impl)


_aggregate(
    "sum",
    "CASE WHEN size({n}) = 0 THEN NULL ELSE aggregate({n}, CAST(0 AS DOUBLE), ({a}, {b}) -> {a} + {b}) END",
)
_aggregate("min", "array_min({n})")
_aggregate("max", "array_max({n})")
_aggregate(
    "avg",
    "CASE WHEN size({n}) = 0 THEN NULL ELSE aggregate({n}, CAST(0 AS DOUBLE), ({a}, {b}) -> {a} + {b}) / size({n}) END",
)


@_fn("today")
def _today(c: SparkCompiler, base: Sql, args: tuple[ast.Node, ...], s: Scope) -> Sql:
    return _sql("date_format(current_date(), 'yyyy-MM-dd')", "STR", "date")


@_fn("now")
def _now(c: SparkCompiler, base: Sql, args: tuple[ast.Node, ...], s: Scope) -> Sql:
    return _sql("date_format(current_timestamp(), \"yyyy-MM-dd'T'HH:mm:ss.SSSXXX\")", "STR", "dateTime")


def supported_functions() -> tuple[str, ...]:
    return _TABLE.names()
