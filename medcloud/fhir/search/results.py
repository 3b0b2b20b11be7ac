"""Shaping what a search returns (search.html#summary, #elements) and the searchset Bundle entries."""

from __future__ import annotations

from typing import Any

import orjson

from medcloud.fhir._element_rules import REQUIRED
from medcloud.fhir.bundles import full_url, resource_fragment
from medcloud.fhir.search._summary_elements import MANDATORY, SUMMARY
from medcloud.storage.resources import Stored

SUBSETTED = {"system": "http://terminology.hl7.org/CodeSystem/v3-ObservationValue", "code": "SUBSETTED",
             "display": "subsetted"}
_ALWAYS = ("resourceType", "id", "meta")
# For types the generated summary table lacks: the elements every resource's summary has in common.
_FALLBACK_SUMMARY = ("id", "meta", "implicitRules", "identifier", "status")


def _mandatory(rtype: str) -> set[str]:
    return {name for group in REQUIRED.get(rtype, ()) for name in group} | set(MANDATORY.get(rtype, ()))


def _keep(resource: dict[str, Any], wanted: set[str]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in resource.items():
        base = k[1:] if k.startswith("_") else k
        if base in wanted or k in _ALWAYS or _choice_of(base, wanted):
            out[k] = v
    return out


def _choice_of(key: str, wanted: set[str]) -> bool:
    """``valueQuantity`` is kept when ``value`` (a choice element, value[x]) is asked for."""
    for i in range(1, len(key)):
        if key[i].isupper():
            return key[:i] in wanted
    return False


def _mark(resource: dict[str, Any]) -> dict[str, Any]:
    meta = dict(resource.get("meta") or {})
    tags = [t for t in meta.get("tag", []) if t.get("code") != "SUBSETTED"]
    meta["tag"] = [*tags, SUBSETTED]
    resource["meta"] = meta
    return resource


def shape(s: Stored, summary: str | None, elements: tuple[str, ...] | None) -> Any:
    """The resource of an entry: the stored bytes untouched, or a subset marked SUBSETTED."""
    if (summary in (None, "false") and not elements) or summary == "count":
        return resource_fragment(s)
    assert s.content is not None
    resource: dict[str, Any] = orjson.loads(s.content)
    if summary == "true":
        wanted = set(SUMMARY.get(s.type, _FALLBACK_SUMMARY)) | _mandatory(s.type)
        resource = _keep(resource, wanted)
    elif summary == "text":
        resource = _keep(resource, {"text"} | _mandatory(s.type))
    elif summary == "data":
        resource.pop("text", None)
    elif elements:
        resource = _keep(resource, set(elements) | _mandatory(s.type))
    return _mark(resource)


def entry(base: str, s: Stored, mode: str, summary: str | None, elements: tuple[str, ...] | None) -> dict[str, Any]:
    return {"fullUrl": full_url(base, s), "resource": shape(s, summary, elements), "search": {"mode": mode}}
