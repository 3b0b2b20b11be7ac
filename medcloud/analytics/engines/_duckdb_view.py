"""Compile a ViewDefinition into one DuckDB SELECT.

The spec's processing algorithm (StructureDefinition-ViewDefinition-notes, "Processing Algorithm")
is expressed with list values instead of joins: ``Process(S, N)`` becomes a SQL expression of type
``STRUCT(...)[]`` (the rows S emits for node N), or, when S cannot emit more or fewer than one row
(no forEach/forEachOrNull/repeat/unionAll below it), a plain set of column expressions. Cartesian
products of partial rows are nested ``list_transform`` + ``flatten``; forEach is a list_transform
over the focus collection whose lambda index is ``%rowIndex``; the top level ``unnest``s the list.
Every cell is a DuckDB JSON value; the runner casts to the requested output types afterwards.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass

from medcloud.analytics.errors import ViewDefinitionError
from medcloud.analytics.fhirpath.to_duckdb import ROOT_FIELDS, Compiler, Scope, Sql, constant_sql, sql_str
from medcloud.analytics.viewdef import Column, Select, ViewDefinition
from medcloud.fhir.definitions import PRIMITIVE_TYPES

__all__ = ["compile_view"]

REPEAT_DEPTH = 12  # repeat: levels unrolled; deeper data raises an error instead of being cut off
ROW = "__row"
RESOURCE = "__r"


@dataclass(frozen=True, slots=True)
class _Rows:
    columns: tuple[str, ...]
    single: dict[str, str] | None = None  # exactly one row: column -> JSON expression
    many: str | None = None  # a STRUCT[] expression


def _ident(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


class _ViewCompiler:
    def __init__(self, view: ViewDefinition, repeat_depth: int, schema: bool = True):
        self.view = view
        self.fp = Compiler(root=RESOURCE, schema=schema)
        self.fp.root_fields[sql_str('$."resourceType"')] = 1
        self.repeat_depth = repeat_depth
        # Per column name (unique in a view): the value as a SQL scalar when it is one, and whether
        # the schema says it is a primitive (so typed output needs no object/array test).
        self.native: dict[str, Sql] = {}
        self.primitive: set[str] = set()
        constants = {c.name: constant_sql(c.value_type, c.value) for c in view.constants}
        self.root = Scope(
            Sql(RESOURCE, "ONE", view.resource), RESOURCE, "CAST(0 AS BIGINT)", constants, None, True, view.resource
        )

    def compile(self, expression: str, scope: Scope, location: str) -> Sql:
        try:
            return self.fp.compile(expression, scope)
        except ViewDefinitionError as exc:
            if exc.location:
                raise
            raise ViewDefinitionError(location, exc.message) from exc

    def scope_at(self, node: str, row_index: str, fhir_type: str | None = None) -> Scope:
        r = self.root
        return Scope(Sql(node, "ONE", fhir_type), r.resource, row_index, r.constants, None, False, r.resource_type)

    # -- Process(S, N) ------------------------------------------------------------------------
    def process(self, sel: Select, scope: Scope) -> _Rows:
        if not sel.iterates:
            return self.body(sel, scope)
        f, i = self.fp.var(), self.fp.var()
        focus = self.foci(sel, scope)
        inner = self.body(sel, self.scope_at(f, f"CAST({i} - 1 AS BIGINT)", focus.fhir_type))
        rows = self.as_list(inner)
        foci = self.fp.to_coll(focus)
        if sel.for_each_or_null is not None:
            empty = f"[{self.null_row(inner.columns, sel)}]"
            rows = (
                f"CASE WHEN {f} IS NULL THEN (CASE WHEN {i} = 1 THEN {empty} ELSE {self.typed_empty(empty)} END) "
                f"ELSE {rows} END"
            )
            foci = f"list_concat({foci}, [NULL])"
        return _Rows(inner.columns, many=f"flatten(list_transform({foci}, lambda {f}, {i}: {rows}))")

    def foci(self, sel: Select, scope: Scope) -> Sql:
        if sel.for_each is not None:
            return self.compile(sel.for_each, scope, f"{sel.location}.forEach")
        if sel.for_each_or_null is not None:
            return self.compile(sel.for_each_or_null, scope, f"{sel.location}.forEachOrNull")
        return Sql(self.repeat(sel, scope), "COLL")

    def repeat(self, sel: Select, scope: Scope) -> str:
        """Pre-order traversal of ``repeat`` paths, unrolled level by level and sorted by a path key."""

        def children(parent_key: str | None, s: Scope) -> str:
            parts = []
            for j, path in enumerate(sel.repeat):
                coll = self.fp.to_coll(self.compile(path, s, f"{sel.location}.repeat[{j}]"))
                x, i = self.fp.var(), self.fp.var()
                key = f"[{j}, {i}]" if parent_key is None else f"list_concat({parent_key}, [{j}, {i}])"
                parts.append(f"list_transform({coll}, lambda {x}, {i}: {{'k': {key}, 'n': {x}}})")
            return _concat(parts)

        def next_level(level: str) -> str:
            e = self.fp.var()
            return f"flatten(list_transform({level}, lambda {e}: {children(f'{e}.k', self.scope_at(f'{e}.n', '0'))}))"

        levels: list[str] = []
        first = children(None, scope)

        def nest(level_sql: str, depth: int) -> str:
            v = self.fp.var()
            levels.append(v)
            if depth == self.repeat_depth:
                overflow = sql_str(
                    f"{sel.location}.repeat: data nests deeper than {self.repeat_depth} levels"
                )
                everything = _concat(levels)
                body = f"CASE WHEN len({next_level(v)}) > 0 THEN error({overflow}) ELSE list_sort({everything}) END"
            else:
                body = nest(next_level(v), depth + 1)
            return f"list_transform([{level_sql}], lambda {v}: {body})[1]"

        sorted_nodes = nest(first, 1)
        e = self.fp.var()
        return f"list_transform({sorted_nodes}, lambda {e}: {e}.n)"

    def body(self, sel: Select, scope: Scope) -> _Rows:
        parts: list[_Rows] = []
        if sel.columns:
            parts.append(
                _Rows(
                    tuple(c.name for c in sel.columns),
                    single={c.name: self.column(c, scope) for c in sel.columns},
                )
            )
        parts.extend(self.process(child, scope) for child in sel.selects)
        if sel.union_all:
            branches = [self.as_list(self.process(b, scope)) for b in sel.union_all]
            columns = self.process(sel.union_all[0], scope).columns
            parts.append(_Rows(columns, many=_concat(branches)))
        return self.cartesian(parts)

    def column(self, col: Column, scope: Scope) -> str:
        e = self.compile(col.path, scope, f"{col.location}.path")
        if col.collection:
            return f"to_json({self.fp.to_coll(e)})"
        # A complex value needs a declared complex type (ViewDefinition.select.column.type).
        if e.kind in ("STR", "BOOL"):
            self.native[col.name] = e
        if e.kind in ("STR", "BOOL", "INT", "NUM") or e.fhir_type in PRIMITIVE_TYPES:
            self.primitive.add(col.name)
        declared = (col.type or "").rsplit("/", 1)[-1]
        check = ""
        if (not declared or declared[0].islower()) and e.fhir_type not in PRIMITIVE_TYPES:
            complex_msg = sql_str(
                f"{col.location}: column {col.name!r} returned a complex value; "
                f"declare its FHIR type in 'type'"
            )
            check = "WHEN starts_with(CAST({v} AS VARCHAR), '{{') THEN error(" + complex_msg + ") "
        if e.kind == "COLL":
            msg = sql_str(
                f"{col.location}: column {col.name!r} got several values; set collection: true to keep them"
            )
            return self.fp.let(
                e.text,
                lambda c: (
                    f"CASE WHEN len({c}) > 1 THEN error({msg}) {check.format(v=f'{c}[1]')}ELSE {c}[1] END"
                ),
            )
        if e.kind == "ONE" and check:
            return self.fp.let(e.text, lambda v: f"CASE {check.format(v=v)}ELSE {v} END", "::JSON")
        return self.fp.to_one(e).text

    def cartesian(self, parts: list[_Rows]) -> _Rows:
        columns = tuple(name for p in parts for name in p.columns)
        if all(p.single is not None for p in parts):
            return _Rows(columns, single={k: v for p in parts for k, v in (p.single or {}).items()})
        cells: dict[str, str] = {}
        nested: list[tuple[str, str]] = []
        for p in parts:
            if p.single is not None:
                cells.update(p.single)
            else:
                r = self.fp.var()
                nested.append((r, p.many or ""))
                cells.update({name: f"{r}.{_ident(name)}" for name in p.columns})
        expr = f"[{self.struct(columns, cells)}]"
        for r, many in reversed(nested):
            expr = f"flatten(list_transform({many}, lambda {r}: {expr}))"
        return _Rows(columns, many=expr)

    def struct(self, columns: tuple[str, ...], cells: dict[str, str]) -> str:
        if not columns:
            return "{'__empty': CAST(NULL AS JSON)}"
        return "{" + ", ".join(f"{sql_str(c)}: CAST({cells[c]} AS JSON)" for c in columns) + "}"

    def as_list(self, rows: _Rows) -> str:
        if rows.many is not None:
            return rows.many
        return f"[{self.struct(rows.columns, rows.single or {})}]"

    def null_row(self, columns: tuple[str, ...], sel: Select) -> str:
        row_index_columns = {c.name for c in _all_columns(sel) if c.path.strip() == "%rowIndex"}
        cells = {c: ("to_json(0)" if c in row_index_columns else "NULL") for c in columns}
        return self.struct(columns, cells)

    def typed_empty(self, one_row_list: str) -> str:
        return f"{one_row_list}[1:0]"

    # -- the whole view ----------------------------------------------------------------------
    def where(self) -> list[str]:
        out = []
        for w in self.view.where:
            e = self.compile(w.path, self.root, w.location)
            if e.kind == "BOOL":
                out.append(f"coalesce({e.text}, FALSE)")
                continue
            one = self.fp.to_one(e, "a single boolean").text
            msg = sql_str(f"{w.location}: {w.path!r} must evaluate to a boolean")

            def check(x: str, msg: str = msg) -> str:
                return (
                    f"CASE WHEN {x} IS NULL THEN FALSE WHEN json_type({x}) = 'BOOLEAN' "
                    f"THEN CAST({x} AS BOOLEAN) ELSE error({msg}) END"
                )

            out.append(self.fp.let(one, check))
        return out

    def typed(self, column: str, cell: str, sql_type: str | None, top: bool) -> str:
        """``cell`` (JSON) as ``sql_type``; a top-level scalar value is used as it is."""
        native = self.native.get(column) if top else None
        if native is not None and (native.kind, sql_type) in (("STR", "VARCHAR"), ("BOOL", "BOOLEAN")):
            return native.text
        if sql_type is None:
            return cell
        if sql_type == "VARCHAR":
            if column in self.primitive:
                return f"({cell} ->> '$')"
            return self.fp.let(
                cell,
                lambda x: f"CASE WHEN json_type({x}) IN ('OBJECT', 'ARRAY') THEN CAST({x} AS VARCHAR) ELSE {x} ->> '$' END",
                "::JSON",
            )
        if sql_type == "BLOB":
            return f"from_base64({cell} ->> '$')"
        return f"CAST({cell} ->> '$' AS {sql_type})"

    def select_sql(self, source: str, types: dict[str, str | None] | None) -> tuple[str, tuple[str, ...]]:
        # The top-level Cartesian product is done by chained UNNESTs rather than nested lambdas:
        # DuckDB copies every captured value into each lambda, and the resource row is the largest.
        parts = [self.process(child, self.root) for child in self.view.root.selects]
        conditions = [
            f"CAST({ROOT_FIELDS}[1] AS VARCHAR) = {sql_str(json.dumps(self.view.resource))}",
            *self.where(),
        ]
        paths = ", ".join(self.fp.root_fields)  # keys are SQL string literals, in index order
        singles = {c: e for p in parts if p.single is not None for c, e in p.single.items()}
        manys = [p for p in parts if p.many is not None]
        # One row per resource: the projection names the view's columns itself (no outer SELECT).
        names = {c: (_ident(c) if not manys else f"__c{i}") for i, c in enumerate(singles)}
        # Every per-resource value (cells and row lists) is computed in one projection; the resource
        # and its parsed members are dropped before the UNNESTs multiply rows.
        if types is None:
            computed = [f"CAST({e} AS JSON) AS {names[c]}" for c, e in singles.items()]
        else:
            computed = [f"{self.typed(c, e, types[c], True)} AS {names[c]}" for c, e in singles.items()]
        computed += [f"{p.many} AS __m{k}" for k, p in enumerate(manys)]
        # Malformed input lines (NULL resources) have no resourceType, so the type test drops them.
        # The resource itself is carried only when an expression still reads it (fewer binds).
        uses_resource = re.search(rf"\b{RESOURCE}\b", " ".join([*computed, *conditions])) is not None
        if uses_resource:
            parsed = (
                f"SELECT json_extract({RESOURCE}, [{paths}]) AS {ROOT_FIELDS}, {RESOURCE} "
                f"FROM (SELECT CAST(resource AS JSON) AS {RESOURCE} FROM {source}) AS __in"
            )
        else:
            parsed = f"SELECT json_extract(CAST(resource AS JSON), [{paths}]) AS {ROOT_FIELDS} FROM {source} AS __in"
        query = (
            f"SELECT {', '.join(computed) or 'NULL AS __none'} FROM ({parsed}) AS __parsed WHERE "
            + " AND ".join(conditions)
        )
        columns = tuple(c for p in parts for c in p.columns)
        if not manys and singles:
            return query, columns
        out: dict[str, str] = {c: names[c] for c in singles}
        carried = list(names.values())
        for k, p in enumerate(manys):
            later = [f"__m{j}" for j in range(k + 1, len(manys))]
            query = f"SELECT {', '.join([*carried, f'unnest(__m{k}) AS __p{k}', *later])} FROM ({query}) AS __l{k}"
            carried.append(f"__p{k}")
            out.update({
                c: f"__p{k}.{_ident(c)}" if types is None else self.typed(c, f"__p{k}.{_ident(c)}", types[c], False)
                for c in p.columns
            })
        cols = ", ".join(f"{out[c]} AS {_ident(c)}" for c in columns)
        return f"SELECT {cols} FROM ({query}) AS __rows", columns


def _concat(lists: list[str]) -> str:
    """list_concat of any number of lists (two arguments at a time, for older DuckDB releases)."""
    out = lists[-1]
    for item in reversed(lists[:-1]):
        out = f"list_concat({item}, {out})"
    return out


def _all_columns(sel: Select) -> list[Column]:
    out = list(sel.columns)
    for child in (*sel.selects, *sel.union_all):
        out.extend(_all_columns(child))
    return out


def compile_view(
    view: ViewDefinition, source: str, repeat_depth: int = REPEAT_DEPTH,
    types: dict[str, str | None] | None = None, schema: bool = True,
) -> tuple[str, tuple[str, ...]]:
    """(SQL, column names) for ``view`` over ``source``, a relation with a JSON column ``resource``.

    Cells are JSON values, or with ``types`` (column -> SQL type, None to keep JSON) typed values.
    ``schema=False`` compiles without the R4 schema (every member through the general path).
    """
    return _ViewCompiler(view, repeat_depth, schema).select_sql(source, types)
