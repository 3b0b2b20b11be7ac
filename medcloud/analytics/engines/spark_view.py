"""Compile a ViewDefinition into one Spark SQL SELECT: ``_duckdb_view.py`` in Spark's dialect.

Same processing algorithm (StructureDefinition-ViewDefinition-notes, "Processing Algorithm") and
the same list-valued design: a select's rows are an ``ARRAY<STRUCT<...>>`` built with ``transform``
+ ``flatten`` (forEach = ``transform`` over the focus, whose 0-based lambda index is
``%rowIndex``), and the top level ``explode``s the lists, one generator per sub-query (Spark allows
one per SELECT). The resource is parsed once with ``parse_json``. Every cell is the JSON text of
its value (a STRING), so DuckDB and Spark rows compare after ``json.loads``.
"""

from __future__ import annotations

from dataclasses import dataclass

from medcloud.analytics.engines._duckdb_view import REPEAT_DEPTH, _all_columns
from medcloud.analytics.errors import ViewDefinitionError
from medcloud.analytics.fhirpath.to_duckdb import Scope, Sql
from medcloud.analytics.fhirpath.to_spark import (
    SparkCompiler,
    constant_sql,
    is_bool,
    is_obj,
    json_array_text,
    json_text,
    sql_str,
)
from medcloud.analytics.viewdef import Column, Select, ViewDefinition

__all__ = ["compile_view"]

RESOURCE = "r__"


@dataclass(frozen=True, slots=True)
class _Rows:
    columns: tuple[str, ...]
    single: dict[str, str] | None = None  # exactly one row: column -> JSON text expression
    many: str | None = None  # an ARRAY<STRUCT> expression


def _ident(name: str) -> str:
    return "`" + name.replace("`", "``") + "`"


def _concat(lists: list[str]) -> str:
    return lists[0] if len(lists) == 1 else f"concat({', '.join(lists)})"


