"""Search parameters -> one SQL query over ``resources`` (SQLAlchemy Core, shared by SQLite and PostgreSQL).

Every plain parameter becomes ``SELECT rid FROM idx_<type> WHERE type=? AND param=? AND <value>``
(OR values inside one subquery); the parameters of a search (AND) are intersected into one
``rid IN (... INTERSECT ...)``, answered from the covering ``(type, param, <value>, rid)`` indexes
before the outer lookup by primary key (see ``Planner.filters``).
Chains (search.html#chaining) become nested subqueries over ``idx_reference``, ``_has``
(search.html#has) the reverse. Sorting uses correlated ``min``/``max`` subqueries per key and
paging is keyset over (sort keys, rid), never OFFSET.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from sqlalchemy import (
    ColumnElement,
    CompoundSelect,
    Select,
    and_,
    case,
    false,
    func,
    intersect,
    literal_column,
    not_,
    or_,
    select,
    tuple_,
)

from medcloud.errors import Invalid, NotSupported
from medcloud.fhir import definitions
from medcloud.fhir.definitions import SearchParam
from medcloud.fhir.search.params import composite, date, parse_value, predicate, reference, string, token, uri
from medcloud.fhir.search.parse import (
    RESULT_PARAMS,
    UNSUPPORTED_PARAMS,
    UnknownParameter,
    WarnFn,
    or_values,
    unescape,
)
from medcloud.fhir.terminology import Terminology
from medcloud.storage.schema import (
    INDEX_TABLES,
    compartments,
    idx_reference,
    idx_token,
    resource_history,
    resources,
)
from medcloud.storage.sql.dialect import json_text, narrative_text

if TYPE_CHECKING:
    from medcloud.security.policy import ReadFilter

# What of a type the asking principal may see (the guard's read_filter), or None for no restriction.
Access = Callable[[str], "ReadFilter"]

_MODIFIERS: dict[str, frozenset[str]] = {
    "string": string.MODIFIERS,
    "token": token.MODIFIERS | token.UNSUPPORTED,
    "uri": uri.MODIFIERS,
    "date": frozenset(),
    "number": frozenset(),
    "quantity": frozenset(),
    "composite": frozenset(),
    "reference": frozenset({"identifier"}),
}
_SORT_COLUMN = {"string": "value", "token": "code", "number": "value", "quantity": "value", "uri": "value",
                "reference": "target_id"}
_META_PARAMS = frozenset({"_tag", "_profile", "_security", "_source"})  # indexed like ordinary parameters
_MAX_DEPTH = 6  # nesting of chains and _has, against abusive queries


@dataclass(frozen=True, slots=True)
class SortKey:
    expr: Any
    desc: bool
    nullable: bool


class Planner:
    """Builds conditions on a ``resources`` row (or alias) for resources of ``types`` (None = any)."""

    def __init__(self, *, base: str, now_us: int, warn: WarnFn, access: Access | None = None,
                 terminology: Terminology | None = None):
        self.base = base
        self.now_us = now_us
        self.warn = warn
        self.access = access
        self.terminology = terminology

    # ------------------------------------------------------------ what the principal may see

    def unrestricted(self, types: Sequence[str]) -> bool:
        return self.access is None or all(self.access(t) is None for t in types)

    def restrict(self, res: Any, types: Sequence[str] | None) -> list[ColumnElement[bool]]:
        """Conditions confining ``res`` rows to what the principal may search (security/policy.py).

        Applied to the matches and to every resource a chain or ``_has`` looks through, so totals,
        counts and criteria never answer for resources the principal cannot read.
        """
        if self.access is None:
            return []
        groups: dict[ReadFilter, list[str]] = {}
        for t in types if types is not None else definitions.resource_types():
            groups.setdefault(self.access(t), []).append(t)
        if list(groups) == [None]:
            return []
        alternatives = []
        for grants, group in groups.items():
            in_group = res.c.type == group[0] if len(group) == 1 else res.c.type.in_(group)
            if grants is None:
                alternatives.append(in_group)
                continue
            ways = []
            for g in grants:
                parts: list[ColumnElement[bool]] = []
                if g.patient is not None:
                    parts.append(res.c.rid.in_(select(compartments.c.rid).where(
                        compartments.c.comp_type == "Patient", compartments.c.comp_id == g.patient)))
                try:
                    parts += [res.c.rid.in_(self.positive_rids(group, k, v)) for k, v in g.params]
                except UnknownParameter:
                    continue  # a restriction this type cannot satisfy admits nothing
                ways.append(and_(*parts))
            if ways:
                alternatives.append(and_(in_group, or_(*ways)))
        return [or_(*alternatives)] if alternatives else [false()]

    # ------------------------------------------------------------ parameter definitions

    def param_def(self, types: Sequence[str] | None, code: str) -> SearchParam | None:
        """The definition of ``code`` valid for every type of ``types`` (same parameter type), or None."""
        if not types:
            sp = definitions.search_params("Patient").get(code)
            return sp if sp is not None and code.startswith("_") else None
        first = definitions.search_params(types[0]).get(code)
        if first is None:
            return None
        for t in types[1:]:
            other = definitions.search_params(t).get(code)
            if other is None or other.type != first.type:
                return None
        return first

    # ------------------------------------------------------------ the WHERE clause

    def conditions(self, res: Any, types: Sequence[str] | None, query: list[tuple[str, str]]) -> list[ColumnElement[bool]]:
        """Conditions for every filter parameter of ``query``; unknown ones are passed to ``warn``."""
        sets, others = self.filters(res, types, query)
        return [res.c.rid.in_(intersect_rids(sets)), *others] if sets else others

    def filters(self, res: Any, types: Sequence[str] | None,
                query: list[tuple[str, str]]) -> tuple[list[Select], list[ColumnElement[bool]]]:
        """``conditions`` in two parts: the rid sets of plain parameters (to intersect), and the rest.

        Why: one ``rid IN (set INTERSECT set ...)`` is answered from the covering ``idx_*`` indexes
        before any ``resources`` row is read, with the same cheap plan whether or not the planner
        has statistics; separate ``rid IN`` conditions let either planner walk every resource of
        the type instead (seconds on 60k Observations right after a bulk load).
        """
        sets: list[Select] = []
        out: list[ColumnElement[bool]] = []
        for key, value in query:
            if "\x00" in key or "\x00" in value:
                raise Invalid("search parameters cannot contain NUL characters")
            name = key.split(":", 1)[0].split(".", 1)[0]
            if name in RESULT_PARAMS and name not in UNSUPPORTED_PARAMS:
                continue
            try:
                rids = self.positive_rids(types, key, value)
                first, dot, rest = key.partition(".")
                if rids is None and dot and not key.startswith("_has"):
                    rids = self._chain_rids(types, first, rest, value, 0)
                if rids is not None:
                    sets.append(rids)
                else:
                    out.append(self.clause(res, types, key, value))
            except UnknownParameter as e:
                self.warn(key, value, str(e))
        return sets, out

    def clause(self, res: Any, types: Sequence[str] | None, key: str, value: str, depth: int = 0) -> ColumnElement[bool]:
        if depth > _MAX_DEPTH:
            raise Invalid(f"{key}: chains and _has are nested too deeply")
        if key.startswith("_has:") or key == "_has":
            return self._has(res, types, key, value, depth)
        first, dot, rest = key.partition(".")
        if dot:
            return self._chain(res, types, first, rest, value, depth)
        code, _, modifier = key.partition(":")
        if code == "_id":
            if modifier:
                raise Invalid(f"_id takes no modifier ({key})")
            ids = [unescape(v) for v in or_values(value)]
            for i in ids:
                if not reference._ID.fullmatch(i):
                    raise Invalid(f"_id: {i!r} is not a valid resource id")
            return res.c.id.in_(ids)
        if code == "_lastUpdated":
            if modifier:
                raise Invalid(f"_lastUpdated takes no modifier ({key})")
            col = res.c.last_updated
            return or_(*(date.range_predicate(col, col, date.parse(v), self.now_us) for v in or_values(value)))
        if code in ("_text", "_content"):
            return self._fulltext(res, code, modifier, value)
        if code in UNSUPPORTED_PARAMS or code == "_type":
            raise UnknownParameter(f"the parameter {code} is not supported")
        rids = self.positive_rids(types, key, value)
        if rids is not None:
            return res.c.rid.in_(rids)
        sp = self._require(types, code)
        rtype = types[0] if types and len(types) == 1 else None
        if modifier == "missing":
            if value not in ("true", "false"):
                raise Invalid(f"{key} must be true or false, not {value!r}")
            table, param = self._presence(sp)
            present = _rids(table, rtype, param)
            return not_(res.c.rid.in_(present)) if value == "true" else res.c.rid.in_(present)
        if modifier in ("not", "not-in") and sp.type == "token":
            values = [token.parse(v, "in" if modifier == "not-in" else None, self.terminology) for v in or_values(value)]
            t = idx_token
            return not_(res.c.rid.in_(_rids(t, rtype, code, or_(*(token.predicate(t, v) for v in values)))))
        raise Invalid(f"unsupported modifier in {key}")  # pragma: no cover - positive_rids covers the rest

    def positive_rids(self, types: Sequence[str] | None, key: str, value: str) -> Select | None:
        """``SELECT rid`` for a plain parameter that can only be matched by existing index rows, else None."""
        if ("." in key or key.startswith("_")) and key.split(":", 1)[0] not in _META_PARAMS:
            return None
        code, _, modifier = key.partition(":")
        if modifier in ("missing", "not", "not-in"):
            self._require(types, code)
            return None
        sp = self._require(types, code)
        rtype = types[0] if types and len(types) == 1 else None
        raws = or_values(value)
        ptype = sp.type
        if ptype == "composite":
            if modifier:
                raise Invalid(f"composite parameters take no modifier ({key})")
            return composite.rids(rtype, sp, raws, self.now_us, self.base)
        if ptype not in INDEX_TABLES:
            raise UnknownParameter(f"the parameter {code} ({ptype}) is not supported")
        if modifier and modifier not in _MODIFIERS[ptype]:
            if ptype == "reference" and modifier in definitions.resource_types():
                if sp.targets and modifier not in sp.targets:
                    raise Invalid(f"{code} cannot refer to a {modifier}")
            elif ptype == "reference" and modifier in ("above", "below"):
                raise NotSupported(f"the :{modifier} modifier on reference parameters is not supported")
            else:
                raise Invalid(f"unknown modifier :{modifier} for the {ptype} parameter {code}")
        # Plain tables, not aliases: each IN-subquery is its own scope, and aliasing copies every
        # column object, which costs more than the query itself on simple searches.
        if ptype == "reference" and modifier == "identifier":
            tokens = [token.parse(v, None) for v in raws]
            return _rids(idx_token, rtype, f"{code}:identifier", or_(*(token.predicate(idx_token, v) for v in tokens)))
        param = f"{code}:of-type" if ptype == "token" and modifier == "of-type" else code
        t = INDEX_TABLES[ptype]
        values: list[Any]
        if ptype == "reference":
            values = [reference.parse(v, modifier, sp.targets, self.base) for v in raws]
        else:
            values = [parse_value(ptype, v, modifier, terminology=self.terminology) for v in raws]
        return _rids(t, rtype, param, or_(*(predicate(ptype, t, v, self.now_us) for v in values)))

    def _require(self, types: Sequence[str] | None, code: str) -> SearchParam:
        sp = self.param_def(types, code)
        if sp is None:
            where = ", ".join(types) if types else "all resource types"
            raise UnknownParameter(f"unknown search parameter {code!r} for {where}")
        return sp

    @staticmethod
    def _presence(sp: SearchParam) -> tuple[Any, str]:
        if sp.type == "composite":
            if not sp.components or sp.components[0].type not in INDEX_TABLES:
                raise Invalid(f"{sp.code}:missing is not supported")
            return INDEX_TABLES[sp.components[0].type], f"{sp.code}#0"
        if sp.type not in INDEX_TABLES:
            raise UnknownParameter(f"the parameter {sp.code} ({sp.type}) is not supported")
        return INDEX_TABLES[sp.type], sp.code

    @staticmethod
    def _fulltext(res: Any, code: str, modifier: str, value: str) -> ColumnElement[bool]:
        """``_content`` (the whole resource) and ``_text`` (its narrative): case-insensitive substring.

        Unindexed (a scan of the current versions that the other parameters leave), so it is cheap
        combined with them and slow alone on a large store; docs/search.md says so.
        """
        if modifier:
            raise Invalid(f"{code} takes no modifier")
        words = [unescape(v).strip().lower() for v in or_values(value)]
        if not all(words):
            raise Invalid(f"{code} needs a non-empty search text")
        h = resource_history
        text = json_text(h.c.content) if code == "_content" else narrative_text(h.c.content)
        found = or_(*(func.lower(text).contains(w, autoescape=True) for w in words))
        return select(h.c.vid).where(h.c.rid == res.c.rid, h.c.version == res.c.version, found).exists()

    # ------------------------------------------------------------ chains and _has

    def _chain(self, res: Any, types: Sequence[str] | None, first: str, rest: str, value: str,
               depth: int) -> ColumnElement[bool]:
        return res.c.rid.in_(self._chain_rids(types, first, rest, value, depth))

    def _chain_rids(self, types: Sequence[str] | None, first: str, rest: str, value: str, depth: int) -> Select:
        """``SELECT rid`` of the resources whose ``first`` reference points at a match of ``rest=value``."""
        if depth > _MAX_DEPTH:
            raise Invalid(f"{first}.{rest}: chains and _has are nested too deeply")
        code, _, tmod = first.partition(":")
        sp = self._require(types, code)
        if sp.type != "reference":
            raise Invalid(f"{first}.{rest}: only reference parameters can be chained")
        if tmod and tmod not in definitions.resource_types():
            raise Invalid(f"{first}: unknown resource type {tmod!r}")
        if tmod and sp.targets and tmod not in sp.targets:
            raise Invalid(f"{code} cannot refer to a {tmod}")
        targets = (tmod,) if tmod else sp.targets
        nxt = rest.split(".", 1)[0].split(":", 1)[0]
        usable = [t for t in targets if nxt in ("_id", "_lastUpdated", "_has") or nxt in definitions.search_params(t)]
        if not usable:
            raise UnknownParameter(f"unknown chained parameter {first}.{rest}")
        ref = idx_reference.alias()
        alternatives = []
        for target in usable:
            r2 = resources.alias()
            inner = select(r2.c.id).where(*self._narrow(r2, target, rest, value, depth), *self.restrict(r2, (target,)))
            alternatives.append(and_(ref.c.target_type == target, ref.c.target_id.in_(inner)))
        local = or_(ref.c.url.is_(None), ref.c.url.startswith(self.base.rstrip("/") + "/", autoescape=True))
        rtype = types[0] if types and len(types) == 1 else None
        return _rids(ref, rtype, code, and_(or_(*alternatives), local))

    def _has(self, res: Any, types: Sequence[str] | None, key: str, value: str, depth: int) -> ColumnElement[bool]:
        parts = key.split(":", 3)
        if len(parts) != 4 or not all(parts[1:]):
            raise Invalid(f"_has must be _has:Type:reference:parameter, not {key!r}")
        _, source, refcode, rest = parts
        if source not in definitions.resource_types():
            raise UnknownParameter(f"{key}: unknown resource type {source!r}")
        sp = definitions.search_params(source).get(refcode)
        if sp is None or sp.type != "reference":
            raise UnknownParameter(f"{key}: {source} has no reference parameter {refcode!r}")
        inner = None
        if not rest.startswith("_has") and "." not in rest and self.unrestricted((source,)):
            inner = self.positive_rids((source,), rest, value)
        if inner is None:
            r2 = resources.alias()
            inner = select(r2.c.rid).where(*self._narrow(r2, source, rest, value, depth), *self.restrict(r2, (source,)))
        ref = idx_reference.alias()
        # No ``ref.type = source``: every rid of ``inner`` is a ``source`` already, and without it the
        # (rid, param) index is the only way in, so both planners look up the matched rids instead
        # of scanning every ``source.refcode`` reference (which they chose without statistics).
        sub = select(ref.c.target_id).where(ref.c.param == refcode, ref.c.rid.in_(inner))
        if types and len(types) == 1:
            if sp.targets and types[0] not in sp.targets:
                raise Invalid(f"{key}: {source}.{refcode} cannot refer to a {types[0]}")
            return res.c.id.in_(sub.where(ref.c.target_type == types[0]))
        pairs = select(ref.c.target_type, ref.c.target_id).where(ref.c.param == refcode, ref.c.rid.in_(inner))
        return tuple_(res.c.type, res.c.id).in_(pairs)

    def _narrow(self, r2: Any, rtype: str, key: str, value: str, depth: int) -> list[ColumnElement[bool]]:
        """Conditions on ``r2`` for the resources of ``rtype`` matching ``key=value`` (chains, ``_has``)."""
        rids = self.positive_rids((rtype,), key, value) if depth < _MAX_DEPTH else None
        if rids is not None:
            return [*base_conditions(r2, (rtype,), narrowed=True), r2.c.rid.in_(rids)]
        return [*base_conditions(r2, (rtype,)), self.clause(r2, (rtype,), key, value, depth + 1)]

    # ------------------------------------------------------------ sorting and keyset paging

    def sort_keys(self, res: Any, types: Sequence[str] | None, sort: list[tuple[str, bool]]) -> list[SortKey]:
        keys: list[SortKey] = []
        for code, desc in sort:
            if code == "_id":
                keys.append(SortKey(res.c.id, desc, False))
                continue
            if code == "_lastUpdated":
                keys.append(SortKey(res.c.last_updated, desc, False))
                continue
            try:
                sp = self._require(types, code)
            except UnknownParameter as e:
                self.warn("_sort", code, f"cannot sort by {code}: {e}")
                continue
            if sp.type == "date":
                column = "high" if desc else "low"
            elif sp.type in _SORT_COLUMN:
                column = _SORT_COLUMN[sp.type]
            else:
                self.warn("_sort", code, f"cannot sort by the {sp.type} parameter {code}")
                continue
            t = INDEX_TABLES[sp.type]
            agg = func.max if desc else func.min
            # By (rid, param) only: the rid fixes the type, and a ``type = ?`` here would let a planner
            # without statistics pick the (type, param, value) index and scan it once per row.
            sub = select(agg(t.c[column])).where(t.c.rid == res.c.rid, t.c.param == code)
            keys.append(SortKey(sub.scalar_subquery(), desc, True))
        return keys


def _rids(t: Any, rtype: str | None, param: str, cond: ColumnElement[bool] | None = None) -> Select:
    stmt = select(t.c.rid)
    if rtype is not None:
        stmt = stmt.where(t.c.type == rtype)
    stmt = stmt.where(t.c.param == param)
    return stmt if cond is None else stmt.where(cond)


def page_query(base: Select, rid: Any, keys: list[SortKey], position: list[Any] | None, limit: int,
               *, backwards: bool = False) -> Select:
    """``base`` (selecting ``rid``) ordered by ``keys`` then rid, strictly after the keyset ``position``.

    ``backwards`` walks the same order in reverse (rows strictly before ``position``, nearest first),
    which is how ``previous`` pages are fetched; the caller reverses the rows back.
    """
    if not keys:
        stmt = base
        if position is not None:
            stmt = stmt.where(rid < position[-1] if backwards else rid > position[-1])
        return stmt.order_by(rid.desc() if backwards else rid.asc()).limit(limit)
    inner = base.add_columns(*(k.expr.label(f"k{i}") for i, k in enumerate(keys))).subquery("page")
    cols = [inner.c[f"k{i}"] for i in range(len(keys))]
    expanded: list[tuple[Any, bool, Any]] = []  # (column, descending, value at position or NULL marker)
    for i, (k, col) in enumerate(zip(keys, cols, strict=True)):
        last = position[i] if position is not None else None
        if k.nullable:  # NULLs last in both directions: order by "is null" first
            expanded.append((case((col.is_(None), 1), else_=0), backwards, 1 if last is None else 0))
        expanded.append((col, k.desc != backwards, last))
    expanded.append((inner.c.rid, backwards, position[-1] if position is not None else None))
    stmt = select(inner.c.rid, *cols)
    if position is not None:
        ors = []
        prefix: list[ColumnElement[bool]] = []
        for col, desc, last in expanded:
            if last is not None:
                ors.append(and_(*prefix, col < last if desc else col > last))
                prefix.append(col == last)
            else:
                prefix.append(col.is_(None))
        stmt = stmt.where(or_(*ors) if ors else false())
    return stmt.order_by(*(col.desc() if desc else col.asc() for col, desc, _ in expanded)).limit(limit)


def intersect_rids(sets: list[Select]) -> Select | CompoundSelect:
    """The rids in every one of ``sets`` (each a one-column ``SELECT rid``)."""
    return sets[0] if len(sets) == 1 else intersect(*sets)


def base_conditions(res: Any, types: Sequence[str] | None, *, narrowed: bool = False) -> list[ColumnElement[bool]]:
    """Current, not deleted, of ``types``.

    ``narrowed``: the caller also confines ``res.rid`` to a rid set from the index tables. The type
    test is then written ``type || '' = ?``, which no index serves, so that SQLite without
    statistics looks the set's rids up by primary key instead of walking every resource of the type.
    """
    conds: list[ColumnElement[bool]] = [res.c.deleted.is_(False)]
    if types is not None:
        col = res.c.type.concat(literal_column("''")) if narrowed else res.c.type
        conds.insert(0, col == types[0] if len(types) == 1 else col.in_(types))
    return conds


__all__ = ["Planner", "SortKey", "base_conditions", "intersect_rids", "page_query"]
