"""Compile a FHIRPath AST into one DuckDB SQL expression.

Resources are DuckDB ``JSON`` values. Every FHIRPath expression denotes a collection; the compiler
keeps a static *kind* for each sub-expression so that singletons stay cheap scalars:

    COLL  JSON[]   a collection (never NULL; empty list for ``{}``)
    ONE   JSON     at most one node (NULL for ``{}``)
    BOOL  BOOLEAN  ``{}`` is NULL, which gives FHIRPath's three-valued logic for free
    STR   VARCHAR, NUM DOUBLE, INT BIGINT   literals, constants and operator results

Nothing here interprets data in Python: the result is SQL text evaluated by DuckDB per row. The
helper macros the SQL calls (``fp_*``) are in ``MACROS``; the engine installs them on its connection.
"""

from __future__ import annotations

import itertools
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from decimal import Decimal
from typing import Literal as TLiteral

from medcloud.analytics.errors import ViewDefinitionError
from medcloud.analytics.fhirpath import ast
from medcloud.analytics.fhirpath._sqltext import MACROS, sql_str
from medcloud.analytics.fhirpath.parser import parse

__all__ = ["MACROS", "Compiler", "Scope", "Sql", "sql_str"]

ROOT_FIELDS = "__top"
Kind = TLiteral["COLL", "ONE", "BOOL", "STR", "NUM", "INT"]
_SCALARS = ("BOOL", "STR", "NUM", "INT")


@dataclass(frozen=True, slots=True)
class Sql:
    text: str
    kind: Kind
    fhir_type: str | None = None  # a static hint: "dateTime" after ofType(dateTime), "date" for birthDate


@dataclass(frozen=True, slots=True)
class Scope:
    focus: Sql  # $this; a ONE
    resource: str  # SQL for %resource
    row_index: str  # SQL for %rowIndex
    constants: Mapping[str, Sql] = field(default_factory=dict)
    index: str | None = None  # $index inside where()/select()
    at_root: bool = False  # focus is the resource itself (so ``Patient.name`` may name the type)
    resource_type: str | None = None


# FHIR primitive type -> predicate on json_type(); complex types are JSON objects.
_STRINGY = {
    "string",
    "code",
    "id",
    "uri",
    "url",
    "canonical",
    "oid",
    "uuid",
    "markdown",
    "base64binary",
    "date",
    "datetime",
    "time",
    "instant",
    "xhtml",
}
_INTEGERS = {"integer", "positiveint", "unsignedint", "integer64"}
_JSON_TYPES_FOR = {
    "boolean": "('BOOLEAN')",
    "decimal": "('DOUBLE', 'BIGINT', 'UBIGINT')",
    **{t: "('BIGINT', 'UBIGINT')" for t in _INTEGERS},
    **{t: "('VARCHAR')" for t in _STRINGY},
}
# Elements whose values are dateTime/instant rather than date; only steers lowBoundary()/highBoundary().
_DATETIME_ELEMENTS = {
    "start",
    "end",
    "issued",
    "authoredOn",
    "recordedDate",
    "lastUpdated",
    "recorded",
    "occurred",
}
_CONSTANT_KINDS: dict[str, Kind] = {
    "boolean": "BOOL",
    "decimal": "NUM",
    **{t: "INT" for t in _INTEGERS},
    **{t: "STR" for t in _STRINGY},
}


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


