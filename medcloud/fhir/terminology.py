"""Just enough terminology for search: ValueSet expansion and code-system subsumption.

Token searches with ``:in`` / ``:not-in`` expand a ValueSet and ``:above`` / ``:below`` walk a
code system's hierarchy (search.html#token). ValueSets and CodeSystems come from the official R4
definitions (``shared/spec/fhir-r4/valuesets.json``, packaged as ``_spec/valuesets.json.gz``: 673 value
sets, 496 code systems) and from
ValueSet/CodeSystem resources stored on this server (looked up by canonical ``url``), which is how a
site brings its own (e.g. a cohort's diagnosis codes).

Expansion follows ValueSet.compose (valueset.html#compose): ``include``/``exclude`` with explicit
``concept`` lists, whole systems, imported ``valueSet``s (intersected), and the filters ``is-a``,
``descendent-of``, ``is-not-a``, ``in``, ``not-in``, ``=`` (on ``code``/``concept``), ``regex`` and
``exists`` over code systems whose content is known here. A whole external system (SNOMED CT, LOINC)
is matched by its system URI without enumerating it; a filter over such a system needs a
terminology server and is refused with a clear 400, never guessed.
"""

from __future__ import annotations

import gzip
import importlib.resources as pkg_resources
import re
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from functools import cache
from typing import Any

import orjson

from medcloud.errors import Invalid, NotSupported

# Generated from shared/spec/fhir-r4/valuesets.json by tools/generate_fhir_spec.py (make spec).
SPEC = pkg_resources.files("medcloud.fhir") / "_spec" / "valuesets.json.gz"

# Resolves a canonical URL (``url`` or ``url|version``) to a stored resource of the given type.
Resolver = Callable[[str, str], dict[str, Any] | None]

_MAX_DEPTH = 10  # nested valueSet imports


@dataclass(frozen=True, slots=True)
class Expansion:
    """The codes of a value set: explicit (system, code) pairs plus whole systems (any code)."""

    codes: frozenset[tuple[str, str]] = frozenset()
    systems: frozenset[str] = frozenset()
    # Codes matched when the data carries no system: elements of type ``code`` (Observation.status)
    # take their system from the binding, so only the code is recorded (filled by ``with_bare_codes``).
    bare: frozenset[str] = frozenset()

    def __bool__(self) -> bool:
        return bool(self.codes or self.systems)

    def by_system(self) -> dict[str, list[str]]:
        out: dict[str, list[str]] = {}
        for system, code in sorted(self.codes):
            if system not in self.systems:
                out.setdefault(system, []).append(code)
        return out


@dataclass
class CodeSystem:
    url: str
    complete: bool
    parents: dict[str, set[str]] = field(default_factory=dict)  # code -> parent codes
    display: dict[str, str] = field(default_factory=dict)
    properties: dict[str, dict[str, set[str]]] = field(default_factory=dict)  # code -> property -> values

    @property
    def codes(self) -> set[str]:
        return set(self.parents)

    def children(self) -> dict[str, set[str]]:
        out: dict[str, set[str]] = {c: set() for c in self.parents}
        for code, ps in self.parents.items():
            for p in ps:
                out.setdefault(p, set()).add(code)
        return out

    def descendants(self, code: str) -> set[str]:
        kids = self.children()
        seen: set[str] = set()
        todo = [code]
        while todo:
            for k in kids.get(todo.pop(), ()):
                if k not in seen:
                    seen.add(k)
                    todo.append(k)
        return seen

    def ancestors(self, code: str) -> set[str]:
        seen: set[str] = set()
        todo = [code]
        while todo:
            for p in self.parents.get(todo.pop(), ()):
                if p not in seen:
                    seen.add(p)
                    todo.append(p)
        return seen


