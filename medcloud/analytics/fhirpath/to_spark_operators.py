"""FHIRPath operators (https://hl7.org/fhirpath/N1/#operations) as Spark SQL (see _operators.py)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from medcloud.analytics.fhirpath.to_duckdb import Sql
from medcloud.analytics.fhirpath.to_spark import is_num, json_text, text

if TYPE_CHECKING:
    from medcloud.analytics.fhirpath.to_spark import SparkCompiler

_NUMERIC_KINDS = ("NUM", "INT")


def _sql(txt: str, kind: str, hint: str | None = None) -> Sql:
    return Sql(txt, kind, hint)  # type: ignore[arg-type]


def json_eq(a: str, b: str) -> str:
    """FHIRPath = on two single nodes: numbers by value (1 = 1.0), everything else by JSON text."""
    return (
        f"CASE WHEN {a} IS NULL OR {b} IS NULL THEN NULL "
        f"WHEN {is_num(a)} AND {is_num(b)} THEN try_variant_get({a}, '$', 'double') = try_variant_get({b}, '$', 'double') "
        f"ELSE ({json_text(a)}) = ({json_text(b)}) END"
    )


def json_texts(c: SparkCompiler, coll: str) -> str:
    v = c.var()
    return f"transform({coll}, {v} -> {json_text(v)})"


def binary(c: SparkCompiler, op: str, a: Sql, b: Sql) -> Sql:
    if op in ("and", "or"):
        return _sql(f"({c.to_bool(a)} {op.upper()} {c.to_bool(b)})", "BOOL")
    if op == "xor":
        return _sql(f"({c.to_bool(a)} <> {c.to_bool(b)})", "BOOL")
    if op == "implies":
        x, y = c.to_bool(a), c.to_bool(b)
        return _sql(f"(CASE WHEN {x} THEN {y} WHEN NOT {x} THEN TRUE WHEN {y} THEN TRUE END)", "BOOL")
    if op in ("=", "!="):
        eq = equals(c, a, b)
        return eq if op == "=" else _sql(f"(NOT {eq.text})", "BOOL")
    if op in ("~", "!~"):
        x = f"lower({json_text(c.to_json(a))})"
        y = f"lower({json_text(c.to_json(b))})"
        eqv = f"coalesce({x} = {y}, {x} IS NULL AND {y} IS NULL)"
        return _sql(eqv if op == "~" else f"(NOT {eqv})", "BOOL")
    if op in ("<", "<=", ">", ">="):
        return compare(c, op, a, b)
    if op in ("+", "-", "*", "/", "div", "mod"):
        return arithmetic(c, op, a, b)
    if op == "&":
        return _sql(f"concat(coalesce({c.to_str(a)}, ''), coalesce({c.to_str(b)}, ''))", "STR")
    if op == "|":
        both = f"concat({c.to_coll(a)}, {c.to_coll(b)})"
        return _sql(c.let(both, lambda lst: distinct(c, lst)), "COLL")
    if op in ("in", "contains"):
        item, coll = (a, b) if op == "in" else (b, a)
        one = c.to_json(item)
        return _sql(
            f"(CASE WHEN {one} IS NULL THEN NULL ELSE array_contains({json_texts(c, c.to_coll(coll))}, {json_text(one)}) END)",
            "BOOL",
        )
    raise ValueError(f"operator {op} is not supported")


def distinct(c: SparkCompiler, lst: str) -> str:
    """Keep the first of equal items (VARIANT is not comparable, so items compare as JSON text)."""
    v, i = c.var(), c.var()
    texts = json_texts(c, lst)
    return c.let(
        texts, lambda t: f"filter({lst}, ({v}, {i}) -> array_position({t}, {json_text(v)}) = {i} + 1)"
    )


def equals(c: SparkCompiler, a: Sql, b: Sql) -> Sql:
    """FHIRPath ``=``: empty if either side is empty; collections compare item by item in order."""
    if (a.kind in _NUMERIC_KINDS or b.kind in _NUMERIC_KINDS) and a.kind != "COLL" and b.kind != "COLL":
        return _sql(f"({c.to_num(a)} = {c.to_num(b)})", "BOOL")
    if (a.kind == "BOOL" or b.kind == "BOOL") and a.kind != "COLL" and b.kind != "COLL":
        return _sql(f"({c.to_bool(a)} = {c.to_bool(b)})", "BOOL")
    if a.kind == "STR" and b.kind == "STR":
        return _sql(f"({a.text} = {b.text})", "BOOL")
    if a.kind == "COLL" or b.kind == "COLL":
        x, y = c.to_coll(a), c.to_coll(b)
        i = c.var()
        return _sql(
            c.let(
                x,
                lambda lst: c.let(
                    y,
                    lambda r: (
                        f"CASE WHEN size({lst}) = 0 OR size({r}) = 0 THEN NULL WHEN size({lst}) <> size({r}) THEN FALSE "
                        f"ELSE forall(sequence(0, size({lst}) - 1), {i} -> "
                        f"{json_eq(f'get({lst}, {i})', f'get({r}, {i})')}) END"
                    ),
                ),
            ),
            "BOOL",
        )
    if a.kind == "STR" or b.kind == "STR":
        return _sql(f"({c.to_str(a)} = {c.to_str(b)})", "BOOL")
    x, y = c.to_json(a), c.to_json(b)
    return _sql(c.let(x, lambda p: c.let(y, lambda q: json_eq(p, q))), "BOOL")


def compare(c: SparkCompiler, op: str, a: Sql, b: Sql) -> Sql:
    if a.kind in _NUMERIC_KINDS or b.kind in _NUMERIC_KINDS:
        return _sql(f"({c.to_num(a)} {op} {c.to_num(b)})", "BOOL")
    if a.kind == "STR" or b.kind == "STR":
        return _sql(f"({c.to_str(a)} {op} {c.to_str(b)})", "BOOL")
    x, y = c.to_json(a), c.to_json(b)
    return _sql(
        c.let(
            x,
            lambda p: c.let(
                y,
                lambda q: (
                    f"CASE WHEN {is_num(p)} AND {is_num(q)} THEN try_variant_get({p}, '$', 'double') {op} "
                    f"try_variant_get({q}, '$', 'double') ELSE {text(p)} {op} {text(q)} END"
                ),
            ),
        ),
        "BOOL",
    )


def arithmetic(c: SparkCompiler, op: str, a: Sql, b: Sql) -> Sql:
    if op == "+" and (a.kind == "STR" or b.kind == "STR"):
        return _sql(f"concat({c.to_str(a)}, {c.to_str(b)})", "STR")
    ints = a.kind == "INT" and b.kind == "INT"
    x, y = (c.to_int(a), c.to_int(b)) if ints else (c.to_num(a), c.to_num(b))
    if op in ("+", "-", "*"):
        return _sql(f"({x} {op} {y})", "INT" if ints else "NUM")
    if op == "/":
        return _sql(f"(CASE WHEN {y} = 0 THEN NULL ELSE CAST({x} AS DOUBLE) / {y} END)", "NUM")
    if op == "div":
        return _sql(
            f"(CASE WHEN {y} = 0 THEN NULL ELSE CAST(CAST({x} AS DOUBLE) / {y} AS BIGINT) END)", "INT"
        )
    return _sql(f"(CASE WHEN {y} = 0 THEN NULL ELSE {x} % {y} END)", "INT" if ints else "NUM")