class _ViewCompiler:
    def __init__(self, view: ViewDefinition, repeat_depth: int):
        self.view = view
        self.fp = SparkCompiler()
        self.repeat_depth = repeat_depth
        constants = {c.name: constant_sql(c.value_type, c.value) for c in view.constants}
        self.root = Scope(
            Sql(RESOURCE, "ONE"), RESOURCE, "CAST(0 AS BIGINT)", constants, None, True, view.resource
        )

    def compile(self, expression: str, scope: Scope, location: str) -> Sql:
        try:
            return self.fp.compile(expression, scope)
        except ViewDefinitionError as exc:
            if exc.location:
                raise
            raise ViewDefinitionError(location, exc.message) from exc

    def scope_at(self, node: str, row_index: str) -> Scope:
        r = self.root
        return Scope(Sql(node, "ONE"), r.resource, row_index, r.constants, None, False, r.resource_type)

    # -- Process(S, N) ------------------------------------------------------------------------
    def process(self, sel: Select, scope: Scope) -> _Rows:
        if not sel.iterates:
            return self.body(sel, scope)
        f, i = self.fp.var(), self.fp.var()
        inner = self.body(sel, self.scope_at(f, f"CAST({i} AS BIGINT)"))
        rows = self.as_list(inner)
        foci = self.foci(sel, scope)
        if sel.for_each_or_null is not None:
            empty = f"array({self.null_row(inner.columns, sel)})"
            rows = (
                f"CASE WHEN {f} IS NULL THEN (CASE WHEN {i} = 0 THEN {empty} ELSE slice({empty}, 1, 0) END) "
                f"ELSE {rows} END"
            )
            foci = f"concat({foci}, array(CAST(NULL AS VARIANT)))"
        return _Rows(inner.columns, many=f"flatten(transform({foci}, ({f}, {i}) -> {rows}))")

    def foci(self, sel: Select, scope: Scope) -> str:
        if sel.for_each is not None:
            return self.fp.to_coll(self.compile(sel.for_each, scope, f"{sel.location}.forEach"))
        if sel.for_each_or_null is not None:
            return self.fp.to_coll(self.compile(sel.for_each_or_null, scope, f"{sel.location}.forEachOrNull"))
        return self.repeat(sel, scope)

    def repeat(self, sel: Select, scope: Scope) -> str:
        """Pre-order traversal of ``repeat`` paths, unrolled level by level and sorted by a path key."""

        def children(parent_key: str | None, s: Scope) -> str:
            parts = []
            for j, path in enumerate(sel.repeat):
                coll = self.fp.to_coll(self.compile(path, s, f"{sel.location}.repeat[{j}]"))
                x, i = self.fp.var(), self.fp.var()
                key = f"array({j}, {i})" if parent_key is None else f"concat({parent_key}, array({j}, {i}))"
                parts.append(f"transform({coll}, ({x}, {i}) -> named_struct('k', {key}, 'n', {x}))")
            return _concat(parts)

        def next_level(level: str) -> str:
            e = self.fp.var()
            return f"flatten(transform({level}, {e} -> {children(f'{e}.k', self.scope_at(f'{e}.n', '0'))}))"

        levels: list[str] = []
        first = children(None, scope)

        def nest(level_sql: str, depth: int) -> str:
            v = self.fp.var()
            levels.append(v)
            if depth == self.repeat_depth:
                overflow = sql_str(
                    f"{sel.location}.repeat: data nests deeper than {self.repeat_depth} levels"
                )
                a, b = self.fp.var(), self.fp.var()
                # VARIANT is not orderable: sort by the path key only (keys are unique).
                ordered = (
                    f"array_sort({_concat(levels)}, ({a}, {b}) -> "
                    f"CASE WHEN {a}.k < {b}.k THEN -1 WHEN {a}.k > {b}.k THEN 1 ELSE 0 END)"
                )
                body = f"CASE WHEN size({next_level(v)}) > 0 THEN raise_error({overflow}) ELSE {ordered} END"
            else:
                body = nest(next_level(v), depth + 1)
            return f"get(transform(array({level_sql}), {v} -> {body}), 0)"

        sorted_nodes = nest(first, 1)
        e = self.fp.var()
        return f"transform({sorted_nodes}, {e} -> {e}.n)"

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
            return json_array_text(self.fp.to_coll(e), self.fp.var())
        declared = (col.type or "").rsplit("/", 1)[-1]
        check = ""
        if not declared or declared[0].islower():
            complex_msg = sql_str(
                f"{col.location}: column {col.name!r} returned a complex value; declare its FHIR type in 'type'"
            )
            check = "WHEN {obj} THEN raise_error(" + complex_msg + ") "
        if e.kind == "COLL":
            msg = sql_str(
                f"{col.location}: column {col.name!r} got several values; set collection: true to keep them"
            )
            return self.fp.let(
                e.text,
                lambda c: (
                    f"CASE WHEN size({c}) > 1 THEN raise_error({msg}) "
                    f"{check.format(obj=is_obj(f'get({c}, 0)'))}ELSE {json_text(f'get({c}, 0)')} END"
                ),
            )
        one = self.fp.to_one(e).text
        if e.kind == "ONE" and check:
            return self.fp.let(one, lambda v: f"CASE {check.format(obj=is_obj(v))}ELSE {json_text(v)} END")
        return self.fp.let(one, json_text)

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
        expr = f"array({self.struct(columns, cells)})"
        for r, many in reversed(nested):
            expr = f"flatten(transform({many}, {r} -> {expr}))"
        return _Rows(columns, many=expr)

    def struct(self, columns: tuple[str, ...], cells: dict[str, str]) -> str:
        if not columns:
            return "named_struct('__empty', CAST(NULL AS STRING))"
        return "named_struct(" + ", ".join(f"{sql_str(c)}, CAST({cells[c]} AS STRING)" for c in columns) + ")"

    def as_list(self, rows: _Rows) -> str:
        if rows.many is not None:
            return rows.many
        return f"array({self.struct(rows.columns, rows.single or {})})"

    def null_row(self, columns: tuple[str, ...], sel: Select) -> str:
        row_index_columns = {c.name for c in _all_columns(sel) if c.path.strip() == "%rowIndex"}
        cells = {c: ("'0'" if c in row_index_columns else "NULL") for c in columns}
        return self.struct(columns, cells)

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
                    f"CASE WHEN {x} IS NULL THEN FALSE WHEN {is_bool(x)} "
                    f"THEN try_variant_get({x}, '$', 'boolean') ELSE raise_error({msg}) END"
                )

            out.append(self.fp.let(one, check))
        return out

    def select_sql(self, source: str) -> tuple[str, tuple[str, ...]]:
        parts = [self.process(child, self.root) for child in self.view.root.selects]
        rtype = f"try_variant_get({RESOURCE}, '$.resourceType', 'string')"
        conditions = [f"{rtype} = {sql_str(self.view.resource)}", *self.where()]
        parsed = (
            f"SELECT {RESOURCE} FROM (SELECT try_parse_json(resource) AS {RESOURCE} FROM {source}) AS in__ "
            f"WHERE {RESOURCE} IS NOT NULL"
        )
        singles = {c: e for p in parts if p.single is not None for c, e in p.single.items()}
        names = {c: f"c__{i}" for i, c in enumerate(singles)}
        manys = [p for p in parts if p.many is not None]
        computed = [f"{e} AS {names[c]}" for c, e in singles.items()]
        computed += [f"{p.many} AS m__{k}" for k, p in enumerate(manys)]
        query = (
            f"SELECT {', '.join(computed) or 'NULL AS none__'} FROM ({parsed}) AS parsed__ WHERE "
            + " AND ".join(conditions)
        )
        out: dict[str, str] = {c: names[c] for c in singles}
        carried = list(names.values())
        for k, p in enumerate(manys):
            later = [f"m__{j}" for j in range(k + 1, len(manys))]
            query = f"SELECT {', '.join([*carried, f'explode(m__{k}) AS p__{k}', *later])} FROM ({query}) AS l__{k}"
            carried.append(f"p__{k}")
            out.update({c: f"p__{k}.{_ident(c)}" for c in p.columns})
        columns = tuple(c for p in parts for c in p.columns)
        cols = ", ".join(f"{out[c]} AS {_ident(c)}" for c in columns)
        return f"SELECT {cols} FROM ({query}) AS rows__", columns


def compile_view(
    view: ViewDefinition, source: str, repeat_depth: int = REPEAT_DEPTH
) -> tuple[str, tuple[str, ...]]:
    """(Spark SQL, column names) for ``view`` over ``source``, a relation with a STRING column ``resource``."""
    return _ViewCompiler(view, repeat_depth).select_sql(source)
