"""Search-index rows for one resource, for every R4 search parameter of its type.

What each parameter type indexes follows https://hl7.org/fhir/R4/search.html (token, string,
date, number, quantity, reference, uri, composite). Rows leave out ``rid``/``type``, which the
writer adds; ``grp`` is 0 for plain parameters and the 1-based ordinal of the matched element
for the components of a composite (``param = "<code>#<i>"``), so that the search can require
all components to match the same element.

Decisions the search side must know about:

- Token: codes are kept as written (matching is case-sensitive); ``text`` is normalised. A
  CodeableConcept gives one row per coding (display as text) plus a ``(None, None, text)`` row.
  Identifier gives ``(system, value, type.text)`` plus ``"<code>:of-type"`` rows
  ``(type.coding.system, "<type.coding.code>|<value>")``.
- Reference: ``Reference.identifier`` becomes a token row under ``"<code>:identifier"``.
  Absolute URLs keep the URL (``/_history/v`` moved to ``version``) and, when they end in
  ``Type/id``, the parsed type and id too. Canonicals keep the URL and split ``|version``.
  Contained (``#id``) and unresolved conditional (``Type?query``) references are not indexed.
- Quantity: a Range indexes ``[low.value, high.value]`` widened by implicit precision, open ends
  are -inf/+inf, ``value`` is low.value (or high.value when low is absent). Money is
  ``(urn:iso:std:iso:4217, currency)``. SampledData is not indexed.
- Date: an unparsable date is skipped rather than failing the write (validation is elsewhere).
- Compartments: only relative ``Patient/id`` references count (an absolute URL may be another server).
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from decimal import Decimal
from functools import lru_cache
from typing import Any

from medcloud.errors import Invalid
from medcloud.fhir import definitions
from medcloud.fhir.indexing.fhirpath import Expression, Item, compile_expression
from medcloud.fhir.primitives import MAX_US, MIN_US, date_range, normalise_string, number_range

StringRow = tuple[str, int, str, str]
TokenRow = tuple[str, int, str | None, str | None, str | None]
DateRow = tuple[str, int, int, int]
NumberRow = tuple[str, int, float, float, float]
QuantityRow = tuple[str, int, str | None, str | None, str | None, float, float, float]
ReferenceRow = tuple[str, int, str | None, str | None, str | None, str | None]
UriRow = tuple[str, int, str]

_ISO_4217 = "urn:iso:std:iso:4217"
_RESOURCE_TYPES = frozenset(definitions.resource_types())
_NOT_INDEXED = frozenset({"_id", "_lastUpdated"}) | definitions.SPECIAL_PARAMS
_QUANTITIES = frozenset(
    {"Quantity", "Age", "Count", "Distance", "Duration", "SimpleQuantity", "MoneyQuantity"}
)
_REL_REF = re.compile(r"([A-Z][A-Za-z]+)/([A-Za-z0-9\-.]{1,64})(?:/_history/([A-Za-z0-9\-.]{1,64}))?")
_ABS_REF = re.compile(r"(.*?/([A-Z][A-Za-z]+)/([A-Za-z0-9\-.]{1,64}))(?:/_history/([A-Za-z0-9\-.]{1,64}))?")


@dataclass(slots=True)
class IndexEntries:
    """The index rows of one resource, one list per index table (see medcloud/storage/schema.py)."""

    string: list[StringRow] = field(default_factory=list)  # (param, grp, normalised, exact)
    token: list[TokenRow] = field(default_factory=list)  # (param, grp, system, code, normalised text)
    date: list[DateRow] = field(default_factory=list)  # (param, grp, low_us, high_us) inclusive
    number: list[NumberRow] = field(default_factory=list)  # (param, grp, value, low, high)
    # (param, grp, system, code, unit, value, low, high)
    quantity: list[QuantityRow] = field(default_factory=list)
    reference: list[ReferenceRow] = field(default_factory=list)  # (param, grp, type, id, url, version)
    uri: list[UriRow] = field(default_factory=list)  # (param, grp, value)
    compartments: list[tuple[str, str]] = field(default_factory=list)  # (comp_type, comp_id)

    def dedupe(self) -> None:
        for name in ("string", "token", "date", "number", "quantity", "reference", "uri", "compartments"):
            rows = getattr(self, name)
            if len(rows) > 1:
                setattr(self, name, list(dict.fromkeys(rows)))


def infer_type(v: Any) -> str | None:
    """FHIR type of a JSON value from its shape, for values whose type the path did not tell."""
    if type(v) is bool:
        return "boolean"
    if isinstance(v, str):
        return "string"
    if isinstance(v, (int, float, Decimal)):
        return "decimal"
    if not isinstance(v, dict):
        return None
    if "resourceType" in v:
        return v["resourceType"]
    if "coding" in v or set(v) == {"text"}:
        return "CodeableConcept"
    if "reference" in v or "identifier" in v:
        return "Reference"
    if "currency" in v:
        return "Money"
    if "value" in v and isinstance(v["value"], (int, float, Decimal)):
        return "Quantity"
    if "low" in v or "high" in v:
        return "Range"
    if "start" in v or "end" in v:
        return "Period"
    if "family" in v or "given" in v:
        return "HumanName"
    if any(k in v for k in ("line", "city", "postalCode", "country", "state", "district")):
        return "Address"
    if "event" in v or "repeat" in v:
        return "Timing"
    if "value" in v and v.get("system") in ("phone", "fax", "email", "pager", "url", "sms", "other"):
        return "ContactPoint"
    if "value" in v:
        return "Identifier"
    if "code" in v or "system" in v:
        return "Coding"
    return None


def _str_list(v: Any) -> list[str]:
    if isinstance(v, str):
        return [v]
    if isinstance(v, list):
        return [x for x in v if isinstance(x, str)]
    return []


def _s(d: dict, key: str) -> str | None:
    v = d.get(key)
    return v if isinstance(v, str) else None


def _list(v: Any) -> list[Any]:
    return v if isinstance(v, list) else []


# ---------------------------------------------------------------- per parameter type


def _string(out: IndexEntries, code: str, grp: int, v: Any, t: str | None) -> None:
    if isinstance(v, str):
        parts = [v]
    elif not isinstance(v, dict):
        return
    elif t == "HumanName":
        parts = [
            *_str_list(v.get("family")),
            *_str_list(v.get("given")),
            *_str_list(v.get("prefix")),
            *_str_list(v.get("suffix")),
            *_str_list(v.get("text")),
        ]
    elif t == "Address":
        parts = [*_str_list(v.get("line"))]
        for k in ("city", "district", "state", "postalCode", "country", "text"):
            parts.extend(_str_list(v.get(k)))
    else:
        return
    rows = out.string
    for s in parts:
        if s:
            rows.append((code, grp, normalise_string(s), s))


def _coding(rows: list[TokenRow], code: str, grp: int, c: Any) -> None:
    if type(c) is dict:
        system, value, display = c.get("system"), c.get("code"), c.get("display")
        if type(system) is not str:
            system = None
        if type(value) is not str:
            value = None
        if system is not None or value is not None:
            rows.append(
                (code, grp, system, value, normalise_string(display) if type(display) is str else None)
            )


def _token(out: IndexEntries, code: str, grp: int, v: Any, t: str | None) -> None:
    rows = out.token
    if type(v) is not dict:
        if type(v) is bool:
            rows.append((code, grp, None, "true" if v else "false", None))
        elif isinstance(v, str):
            rows.append((code, grp, None, v, None))
        elif isinstance(v, (int, Decimal, float)):
            rows.append((code, grp, None, str(v), None))
    elif t == "CodeableConcept":
        for c in _list(v.get("coding")):
            _coding(rows, code, grp, c)
        text = v.get("text")
        if isinstance(text, str) and text:
            rows.append((code, grp, None, None, normalise_string(text)))
    elif t == "Coding":
        _coding(rows, code, grp, v)
    elif t == "Identifier":
        _identifier(rows, code, grp, v)
    elif t == "ContactPoint":
        if _s(v, "value") is not None:
            rows.append((code, grp, _s(v, "system"), v["value"], None))
    elif t == "Reference" or "reference" in v:
        # R4 swaps the component types of DocumentReference-relationship (relatesto/relation).
        _reference(out, code, grp, v, "Reference")


def _identifier(rows: list[TokenRow], code: str, grp: int, v: Any) -> None:
    if not isinstance(v, dict):
        return
    system, value, itype = _s(v, "system"), _s(v, "value"), v.get("type")
    text = itype.get("text") if isinstance(itype, dict) else None
    if system is not None or value is not None:
        rows.append((code, grp, system, value, normalise_string(text) if isinstance(text, str) else None))
    if isinstance(itype, dict) and value is not None:
        # https://hl7.org/fhir/R4/search.html#token: identifier:of-type=[system]|[code]|[value]
        for c in _list(itype.get("coding")):
            if isinstance(c, dict) and _s(c, "code") is not None:
                rows.append((f"{code}:of-type", grp, _s(c, "system"), f"{c['code']}|{value}", None))


def _date(out: IndexEntries, code: str, grp: int, v: Any, t: str | None) -> None:
    try:
        if isinstance(v, str):
            out.date.append((code, grp, *date_range(v)))
        elif type(v) is not dict:
            return
        elif t == "Period":
            start, end = v.get("start"), v.get("end")
            if start is not None or end is not None:
                low = date_range(start)[0] if start is not None else MIN_US
                high = date_range(end)[1] if end is not None else MAX_US
                out.date.append((code, grp, low, high))
        elif t == "Timing":
            ranges = [date_range(e) for e in _str_list(v.get("event"))]
            repeat = v.get("repeat")
            bounds = repeat.get("boundsPeriod") if isinstance(repeat, dict) else None
            if isinstance(bounds, dict) and (bounds.get("start") or bounds.get("end")):
                s, e = bounds.get("start"), bounds.get("end")
                ranges.append((date_range(s)[0] if s else MIN_US, date_range(e)[1] if e else MAX_US))
            if ranges:
                out.date.append((code, grp, min(r[0] for r in ranges), max(r[1] for r in ranges)))
    except Invalid:
        pass


def _range_bounds(v: dict) -> tuple[dict, float, float, float] | None:
    """(unit source, value, low, high) of a Range: value is low.value, else high.value."""
    lo, hi = v.get("low"), v.get("high")
    lo_v = lo.get("value") if isinstance(lo, dict) else None
    hi_v = hi.get("value") if isinstance(hi, dict) else None
    if lo_v is not None:
        value, low, _ = number_range(lo_v)
        high = number_range(hi_v)[2] if hi_v is not None else math.inf
        return lo, value, low, high  # type: ignore[return-value]
    if hi_v is not None:
        value, _, high = number_range(hi_v)
        return hi, value, -math.inf, high  # type: ignore[return-value]
    return None


def _number(out: IndexEntries, code: str, grp: int, v: Any, t: str | None) -> None:
    try:
        if isinstance(v, (int, float, Decimal, str)) and type(v) is not bool:
            out.number.append((code, grp, *number_range(v)))
        elif t == "Range" and type(v) is dict and (r := _range_bounds(v)) is not None:
            out.number.append((code, grp, r[1], r[2], r[3]))
    except Invalid:
        pass


def _quantity(out: IndexEntries, code: str, grp: int, v: Any, t: str | None) -> None:
    if not isinstance(v, dict):
        return
    try:
        if t in _QUANTITIES:
            if v.get("value") is not None:
                out.quantity.append(
                    (code, grp, _s(v, "system"), _s(v, "code"), _s(v, "unit"), *number_range(v["value"]))
                )
        elif t == "Money":
            if v.get("value") is not None:
                out.quantity.append(
                    (code, grp, _ISO_4217, _s(v, "currency"), None, *number_range(v["value"]))
                )
        elif t == "Range" and (r := _range_bounds(v)) is not None:
            u = r[0]
            out.quantity.append((code, grp, _s(u, "system"), _s(u, "code"), _s(u, "unit"), r[1], r[2], r[3]))
    except Invalid:
        pass


@lru_cache(maxsize=65536)
def parse_reference(ref: str) -> tuple[str | None, str | None, str | None, str | None] | None:
    """A reference string -> (target_type, target_id, url, version); None when it cannot be indexed."""
    if not ref or ref[0] == "#" or "?" in ref:
        return None
    m = _REL_REF.fullmatch(ref)
    if m and m.group(1) in _RESOURCE_TYPES:
        return m.group(1), m.group(2), None, m.group(3)
    m = _ABS_REF.fullmatch(ref)
    if m and ":" in ref:
        rtype = m.group(2) if m.group(2) in _RESOURCE_TYPES else None
        return rtype, m.group(3) if rtype else None, m.group(1), m.group(4)
    return None, None, ref, None


def _reference(out: IndexEntries, code: str, grp: int, v: Any, t: str | None) -> None:
    if isinstance(v, str):
        if t in ("code", "id"):
            out.token.append((code, grp, None, v, None))  # see _token: the swapped R4 composite
            return
        url, _, version = v.partition("|")
        if url:
            out.reference.append((code, grp, None, None, url, version or None))
        return
    if not isinstance(v, dict):
        return
    if "resourceType" in v:
        if isinstance(v.get("id"), str):
            out.reference.append((code, grp, v["resourceType"], v["id"], None, None))
        return
    ref = v.get("reference")
    if isinstance(ref, str) and (parsed := parse_reference(ref)) is not None:
        out.reference.append((code, grp, *parsed))
    ident = v.get("identifier")
    if isinstance(ident, dict):
        _identifier(out.token, f"{code}:identifier", grp, ident)


def _uri(out: IndexEntries, code: str, grp: int, v: Any, t: str | None) -> None:
    if isinstance(v, str) and v:
        out.uri.append((code, grp, v))


Emit = Callable[[IndexEntries, str, int, Any, str | None], None]
_EMITTERS: dict[str, Emit] = {
    "string": _string,
    "token": _token,
    "date": _date,
    "number": _number,
    "quantity": _quantity,
    "reference": _reference,
    "uri": _uri,
}


# ---------------------------------------------------------------- plans


@dataclass(frozen=True, slots=True)
class _Param:
    code: str
    emit: Emit | None  # None for a composite
    expression: Expression
    components: tuple[tuple[str, Expression, Emit], ...] = ()


@dataclass(frozen=True, slots=True)
class _Plan:
    params: tuple[_Param, ...]
    always: frozenset[int]  # params that may yield values whatever the resource holds
    by_key: dict[str, tuple[int, ...]]  # top-level JSON key -> params that read it
    compartment_params: frozenset[str]
    selections: dict[tuple[str, ...], tuple[int, ...]] = field(default_factory=dict)

    def select(self, shape: tuple[str, ...]) -> tuple[int, ...]:
        todo = set(self.always)
        for k in shape:
            todo.update(self.by_key.get(k, ()))
        selected = tuple(sorted(todo))
        if len(self.selections) < 4096:
            self.selections[shape] = selected
        return selected


class Indexer:
    """Extracts the search-index rows of resources; plans are compiled once per resource type."""

    def __init__(self) -> None:
        self._plans: dict[str, _Plan] = {}
        self._compiled: dict[str, Expression] = {}

    def _compile(self, expr: str) -> Expression:
        if expr not in self._compiled:
            self._compiled[expr] = compile_expression(expr)
        return self._compiled[expr]

    def _plan(self, rtype: str) -> _Plan:
        plan = self._plans.get(rtype)
        if plan is None:
            params: list[_Param] = []
            for sp in definitions.search_params(rtype).values():
                if sp.expression is None or sp.code in _NOT_INDEXED or sp.type == "special":
                    continue
                if sp.type == "composite":
                    comps = tuple(
                        (f"{sp.code}#{i}", self._compile(c.expression), _EMITTERS[c.type])
                        for i, c in enumerate(sp.components)
                        if c.type in _EMITTERS
                    )
                    params.append(_Param(sp.code, None, self._compile(sp.expression), comps))
                elif sp.type in _EMITTERS:
                    params.append(_Param(sp.code, _EMITTERS[sp.type], self._compile(sp.expression)))
            by_key: dict[str, list[int]] = {}
            for i, p in enumerate(params):
                for k in p.expression.first_keys or ():
                    by_key.setdefault(k, []).append(i)
            plan = self._plans[rtype] = _Plan(
                tuple(params),
                frozenset(i for i, p in enumerate(params) if p.expression.first_keys is None),
                {k: tuple(v) for k, v in by_key.items()},
                frozenset(definitions.patient_compartment().get(rtype, ())),
            )
        return plan

    def extract(self, resource: dict[str, Any]) -> IndexEntries:
        """Index rows of ``resource`` (parsed JSON) for every search parameter of its type, deduplicated."""
        out = IndexEntries()
        rtype = resource.get("resourceType")
        if not isinstance(rtype, str):
            return out
        plan = self._plan(rtype)
        # Only the parameters whose expression reads a key the resource has (most resources fill
        # a handful of the 30-60 parameters of their type); resources of a type mostly share
        # their key sets, so the selection is memoised per key set.
        shape = tuple(resource)
        todo = plan.selections.get(shape)
        if todo is None:
            todo = plan.select(shape)
        root: Item = (resource, rtype)
        focus = [root]
        params = plan.params
        for i in todo:
            p = params[i]
            items = p.expression.fn(focus, root)
            if not items:
                continue
            if p.emit is not None:
                emit, code = p.emit, p.code
                for v, t in items:
                    emit(out, code, 0, v, t if t is not None else infer_type(v))
            else:
                for grp, item in enumerate(items, 1):
                    for ccode, expr, cemit in p.components:
                        for v, t in expr.fn([item], root):
                            cemit(out, ccode, grp, v, t if t is not None else infer_type(v))
        if plan.compartment_params:
            cp = plan.compartment_params
            out.compartments = [
                ("Patient", r[3])
                for r in out.reference
                if r[2] == "Patient" and r[4] is None and r[0] in cp and r[3]
            ]
        if rtype == "Patient" and isinstance(resource.get("id"), str):
            out.compartments.append(("Patient", resource["id"]))
        out.dedupe()
        return out
