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
    "JSON only (no XML). Not supported: _list, _filter, _query; UCUM conversion in quantity search; "
    "compartment search other than Patient; $export _typeFilter and _elements; $validate profile "
    "checking. _text and _content are unindexed case-insensitive substring matches. Token "
    ":in/:not-in/:above/:below use the R4 value sets and code systems plus ValueSet/CodeSystem "
    "resources stored here (no external terminology server: filters over SNOMED CT or LOINC are refused)."
)

# CDS Hooks 2.0 services live beside the FHIR base (docs/cds.md); the RiskAssessments they write are here.
CDS_NOTE = ("Also written by medcloud's CDS Hooks 2.0 services ([server]/cds-services: cardiovascular-risk, "
            "early-warning, breast-mass-malignancy, configured models), with basis, method, model and "
            "explanation extensions (docs/cds.md).")

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
        "rest": [{**_rest(), **_security(ctx, base_url)}],
    }


def _security(ctx: FhirContext, base_url: str) -> dict[str, Any]:
    """``rest.security``: SMART App Launch (OAuth2) when authentication is on (SMART's oauth-uris extension)."""
    if not getattr(ctx.settings, "auth", True):
        return {"security": {"cors": False, "description": "Authentication is switched off (--no-auth, loopback only)."}}
    auth = base_url.rstrip("/").rsplit("/fhir", 1)[0] + "/auth"
    uris = [("token", "token"), ("authorize", "authorize"), ("introspect", "introspect"), ("revoke", "revoke")]
    return {"security": {
        "cors": False,
        "service": [{"coding": [{"system": "http://terminology.hl7.org/CodeSystem/restful-security-service",
                                 "code": "SMART-on-FHIR"}]}],
        "description": "OAuth2 bearer tokens: SMART App Launch v2 (authorization code + PKCE), SMART Backend "
                       "Services (client_credentials with private_key_jwt or a client secret), or JWTs of a "
                       "configured OpenID Connect issuer. See .well-known/smart-configuration.",
        "extension": [{"url": "http://fhir-registry.smarthealthit.org/StructureDefinition/oauth-uris",
                       "extension": [{"url": name, "valueUri": f"{auth}/{path}"} for name, path in uris]}],
    }}


@cache
def _rest() -> dict[str, Any]:
    ops = sorted(OPERATIONS.values(), key=lambda o: o.name)
    return {
        "mode": "server",
        "documentation": LIMITATIONS,
        "interaction": [{"code": c} for c in ("transaction", "batch", "search-system", "history-system")],
        "searchParam": [
            {"name": n, "type": t} for n, t in (("_id", "token"), ("_lastUpdated", "date"), ("_type", "token"),
                                               ("_text", "string"), ("_content", "string"))
        ],
        "operation": [{"name": o.name, "definition": o.canonical()} for o in ops if o.system and o.listed],
        "resource": [_resource(t, ops) for t in resource_types()] + [_view_definition(ops)],
    }


def _view_definition(ops: list[Any]) -> dict[str, Any]:
    """SQL-on-FHIR's ViewDefinition (operations-capability): stored, searched and run by analytics/server."""
    return {
        "type": "ViewDefinition",
        "profile": "https://sql-on-fhir.org/ig/StructureDefinition/ViewDefinition",
        "documentation": "SQL-on-FHIR v2 views (docs/analytics.md): validated by medcloud's ViewDefinition parser. "
                         "$run formats: json, ndjson, csv, parquet; viewReference as ViewDefinition/[id], "
                         "[base]/ViewDefinition/[id] or a canonical url[|version] of a stored view. "
                         "$viewdefinition-export (POST, Prefer: respond-async; also at system level): "
                         "parameters view (name, viewReference, viewResource), _format (csv, ndjson, json, "
                         "parquet), clientTrackingId, patient, group, _since; source is not supported; the same "
                         "viewReference formats as $run.",
        "interaction": [{"code": c} for c in ("read", "vread", "update", "delete", "history-instance", "create",
                                              "search-type")],
        "versioning": "versioned-update",
        "readHistory": True,
        "updateCreate": True,
        "searchParam": [{"name": n, "type": t} for n, t in (("_id", "token"), ("name", "string"), ("url", "uri"),
                                                             ("status", "token"), ("resource", "token"))],
        "operation": [{"name": o.name, "definition": o.canonical("ViewDefinition")}
                      for o in ops if o.listed and o.types is not None and "ViewDefinition" in o.types],
    }


def _resource(rtype: str, ops: list[Any]) -> dict[str, Any]:
    params = search_params(rtype)
    if rtype == "AuditEvent":  # served from the append-only audit trail: admins read, nobody writes
        return {"type": rtype, "profile": f"http://hl7.org/fhir/StructureDefinition/{rtype}",
                "interaction": [{"code": "read"}, {"code": "search-type"}],
                "documentation": "The hash-chained audit trail (docs/security.md): readable by administrators "
                                 "(scope medcloud/admin), never writable through the API."}
    extra = {"documentation": CDS_NOTE} if rtype == "RiskAssessment" else {}
    return {
        "type": rtype,
        "profile": f"http://hl7.org/fhir/StructureDefinition/{rtype}",
        **extra,
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


