"""FHIRPath functions whose SQL is the same on every dialect but for the list primitives.

Existence, filtering and projection (FHIRPath N1 §5.1-5.2: ``empty``, ``exists``, ``all``, ``where``,
``select``, ``count``), ``single``, ``union``/``combine`` (§5.4), ``not`` and ``iif`` (§5.5, §7),
written once against ``CompilerCore``'s hooks (``size``, ``filter``, ``transform``, ``lambda_index``,
``concat``, ``EMPTY``) and registered into each dialect's ``FunctionTable`` by ``register``.
"""

from __future__ import annotations

from typing import Any

from medcloud.analytics.fhirpath import ast
from medcloud.analytics.fhirpath._core import CompilerCore, FunctionTable, Scope, Sql, lambda_scope

__all__ = ["register"]

_Args = tuple[ast.Node, ...]


def _criteria(c: CompilerCore, arg: ast.Node, s: Scope, base: Sql, keep: bool = True) -> tuple[str, str, str]:
    """(variable, index, SQL boolean) for a criteria argument evaluated per item ($index 0-based).

    ``keep``: the boolean only decides which items a list filter keeps, where NULL ({}) already
    drops the item as FALSE would; otherwise {} is made FALSE explicitly.
    """
    v, i = c.var(), c.var()
    body = c.node(arg, lambda_scope(s, v, c.lambda_index(i), base.fhir_type))
    crit = c.to_bool(body)
    return v, i, (crit if keep else f"coalesce({crit}, FALSE)")


def _empty(c: CompilerCore, base: Sql, args: _Args, s: Scope) -> Sql:
    if base.kind != "COLL":
        return Sql(f"({c.to_one(base).text} IS NULL)", "BOOL")
    return Sql(f"({c.size(base.text)} = 0)", "BOOL")


def _exists(c: CompilerCore, base: Sql, args: _Args, s: Scope) -> Sql:
    if not args:
        if base.kind != "COLL":
            return Sql(f"({c.to_one(base).text} IS NOT NULL)", "BOOL")
        return Sql(f"({c.size(base.text)} > 0)", "BOOL")
    v, i, crit = _criteria(c, args[0], s, base)
    return Sql(f"({c.size(c.filter(c.to_coll(base), v, i, crit))} > 0)", "BOOL")


def _all(c: CompilerCore, base: Sql, args: _Args, s: Scope) -> Sql:
    v, i, crit = _criteria(c, args[0], s, base, keep=False)
    return Sql(f"({c.size(c.filter(c.to_coll(base), v, i, f'NOT {crit}'))} = 0)", "BOOL")


def _where(c: CompilerCore, base: Sql, args: _Args, s: Scope) -> Sql:
    v, i, crit = _criteria(c, args[0], s, base)
    return Sql(c.filter(c.to_coll(base), v, i, crit), "COLL", base.fhir_type)


def _select(c: CompilerCore, base: Sql, args: _Args, s: Scope) -> Sql:
    v, i = c.var(), c.var()
    body = c.node(args[0], lambda_scope(s, v, c.lambda_index(i), base.fhir_type))
    return Sql(f"flatten({c.transform(c.to_coll(base), v, i, c.to_coll(body))})", "COLL")


def _count(c: CompilerCore, base: Sql, args: _Args, s: Scope) -> Sql:
    return Sql(f"CAST({c.size(c.to_coll(base))} AS BIGINT)", "INT")


def _single(c: CompilerCore, base: Sql, args: _Args, s: Scope) -> Sql:
    return c.to_one(base)


def _union(c: CompilerCore, base: Sql, args: _Args, s: Scope) -> Sql:
    return c.binary("|", base, c.node(args[0], s))


def _combine(c: CompilerCore, base: Sql, args: _Args, s: Scope) -> Sql:
    return Sql(c.concat(c.to_coll(base), c.to_coll(c.node(args[0], s))), "COLL")


def _not(c: CompilerCore, base: Sql, args: _Args, s: Scope) -> Sql:
    return Sql(f"(NOT {c.to_bool(base)})", "BOOL")


def _iif(c: CompilerCore, base: Sql, args: _Args, s: Scope) -> Sql:
    crit = c.to_bool(c.node(args[0], s))
    yes = c.node(args[1], s)
    no = c.node(args[2], s) if len(args) == 3 else None
    if no is not None and yes.kind == no.kind and yes.kind != "COLL":
        return Sql(f"(CASE WHEN {crit} THEN {yes.text} ELSE {no.text} END)", yes.kind)
    if no is None and yes.kind != "COLL":
        return Sql(f"(CASE WHEN {crit} THEN {c.to_one(yes).text} END)", "ONE")
    other = c.to_coll(no) if no is not None else c.EMPTY
    return Sql(f"(CASE WHEN {crit} THEN {c.to_coll(yes)} ELSE {other} END)", "COLL")


_COMMON = {
    "empty": (0, 0, _empty),
    "exists": (0, 1, _exists),
    "all": (1, 1, _all),
    "where": (1, 1, _where),
    "select": (1, 1, _select),
    "count": (0, 0, _count),
    "single": (0, 0, _single),
    "union": (1, 1, _union),
    "combine": (1, 1, _combine),
    "not": (0, 0, _not),
    "iif": (2, 3, _iif),
}


def register(table: FunctionTable[Any]) -> None:
    """Add the shared functions to a dialect's table (the dialect may still override one)."""
    for name, (lo, hi, impl) in _COMMON.items():
        table.fn(name, lo, hi)(impl)
