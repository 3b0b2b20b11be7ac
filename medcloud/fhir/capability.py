"""The CapabilityStatement: exactly what this server supports (http.html#capabilities)."""

from __future__ import annotations

from functools import cache
from typing import Any

from medcloud import __version__
from medcloud.fhir.context import FhirContext
from medcloud.fhir.definitions import resource_types, search_params
from medcloud.fhir.operations import OPERATIONS

# What is partial today, said where clients look (docs/fhir.md has the same list).
LIMITATIONS = (
    "JSON only (no XML). Not supported: _text, _content, _list, _filter, _query; token modifiers "
    ":in, :not-in, :above, :below; UCUM conversion in quantity search; compartment search other than "
    "Patient; $everything start/end; $export _typeFilter and _elements; $validate profile checking. "
    "No authentication yet: bind to loopback."
)

INTERACTIONS = ("read", "vread", "update", "patch", "delete", "history-instance", "history-type", "create",
                "search-type")


def capability_statement(ctx: FhirContext, base_url: str) -> dict[str, Any]:
    return {
        "resourceType": "CapabilityStatement",
        "status": "active",
        "date": "2026-11-26",
        "publisher": "medcloud",
        "kind": "instance",
        "software": {"name": "medcloud", "version": __version__},
        "implementation": {"description": "medcloud FHIR R4 server", "url": base_url},
        "fhirVersion": "4.0.1",
        **({"instantiates": ["http://hl7.org/fhir/uv/bulkdata/CapabilityStatement/bulk-data"]}
           if "export" in OPERATIONS else {}),
        "format": ["application/fhir+json", "json"],
        "patchFormat": ["application/json-patch+json", "application/fhir+json"],
        "rest": [_rest()],
    }


@cache
def _rest() -> dict[str, Any]:
    ops = sorted(OPERATIONS.values(), key=lambda o: o.name)
    return {
        "mode": "server",
        "documentation": LIMITATIONS,
        "interaction": [{"code": c} for c in ("transaction", "batch", "search-system", "history-system")],
        "searchParam": [
            {"name": n, "type": t} for n, t in (("_id", "token"), ("_lastUpdated", "date"), ("_type", "token"))
        ],
        "operation": [{"name": o.name, "definition": o.canonical()} for o in ops if o.system and o.listed],
        "resource": [_resource(t, ops) for t in resource_types()],
    }


def _resource(rtype: str, ops: list[Any]) -> dict[str, Any]:
    params = search_params(rtype)
    return {
        "type": rtype,
        "profile": f"http://hl7.org/fhir/StructureDefinition/{rtype}",
        "interaction": [{"code": c} for c in INTERACTIONS],
        "versioning": "versioned-update",
        "readHistory": True,
        "updateCreate": True,
        "conditionalCreate": True,
        "conditionalRead": "full-support",
        "conditionalUpdate": True,
        "conditionalDelete": "single",
        "referencePolicy": ["literal", "logical"],
        "searchInclude": ["*"] + sorted(f"{rtype}:{c}" for c, p in params.items() if p.type == "reference"),
        "searchRevInclude": ["*"],
        "searchParam": [
            {"name": c, "definition": p.url, "type": p.type}
            for c, p in sorted(params.items())
            if p.expression is not None or c in ("_id", "_lastUpdated")
        ],
        "operation": [
            {"name": o.name, "definition": o.canonical(rtype)}
            for o in ops
            if o.listed
            and ((o.types is None or rtype in o.types) or (o.instance_types is None or rtype in o.instance_types))
        ],
    }