class Terminology:
    def __init__(self, resolver: Resolver | None = None):
        self._resolve = resolver

    # ------------------------------------------------------------ lookups

    def value_set(self, url: str) -> dict[str, Any]:
        vs = self._find("ValueSet", url)
        if vs is None:
            raise Invalid(f"unknown ValueSet {url!r} (neither an R4 value set nor a ValueSet stored here)")
        return vs

    def code_system(self, url: str) -> CodeSystem | None:
        if self._resolve is not None:
            stored = self._resolve("CodeSystem", url)
            if stored is not None:
                return _code_system(stored)
        return _spec_code_systems().get(url.split("|", 1)[0])

    def _find(self, rtype: str, url: str) -> dict[str, Any] | None:
        if self._resolve is not None:
            stored = self._resolve(rtype, url)
            if stored is not None:
                return stored
        return _spec_value_sets().get(url.split("|", 1)[0]) if rtype == "ValueSet" else None

    # ------------------------------------------------------------ :in / :not-in

    def expand(self, url: str, depth: int = 0) -> Expansion:
        if depth > _MAX_DEPTH:
            raise Invalid(f"ValueSet {url!r}: value set imports nest too deeply (or loop)")
        vs = self.value_set(url)
        compose = vs.get("compose")
        if not isinstance(compose, dict):
            contains = (vs.get("expansion") or {}).get("contains")
            if contains is None:
                raise NotSupported(f"ValueSet {url!r} has neither a compose nor an expansion")
            return Expansion(frozenset(_flatten_contains(contains)))
        included = Expansion()
        for inc in compose.get("include") or []:
            included = _union(included, self._part(url, inc, depth))
        excluded = Expansion()
        for exc in compose.get("exclude") or []:
            excluded = _union(excluded, self._part(url, exc, depth))
        if excluded.systems:
            raise NotSupported(f"ValueSet {url!r} excludes a whole code system; cannot evaluate that here")
        if excluded.codes:
            codes = included.codes - excluded.codes
            for system in included.systems & {s for s, _ in excluded.codes}:
                cs = self.code_system(system)
                if cs is None or not cs.complete:
                    raise NotSupported(f"ValueSet {url!r} excludes codes from all of {system}, which this "
                                       "server cannot enumerate (no terminology server)")
                codes |= {(system, c) for c in cs.codes} - excluded.codes
            return Expansion(frozenset(codes), included.systems - {s for s, _ in excluded.codes})
        return included

    def _part(self, url: str, part: dict[str, Any], depth: int) -> Expansion:
        system = part.get("system")
        sets = [self.expand(v, depth + 1) for v in part.get("valueSet") or []]
        if system is None:
            if not sets:
                raise Invalid(f"ValueSet {url!r}: an include/exclude needs a system or a valueSet")
            return _intersect_all(sets)
        if part.get("concept"):
            mine = Expansion(frozenset((system, c["code"]) for c in part["concept"] if isinstance(c, dict)
                                       and isinstance(c.get("code"), str)))
        elif part.get("filter"):
            cs = self.code_system(system)
            if cs is None or not cs.complete:
                raise NotSupported(f"ValueSet {url!r} filters {system}, which needs a terminology server")
            codes = cs.codes
            for f in part["filter"]:
                codes &= _apply_filter(url, cs, f)
            mine = Expansion(frozenset((system, c) for c in codes))
        else:
            mine = Expansion(systems=frozenset({system}))
        return _intersect_all([mine, *sets])

    def with_bare_codes(self, e: Expansion) -> Expansion:
        bare = {c for _, c in e.codes}
        for system in e.systems:
            cs = self.code_system(system)
            if cs is not None and cs.complete:
                bare |= cs.codes
        return Expansion(e.codes, e.systems, frozenset(bare))

    # ------------------------------------------------------------ :above / :below

    def subsumption(self, system: str, code: str, direction: str) -> Expansion:
        """``system|code`` and its descendants (``below``) or ancestors (``above``)."""
        cs = self.code_system(system)
        if cs is None or not cs.complete:
            raise NotSupported(f":{direction} needs the hierarchy of {system}, which this server does not know "
                               "(complete R4 code systems and CodeSystem resources stored here are known)")
        if code not in cs.parents:
            return Expansion(frozenset({(system, code)}))
        related = cs.descendants(code) if direction == "below" else cs.ancestors(code)
        return Expansion(frozenset((system, c) for c in {code, *related}))


