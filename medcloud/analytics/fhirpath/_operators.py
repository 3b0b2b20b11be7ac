"""FHIRPath operators (https://hl7.org/fhirpath/N1/#operations) as DuckDB SQL."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from medcloud.analytics.fhirpath.to_duckdb import Compiler, Sql

_NUMERIC_KINDS = ("NUM", "INT")
_SCALAR_KINDS = ("STR", "NUM", "INT", "BOOL")


def _sql(text: str, kind: str, hint: str | None = None) -> Sql:
    from medcloud.analytics.fhirpath.to_duckdb import Sql

    return Sql(text, kind, hint)  # type: ignore[arg-type]


def binary(c: Compiler, op: str, a: Sql, b: Sql) -> Sql:
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
        x = f"lower(CAST({c.to_json(a)} AS VARCHAR))"
        y = f"lower(CAST({c.to_json(b)} AS VARCHAR))"
        eqv = f"coalesce({x} = {y}, {x} IS NULL AND {y} IS NULL)"
        return _sql(eqv if op == "~" else f"(NOT {eqv})", "BOOL")
    if op in ("<", "<=", ">", ">="):
        return compare(c, op, a, b)
    if op in ("+", "-", "*", "/", "div", "mod"):
        return arithmetic(c, op, a, b)
    if op == "&":
        return _sql(f"(coalesce({c.to_str(a)}, '') || coalesce({c.to_str(b)}, ''))", "STR")
    if op == "|":
        both = f"list_concat({c.to_coll(a)}, {c.to_coll(b)})"
        v, i = c.var(), c.var()
        return _sql(
            c.let(both, lambda lst: f"list_filter({lst}, lambda {v}, {i}: list_position({lst}, {v}) = {i})"),
            "COLL",
        )
    if op in ("in", "contains"):
        item, coll = (a, b) if op == "in" else (b, a)
        one = c.to_json(item)
        return _sql(
            f"(CASE WHEN {one} IS NULL THEN NULL ELSE list_contains({c.to_coll(coll)}, {one}) END)", "BOOL"
        )
    raise ValueError(f"operator {op} is not supported")


def equals(c: Compiler, a: Sql, b: Sql) -> Sql:
    """FHIRPath ``=``: empty if either side is empty; collections compare item by item in order."""
    if (a.kind in _NUMERIC_KINDS or b.kind in _NUMERIC_KINDS) and a.kind != "COLL" and b.kind != "COLL":
        return _sql(f"({c.to_num(a)} = {c.to_num(b)})", "BOOL")
    if (a.kind == "BOOL" or b.kind == "BOOL") and a.kind != "COLL" and b.kind != "COLL":
        return _sql(f"({c.to_bool(a)} = {c.to_bool(b)})", "BOOL")
    if a.kind == "STR" and b.kind == "STR":
        return _sql(f"({a.text} = {b.text})", "BOOL")
    if (a.kind == "COLL") != (b.kind == "COLL") and (a.kind in _SCALAR_KINDS or b.kind in _SCALAR_KINDS):
        # A collection against one scalar (``use = 'official'``): the general form below binds
        # three lambdas per comparison, which DuckDB pays for when planning every query.
        coll, one = (a, b) if a.kind == "COLL" else (b, a)
        right = f"to_json({one.text})"
        same = (f"CAST({{lst}}[1] AS VARCHAR) = CAST({right} AS VARCHAR)" if one.kind == "STR"
                else f"fp_eq({{lst}}[1], {right})")
        return _sql(
            c.let(coll.text, lambda lst: (
                f"CASE WHEN len({lst}) = 0 OR {one.text} IS NULL THEN NULL WHEN len({lst}) <> 1 THEN FALSE "
                f"ELSE {same.format(lst=lst)} END")),
            "BOOL",
        )
    if a.kind == "COLL" or b.kind == "COLL":
        x, y = c.to_coll(a), c.to_coll(b)
        i = c.var()
        return _sql(
            c.let(
                x,
                lambda lst: c.let(
                    y,
                    lambda r: (
                        f"CASE WHEN len({lst}) = 0 OR len({r}) = 0 THEN NULL WHEN len({lst}) <> len({r}) THEN FALSE "
                        f"ELSE list_bool_and(list_transform(range(len({lst})), lambda {i}: fp_eq({lst}[{i} + 1], {r}[{i} + 1]))) END"
                    ),
                ),
            ),
            "BOOL",
        )
    if a.kind == "STR" or b.kind == "STR":
        return _sql(f"({c.to_str(a)} = {c.to_str(b)})", "BOOL")
    return _sql(f"fp_eq({c.to_json(a)}, {c.to_json(b)})", "BOOL")


def compare(c: Compiler, op: str, a: Sql, b: Sql) -> Sql:
    if a.kind in _NUMERIC_KINDS or b.kind in _NUMERIC_KINDS:
        return _sql(f"({c.to_num(a)} {op} {c.to_num(b)})", "BOOL")
    if a.kind == "STR" or b.kind == "STR":
        return _sql(f"({c.to_str(a)} {op} {c.to_str(b)})", "BOOL")
    x, y = c.to_json(a), c.to_json(b)
    return _sql(
        c.let(
            x,
            lambda lst: c.let(
                y,
                lambda r: (
                    f"CASE WHEN fp_cmp_num({lst}, {r}) THEN CAST({lst} AS DOUBLE) {op} CAST({r} AS DOUBLE) "
                    f"ELSE ({lst} ->> '$') {op} ({r} ->> '$') END"
                ),
                "::JSON",
            ),
            "::JSON",
        ),
        "BOOL",
    )


def arithmetic(c: Compiler, op: str, a: Sql, b: Sql) -> Sql:
    if op == "+" and (a.kind == "STR" or b.kind == "STR"):
        return _sql(f"({c.to_str(a)} || {c.to_str(b)})", "STR")
    ints = a.kind == "INT" and b.kind == "INT"
    x, y = (c.to_int(a), c.to_int(b)) if ints else (c.to_num(a), c.to_num(b))
    if op in ("+", "-", "*"):
        return _sql(f"({x} {op} {y})", "INT" if ints else "NUM")
    if op == "/":
        return _sql(f"(CASE WHEN {y} = 0 THEN NULL ELSE CAST({x} AS DOUBLE) / {y} END)", "NUM")
    if op == "div":
        return _sql(f"(CASE WHEN {y} = 0 THEN NULL ELSE CAST(trunc({x} / {y}) AS BIGINT) END)", "INT")
    return _sql(f"(CASE WHEN {y} = 0 THEN NULL ELSE {x} % {y} END)", "INT" if ints else "NUM")