class Compiler:
    """One instance per view: hands out unique lambda variable names."""

    def __init__(self, root: str | None = None) -> None:
        self._names = itertools.count(1)
        # Members of the resource itself are read with one multi-path json_extract per resource
        # (``root_fields``), so the resource's JSON text is parsed once, not once per column.
        self.root = root
        self.root_fields: dict[str, int] = {}

    def var(self) -> str:
        return f"_v{next(self._names)}"

    # -- entry points ------------------------------------------------------------------------
    def compile(self, expression: str, scope: Scope) -> Sql:
        return self.node(parse(expression), scope)

    def collection(self, expression: str, scope: Scope) -> str:
        return self.to_coll(self.compile(expression, scope))

    # -- kind conversions ----------------------------------------------------------------------
    def let(self, value: str, body: Callable[[str], str], cast: str = "") -> str:
        """Evaluate ``value`` once and use it several times in ``body`` (a lambda acts as LET)."""
        if re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_\"]*|\[\d+\])?", value):
            return body(value)
        v = self.var()
        return f"list_transform([{value}{cast}], lambda {v}: {body(v)})[1]"

    def to_coll(self, e: Sql) -> str:
        if e.kind == "COLL":
            return e.text
        v = self.var()
        one = self.to_one(e).text
        return f"list_filter([{one}], lambda {v}: {v} IS NOT NULL)"

    def to_one(self, e: Sql, what: str = "a single value") -> Sql:
        if e.kind == "ONE":
            return e
        if e.kind == "COLL":
            msg = sql_str(f"expected {what} but the expression returned several values")
            return Sql(
                self.let(e.text, lambda c: f"CASE WHEN len({c}) > 1 THEN error({msg}) ELSE {c}[1] END"),
                "ONE",
                e.fhir_type,
            )
        return Sql(f"to_json({e.text})", "ONE", e.fhir_type)

    def to_bool(self, e: Sql) -> str:
        if e.kind == "BOOL":
            return e.text
        if e.kind in ("STR", "NUM", "INT"):
            return f"({e.text} IS NOT NULL)"
        one = self.to_one(e, "a single boolean").text
        return self.let(
            one,
            lambda x: (
                f"CASE WHEN {x} IS NULL THEN NULL WHEN json_type({x}) = 'BOOLEAN' "
                f"THEN CAST({x} AS BOOLEAN) ELSE TRUE END"
            ),
        )

    def to_str(self, e: Sql) -> str:
        if e.kind == "STR":
            return e.text
        if e.kind in _SCALARS:
            return f"CAST({e.text} AS VARCHAR)"
        return f"({self.to_one(e).text} ->> '$')"

    def to_num(self, e: Sql) -> str:
        if e.kind in ("NUM", "INT"):
            return e.text
        if e.kind in ("STR", "BOOL"):
            return f"TRY_CAST({e.text} AS DOUBLE)"
        return f"TRY_CAST({self.to_one(e).text} ->> '$' AS DOUBLE)"

    def to_int(self, e: Sql) -> str:
        if e.kind == "INT":
            return e.text
        if e.kind in _SCALARS:
            return f"TRY_CAST({e.text} AS BIGINT)"
        return f"TRY_CAST({self.to_one(e).text} ->> '$' AS BIGINT)"

    def to_json(self, e: Sql) -> str:
        """A ONE (JSON or NULL) for the singleton value of ``e``."""
        return self.to_one(e).text

    # -- nodes -------------------------------------------------------------------------------
    def node(self, n: ast.Node, s: Scope) -> Sql:
        method = getattr(self, "_" + type(n).__name__.lower())
        return method(n, s)

    def _literal(self, n: ast.Literal, s: Scope) -> Sql:
        if n.type == "empty":
            return Sql("CAST([] AS JSON[])", "COLL")
        if n.type == "boolean":
            return Sql("TRUE" if n.value else "FALSE", "BOOL")
        if n.type == "integer":
            return Sql(f"CAST({n.value} AS BIGINT)", "INT")
        if n.type == "decimal":
            return Sql(f"CAST({n.value} AS DOUBLE)", "NUM", "decimal")
        return Sql(sql_str(str(n.value)), "STR", n.type)

    def _identifier(self, n: ast.Identifier, s: Scope) -> Sql:
        if s.at_root and n.name == s.resource_type:
            return Sql(self.to_coll(s.focus), "COLL")
        return self.member(s.focus, n.name)

    def _member(self, n: ast.Member, s: Scope) -> Sql:
        return self.member(self.node(n.target, s), n.name)

    def member(self, base: Sql, name: str) -> Sql:
        path = sql_str(f'$."{name}"')
        hint = "date" if name == "birthDate" else ("dateTime" if name in _DATETIME_ELEMENTS else None)
        if base.kind == "ONE" and base.text == self.root:
            index = self.root_fields.setdefault(path, len(self.root_fields) + 1)
            return Sql(f"fp_items({ROOT_FIELDS}[{index}])", "COLL", hint)
        if base.kind == "ONE":
            return Sql(f"fp_items(json_extract({base.text}, {path}))", "COLL", hint)
        if base.kind in _SCALARS:
            return Sql("CAST([] AS JSON[])", "COLL")
        v = self.var()
        return Sql(
            f"flatten(list_transform({base.text}, lambda {v}: fp_items(json_extract({v}, {path}))))",
            "COLL",
            hint,
        )

    def _variable(self, n: ast.Variable, s: Scope) -> Sql:
        if n.name == "this":
            return s.focus
        if n.name == "index" and s.index is not None:
            return Sql(s.index, "INT")
        raise ViewDefinitionError("", f"${n.name} is not available here")

    def _external(self, n: ast.External, s: Scope) -> Sql:
        if n.name == "rowIndex":
            return Sql(s.row_index, "INT")
        if n.name in ("resource", "rootResource", "context"):
            return Sql(s.resource, "ONE")
        if n.name in s.constants:
            return s.constants[n.name]
        raise ViewDefinitionError("", f"undefined constant %{n.name}")

    def _indexer(self, n: ast.Indexer, s: Scope) -> Sql:
        coll = self.to_coll(self.node(n.target, s))
        idx = self.to_int(self.node(n.index, s))
        return Sql(self.let(idx, lambda i: f"CASE WHEN {i} < 0 THEN NULL ELSE {coll}[{i} + 1] END"), "ONE")

    def _unary(self, n: ast.Unary, s: Scope) -> Sql:
        e = self.node(n.operand, s)
        if n.op == "+":
            return e
        if e.kind == "INT":
            return Sql(f"(-{e.text})", "INT")
        if e.kind == "NUM":
            return Sql(f"(-{e.text})", "NUM")
        return Sql(f"(-{self.to_num(e)})", "NUM")

    def _typeop(self, n: ast.TypeOp, s: Scope) -> Sql:
        if n.op == "as":
            return self.of_type(n.operand, n.type_name, s)
        # ``value is Quantity``: true when the (choice-aware) ofType() finds the value, {} when there
        # is nothing to test. Without a schema an absent choice element reads as {}.
        matches = self.to_coll(self.of_type(n.operand, n.type_name, s))
        plain = self.to_coll(self.node(n.operand, s))
        return Sql(
            f"(CASE WHEN len({matches}) > 0 THEN TRUE WHEN len({plain}) = 0 THEN NULL ELSE FALSE END)", "BOOL"
        )

    # -- operators ---------------------------------------------------------------------------
    def _binary(self, n: ast.Binary, s: Scope) -> Sql:
        from medcloud.analytics.fhirpath import _operators

        return _operators.binary(self, n.op, self.node(n.left, s), self.node(n.right, s))

    # -- functions ---------------------------------------------------------------------------
    def _call(self, n: ast.Call, s: Scope) -> Sql:
        from medcloud.analytics.fhirpath import _functions

        return _functions.call(self, n, s)

    def of_type(self, target: ast.Node | None, type_name: str, s: Scope) -> Sql:
        """``x.ofType(T)``: for a choice element ``value`` also read ``valueT`` (FHIR JSON §choice)."""
        hint = type_name[0].lower() + type_name[1:]
        if isinstance(target, ast.Identifier | ast.Member) and not (
            isinstance(target, ast.Identifier) and s.at_root and target.name == s.resource_type
        ):
            parent = s.focus if isinstance(target, ast.Identifier) else self.node(target.target, s)
            choice = self.member(parent, target.name + type_name[0].upper() + type_name[1:])
            plain = self.of_type_filter(self.member(parent, target.name), type_name)
            return Sql(f"list_concat({choice.text}, {plain.text})", "COLL", hint)
        base = s.focus if target is None else self.node(target, s)
        return replace(self.of_type_filter(Sql(self.to_coll(base), "COLL"), type_name), fhir_type=hint)

    def of_type_filter(self, coll: Sql, type_name: str) -> Sql:
        types = _JSON_TYPES_FOR.get(type_name.lower())
        if types is None:
            types = "('OBJECT')"
        v = self.var()
        return Sql(f"list_filter({self.to_coll(coll)}, lambda {v}: json_type({v}) IN {types})", "COLL")
