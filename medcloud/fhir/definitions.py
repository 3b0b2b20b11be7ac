"""FHIR R4 definitions the server is driven by: resource types, search parameters, compartments.

Loaded once from the generated tables in ``_spec/`` (see tools/generate_fhir_spec.py).
"""

from __future__ import annotations

import gzip
import json
import re
from dataclasses import dataclass, field
from functools import cache
from importlib import resources as pkg_resources
from typing import Any

_SPEC = pkg_resources.files("medcloud.fhir") / "_spec"

# Parameters handled by the search planner directly, not from index tables.
SPECIAL_PARAMS = frozenset({"_id", "_lastUpdated", "_text", "_content", "_list", "_has", "_type", "_query", "_filter"})


@dataclass(frozen=True, slots=True)
class Component:
    definition: str  # canonical URL of the component's SearchParameter
    expression: str
    type: str  # type of the component parameter (token, quantity, ...)
    code: str  # code of the component's parameter (for diagnostics)


@dataclass(frozen=True, slots=True)
class SearchParam:
    """One search parameter as it applies to one resource type."""

    code: str
    type: str  # number date string token reference composite quantity uri special
    resource_type: str
    expression: str | None  # FHIRPath, restricted to this resource type
    url: str
    targets: tuple[str, ...] = ()
    components: tuple[Component, ...] = ()
    modifiers: tuple[str, ...] = ()
    comparators: tuple[str, ...] = ()
    description: str = ""
    multiple_or: bool = True
    multiple_and: bool = True
    raw: dict[str, Any] = field(default_factory=dict, compare=False, repr=False, hash=False)


@cache
def resource_types() -> tuple[str, ...]:
    data = json.loads((_SPEC / "resource_types.json").read_text())
    return tuple(data["resource_types"])


@cache
def _raw_parameters() -> list[dict[str, Any]]:
    return json.loads((_SPEC / "search_parameters.json").read_text())["parameters"]


def _restrict(expression: str | None, rtype: str, bases: list[str]) -> str | None:
    """Keep only the union branches of ``expression`` that apply to ``rtype``."""
    if not expression:
        return None
    if any(b in ("Resource", "DomainResource") for b in bases):
        return re.sub(r"\b(Resource|DomainResource)\.", f"{rtype}.", expression)
    parts = [p.strip() for p in _split_union(expression)]
    keep = [p for p in parts if re.match(rf"^\(?{rtype}\b", p)]
    return " | ".join(keep) if keep else None


def _split_union(expression: str) -> list[str]:
    parts: list[str] = []
    cur: list[str] = []
    depth, quote = 0, False
    for ch in expression:
        if ch == "'":
            quote = not quote
        elif not quote:
            if ch == "(":
                depth += 1
            elif ch == ")":
                depth -= 1
            elif ch == "|" and depth == 0:
                parts.append("".join(cur))
                cur = []
                continue
        cur.append(ch)
    parts.append("".join(cur))
    return parts


@cache
def _by_url() -> dict[str, dict[str, Any]]:
    return {p["url"]: p for p in _raw_parameters()}


@cache
def search_params(rtype: str) -> dict[str, SearchParam]:
    """All search parameters of ``rtype`` by code, including the Resource-level ones (``_tag``...)."""
    if rtype not in resource_types():
        return {}
    out: dict[str, SearchParam] = {}
    by_url = _by_url()
    for p in _raw_parameters():
        bases = p.get("base", [])
        if rtype not in bases and not any(b in ("Resource", "DomainResource") for b in bases):
            continue
        if "DomainResource" in bases and rtype in ("Bundle", "Binary", "Parameters"):
            continue
        comps = tuple(
            Component(
                c["definition"], c["expression"], by_url.get(c["definition"], {}).get("type", "token"),
                by_url.get(c["definition"], {}).get("code", c["definition"].rsplit("-", 1)[-1]),
            )
            for c in p.get("component", [])
        )
        out[p["code"]] = SearchParam(
            code=p["code"],
            type=p["type"],
            resource_type=rtype,
            expression=_restrict(p.get("expression"), rtype, bases),
            url=p["url"],
            targets=tuple(p.get("target", [])),
            components=comps,
            modifiers=tuple(p.get("modifier", [])),
            comparators=tuple(p.get("comparator", [])),
            description=p.get("description", ""),
            multiple_or=p.get("multipleOr", True),
            multiple_and=p.get("multipleAnd", True),
            raw=p,
        )
    return out


@cache
def patient_compartment() -> dict[str, tuple[str, ...]]:
    """Resource type -> the search parameters that put a resource in a Patient's compartment."""
    data = json.loads((_SPEC / "compartment_patient.json").read_text())
    return {r["code"]: tuple(r.get("param", [])) for r in data["resource"] if r.get("param")}


# FHIR primitive types, as the R4 JSON schema names its primitive definitions.
PRIMITIVE_TYPES = frozenset({
    "base64Binary", "boolean", "canonical", "code", "date", "dateTime", "decimal", "id", "instant",
    "integer", "integer64", "markdown", "oid", "positiveInt", "string", "time", "unsignedInt", "uri",
    "url", "uuid", "xhtml",
})
# Longest first, so ``valueDateTime`` is a dateTime, not a time.
_SUFFIXES = sorted(((t[0].upper() + t[1:], t) for t in PRIMITIVE_TYPES), key=lambda s: -len(s[0]))
_JSON_TYPES = {"boolean": "boolean", "number": "decimal", "string": "string"}


def _element_type(key: str, prop: dict[str, Any]) -> str | None:
    ref = prop.get("$ref", "")
    if ref:
        target = ref.rsplit("/", 1)[-1]
        return None if target == "ResourceList" else target  # contained resources: any type
    if "enum" in prop:
        return "code"  # required-binding codes are inlined as enums
    for suffix, type_name in _SUFFIXES:  # choice elements of a primitive type: deceasedBoolean
        if key.endswith(suffix) and len(key) > len(suffix):
            return type_name
    return _JSON_TYPES.get(str(prop.get("type")))


@cache
def elements() -> dict[str, dict[str, tuple[str | None, bool]]]:
    """Schema definition -> JSON key -> (FHIR type, repeats), from the R4 JSON schema.

    Definitions are the schema's names: resources and data types (``Patient``, ``HumanName``) and
    backbone elements (``Patient_Contact``). The type is None for contained resources (any type).
    """
    raw = json.loads(gzip.decompress((_SPEC / "fhir.schema.json.gz").read_bytes()))["definitions"]
    out: dict[str, dict[str, tuple[str | None, bool]]] = {}
    for name, definition in raw.items():
        props = definition.get("properties")
        if not props:
            continue
        table = {}
        for key, prop in props.items():
            if key.startswith("_"):
                continue
            repeats = prop.get("type") == "array"
            table[key] = (_element_type(key, prop.get("items", {}) if repeats else prop), repeats)
        out[name] = table
    return out