def _apply_filter(url: str, cs: CodeSystem, f: dict[str, Any]) -> set[str]:
    prop, op, value = f.get("property"), f.get("op"), f.get("value")
    if not isinstance(op, str) or not isinstance(value, str):
        raise Invalid(f"ValueSet {url!r}: a filter needs op and value")
    if op == "is-a":
        return {value, *cs.descendants(value)} if value in cs.parents else set()
    if op == "descendent-of":
        return cs.descendants(value)
    if op == "is-not-a":
        return cs.codes - ({value} | cs.descendants(value))
    if op in ("in", "not-in"):
        listed = {v.strip() for v in value.split(",")}
        if prop in ("code", "concept"):
            return cs.codes & listed if op == "in" else cs.codes - listed
        having = {c for c in cs.codes if cs.properties.get(c, {}).get(str(prop), set()) & listed}
        return having if op == "in" else cs.codes - having
    if op == "=":
        if prop in ("code", "concept"):
            return {value} & cs.codes
        return {c for c in cs.codes if value in cs.properties.get(c, {}).get(str(prop), set())}
    if op == "regex":
        try:
            rx = re.compile(value)
        except re.error as e:
            raise Invalid(f"ValueSet {url!r}: bad regex filter {value!r}: {e}") from e
        if prop in ("code", "concept"):
            return {c for c in cs.codes if rx.fullmatch(c)}
        return {c for c in cs.codes if any(rx.fullmatch(v) for v in cs.properties.get(c, {}).get(str(prop), ()))}
    if op == "exists":
        has = {c for c in cs.codes if cs.properties.get(c, {}).get(str(prop))}
        return has if value == "true" else cs.codes - has
    raise NotSupported(f"ValueSet {url!r}: the filter operator {op!r} is not supported")


def _union(a: Expansion, b: Expansion) -> Expansion:
    return Expansion(a.codes | b.codes, a.systems | b.systems)


def _intersect_all(parts: list[Expansion]) -> Expansion:
    out = parts[0]
    for p in parts[1:]:
        codes = (out.codes & p.codes) | {sc for sc in out.codes if sc[0] in p.systems} | {
            sc for sc in p.codes if sc[0] in out.systems}
        out = Expansion(frozenset(codes), out.systems & p.systems)
    return out


def _flatten_contains(contains: Iterable[Any]) -> Iterator[tuple[str, str]]:
    for c in contains:
        if not isinstance(c, dict):
            continue
        if isinstance(c.get("system"), str) and isinstance(c.get("code"), str) and not c.get("abstract"):
            yield c["system"], c["code"]
        yield from _flatten_contains(c.get("contains") or [])


def _code_system(res: dict[str, Any]) -> CodeSystem:
    cs = CodeSystem(url=str(res.get("url")), complete=res.get("content", "complete") == "complete")

    def walk(concepts: Iterable[Any], parent: str | None) -> None:
        for c in concepts:
            if not isinstance(c, dict) or not isinstance(c.get("code"), str):
                continue
            code = c["code"]
            cs.parents.setdefault(code, set())
            if parent is not None:
                cs.parents[code].add(parent)
            if isinstance(c.get("display"), str):
                cs.display[code] = c["display"]
            for p in c.get("property") or []:
                if not isinstance(p, dict) or not isinstance(p.get("code"), str):
                    continue
                value = next((v for k, v in p.items() if k.startswith("value")), None)
                if value is None:
                    continue
                value = value.get("code") if isinstance(value, dict) else value
                if p["code"] in ("parent", "subsumedBy") and isinstance(value, str):
                    cs.parents[code].add(value)
                cs.properties.setdefault(code, {}).setdefault(p["code"], set()).add(str(value))
            walk(c.get("concept") or [], code)

    walk(res.get("concept") or [], None)
    for code, ps in list(cs.parents.items()):  # parents named only by property still are codes
        for p in ps:
            cs.parents.setdefault(p, set())
        cs.parents[code] = ps
    return cs


@cache
def _spec() -> list[dict[str, Any]]:
    resources: list[dict[str, Any]] = orjson.loads(gzip.decompress(SPEC.read_bytes()))
    return resources


@cache
def _spec_value_sets() -> dict[str, dict[str, Any]]:
    return {r["url"]: r for r in _spec() if r.get("resourceType") == "ValueSet" and isinstance(r.get("url"), str)}


@cache
def _spec_code_systems() -> dict[str, CodeSystem]:
    out = {}
    for r in _spec():
        if r.get("resourceType") == "CodeSystem" and isinstance(r.get("url"), str):
            out[r["url"]] = _code_system(r)
    return out
