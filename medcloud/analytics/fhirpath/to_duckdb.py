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

import re
from collections.abc import Callable
from decimal import Decimal

from medcloud.analytics.fhirpath import ast
from medcloud.analytics.fhirpath._core import SCALARS, CompilerCore, Kind, Scope, Sql
from medcloud.analytics.fhirpath._sqltext import MACROS, STRING_TYPES, sql_str
from medcloud.fhir.definitions import elements

__all__ = ["MACROS", "Compiler", "Kind", "Scope", "Sql", "sql_str"]

ROOT_FIELDS = "__top"
_SCALARS = SCALARS


# FHIR primitive type -> predicate on json_type(); complex types are JSON objects.
_STRINGY = {t.lower() for t in STRING_TYPES}  # ofType() names, compared lower-case
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


class Compiler(CompilerCore):
    """DuckDB SQL text for the shared walk in ``_core.CompilerCore``; one instance per view."""

    EMPTY = "CAST([] AS JSON[])"
    VAR_PREFIX = "_v"

    def __init__(self, root: str | None = None, *, schema: bool = True) -> None:
        super().__init__()
        # Members of the resource itself are read with one multi-path json_extract per resource
        # (``root_fields``), so the resource's JSON text is parsed once, not once per column.
        self.root = root
        self.root_fields: dict[str, int] = {}
        # Read members the R4 schema knows by their cardinality and type (False: always the general
        # collection path, for data that breaks the schema).
        self.schema = schema
        self._lists: set[str] = set()  # to_json(<collection>) texts: JSON that is never NULL

    # -- dialect hooks -------------------------------------------------------------------------
    def quote(self, value: str) -> str:
        return sql_str(value)

    def size(self, coll: str) -> str:
        return f"len({coll})"

    def concat(self, a: str, b: str) -> str:
        return f"list_concat({a}, {b})"

    def filter(self, coll: str, var: str, index: str, body: str) -> str:
        return f"list_filter({coll}, lambda {var}, {index}: {body})"

    def transform(self, coll: str, var: str, index: str, body: str) -> str:
        return f"list_transform({coll}, lambda {var}, {index}: {body})"

    def lambda_index(self, index: str) -> str:
        return f"CAST({index} - 1 AS BIGINT)"  # DuckDB list lambdas count from 1

    def binary(self, op: str, left: Sql, right: Sql) -> Sql:
        from medcloud.analytics.fhirpath import _operators

        return _operators.binary(self, op, left, right)

    def call(self, n: ast.Call, s: Scope) -> Sql:
        from medcloud.analytics.fhirpath import _functions

        return _functions.call(self, n, s)

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
    def knows(self, fhir_type: str | None, key: str) -> bool:
        return self.schema and fhir_type is not None and key in elements().get(fhir_type, {})

    def member(self, base: Sql, name: str) -> Sql:
        info = elements().get(base.fhir_type or "", {}).get(name) if self.schema else None
        if info is not None and base.kind in ("ONE", "COLL"):
            return self._schema_member(base, name, *info)
        path = sql_str(f'$."{name}"')
        hint = "date" if name == "birthDate" else ("dateTime" if name in _DATETIME_ELEMENTS else None)
        if base.kind == "ONE" and base.text == self.root:
            return Sql(f"fp_items({ROOT_FIELDS}[{self._root_field(path)}])", "COLL", hint)
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

    def _root_field(self, path: str) -> int:
        return self.root_fields.setdefault(path, len(self.root_fields) + 1)

    def _schema_member(self, base: Sql, name: str, fhir_type: str | None, repeats: bool) -> Sql:
        """A member whose cardinality and type the R4 schema gives: plain JSON extraction.

        Single-valued elements are one value (``STR`` for string-like primitives, else ``ONE``), not a
        collection to normalise; chains of members fold into one JSONPath (``$[*]."given"[*]``).
        Data that breaks the schema (an array where one value is allowed) is not normalised.
        """
        key = f'."{name}"' + ("[*]" if repeats else "")  # schema keys are plain identifiers
        if base.kind == "ONE" and base.text == self.root:
            field = f"{ROOT_FIELDS}[{self._root_field(sql_str('$' + key.removesuffix('[*]')))}]"
            json, jsonpath = field, "$" + ("[*]" if repeats else "")
        elif base.path is not None:
            json, jsonpath = base.path[0], base.path[1] + key
        elif base.kind == "ONE":
            json, jsonpath = base.text, "$" + key
        else:
            json, jsonpath = f"to_json({base.text})", "$[*]" + key
            self._lists.add(json)  # a collection is never NULL, so neither is this JSON array
        if "[*]" in jsonpath:
            text = f"json_extract({json}, {sql_str(jsonpath)})"
            if json not in self._lists:  # the node may be absent (NULL): still an empty collection
                text = f"coalesce({text}, CAST([] AS JSON[]))"
            return Sql(text, "COLL", fhir_type, (json, jsonpath))
        if jsonpath == "$":
            return Sql(json, "ONE", fhir_type, (json, jsonpath))
        if fhir_type in STRING_TYPES:
            return Sql(f"({json} ->> {sql_str(jsonpath)})", "STR", fhir_type)
        return Sql(f"json_extract({json}, {sql_str(jsonpath)})", "ONE", fhir_type, (json, jsonpath))

    def _indexer(self, n: ast.Indexer, s: Scope) -> Sql:
        coll = self.to_coll(self.node(n.target, s))
        idx = self.to_int(self.node(n.index, s))
        return Sql(self.let(idx, lambda i: f"CASE WHEN {i} < 0 THEN NULL ELSE {coll}[{i} + 1] END"), "ONE")

    def of_type_filter(self, coll: Sql, type_name: str) -> Sql:
        types = _JSON_TYPES_FOR.get(type_name.lower())
        if types is None:
            types = "('OBJECT')"
        v = self.var()
        return Sql(f"list_filter({self.to_coll(coll)}, lambda {v}: json_type({v}) IN {types})", "COLL")
