"""``$viewdefinition-export`` kick-off (SQL-on-FHIR v2 OperationDefinition ViewDefinitionExport).

``POST [base]/$viewdefinition-export``, ``[base]/ViewDefinition/$viewdefinition-export`` and
``[base]/ViewDefinition/[id]/$viewdefinition-export`` with ``Prefer: respond-async`` and a Parameters
body. Everything a client can get wrong is checked here, before the job is queued, so the job
itself only fails on server trouble: each ``view`` (parts ``name``, ``viewReference``,
``viewResource``) is resolved and parsed (unknown reference 404, invalid view 422 with the
location), ``patient`` and ``group`` must exist and be readable (404), ``_format`` must be one the
engine writes, ``source`` and unknown parameters are 400 ``not-supported``. The caller's access
is applied like ``$run`` (``run.py``): no read scope on a view's resource type is 403, a
patient-confined token narrows the view to its compartment, and the job records the principal so
every row is checked again with the guard when it is read (``export_job.py``).

The job (kind ``viewdefinition-export``, ``medcloud.jobs``) carries the resolved ViewDefinitions
themselves, so editing a stored view after the kick-off does not change a running export.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from medcloud.errors import Forbidden, Invalid, NotFound, NotSupported
from medcloud.fhir.context import FhirContext
from medcloud.fhir.definitions import patient_compartment
from medcloud.fhir.exchange import FhirRequest, FhirResponse
from medcloud.fhir.operations import Target
from medcloud.fhir.operations._export_run import principal_to_json

KIND = "viewdefinition-export"
FORMATS = {"csv": "text/csv", "ndjson": "application/x-ndjson", "json": "application/json",
           "parquet": "application/octet-stream"}  # as $run answers them (run.py)
_FORMAT_ALIASES = {"text/csv": "csv", "application/x-ndjson": "ndjson", "application/ndjson": "ndjson",
                   "application/fhir+ndjson": "ndjson", "application/json": "json",
                   "application/vnd.apache.parquet": "parquet"}
_SINGLE = ("_format", "clientTrackingId", "_since")
_KNOWN = frozenset({*_SINGLE, "view", "patient", "group", "source"})
_VIEW_PARTS = frozenset({"name", "viewReference", "viewResource"})
_UNSAFE = re.compile(r"[^A-Za-z0-9_.-]+")


@dataclass(frozen=True, slots=True)
class _Param:
    name: str
    value: Any
    where: str  # location in the request, e.g. "parameter[2]"
    parts: tuple[tuple[str, Any, str], ...] = ()


def kickoff(ctx: FhirContext, conn: Any, req: FhirRequest, target: Target) -> FhirResponse:
    prefer = [p.strip() for p in (req.header("prefer") or "").replace(";", ",").split(",")]
    if "respond-async" not in prefer:
        raise Invalid("$viewdefinition-export runs asynchronously: send the header 'Prefer: respond-async'")
    params = _parameters(req)
    by_name: dict[str, list[_Param]] = {}
    for p in params:
        by_name.setdefault(p.name, []).append(p)
    unknown = sorted(set(by_name) - _KNOWN)
    if unknown:
        raise NotSupported(f"$viewdefinition-export does not support the parameter(s) {', '.join(unknown)} "
                           "(supported: view, _format, clientTrackingId, patient, group, _since)",
                           expression=by_name[unknown[0]][0].where)
    if "source" in by_name:
        raise NotSupported("the source parameter (an external data source) is not supported; this server "
                           "exports views over its own store", expression=by_name["source"][0].where)
    for name in _SINGLE:
        if len(by_name.get(name, [])) > 1:
            raise Invalid(f"{name} may be given once", expression=by_name[name][1].where)

    from medcloud.analytics.server.run import since_instant

    fmt = _format(by_name.get("_format", []))
    tracking = _tracking_id(by_name.get("clientTrackingId", []))
    since = since_instant(by_name["_since"][0].value) if "_since" in by_name else None
    views = _views(ctx, req, by_name.get("view", []), target)
    chosen = _patients(ctx, req, by_name.get("patient", []), by_name.get("group", []))
    for v in views:
        v["patients"] = _confine(ctx, req, v["view"]["resource"], chosen, by_name)

    from medcloud.fhir.operations.export import queue_for, wake_workers

    request = {
        "views": views,
        "format": fmt,
        "format_given": "_format" in by_name,
        "since": since,
        "client_tracking_id": tracking,
        "principal": principal_to_json(req.principal),
        "kickoff_time": ctx.clock(),
    }
    jid = queue_for(ctx).enqueue(KIND, request, owner=req.principal.subject)
    wake_workers()
    status = status_url(req.base_url, jid)
    body = parameters([("exportId", "valueString", jid), ("clientTrackingId", "valueString", tracking),
                       ("status", "valueCode", "accepted"), ("location", "valueUri", status)])
    return FhirResponse(status=202, headers={"Content-Location": status}, resource=body)


def status_url(base: str, jid: str) -> str:
    return f"{base}/$viewdefinition-export-status?_jobId={jid}"


def parameters(entries: list[tuple[str, str, Any]]) -> dict[str, Any]:
    """A Parameters resource of (name, value[x] key, value) entries; None values are left out."""
    return {"resourceType": "Parameters",
            "parameter": [{"name": n, key: v} for n, key, v in entries if v is not None]}


# ---------------------------------------------------------------- parameters


def _parameters(req: FhirRequest) -> list[_Param]:
    """Query parameters (simple ones only) plus the POSTed Parameters resource (operations.html#request)."""
    out = [_Param(k, v, k) for k, v in req.query]
    body = req.body
    if body is None:
        return out
    if not isinstance(body, dict) or body.get("resourceType") != "Parameters":
        raise Invalid("the $viewdefinition-export body must be a Parameters resource")
    entries = body.get("parameter") or []
    if not isinstance(entries, list):
        raise Invalid("Parameters.parameter must be a list", expression="parameter")
    for i, entry in enumerate(entries):
        where = f"parameter[{i}]"
        if not isinstance(entry, dict) or not isinstance(entry.get("name"), str):
            raise Invalid("each Parameters.parameter needs a name", expression=where)
        if entry["name"] == "view":
            parts = entry.get("part")
            if not isinstance(parts, list) or not parts:
                raise Invalid("a view parameter needs parts (name, viewReference or viewResource)", expression=where)
            got = []
            for j, part in enumerate(parts):
                pwhere = f"{where}.part[{j}]"
                if not isinstance(part, dict) or not isinstance(part.get("name"), str):
                    raise Invalid("each view part needs a name", expression=pwhere)
                if part["name"] not in _VIEW_PARTS:
                    raise NotSupported(f"unknown view part {part['name']!r} (supported: name, viewReference, "
                                       "viewResource)", expression=pwhere)
                got.append((part["name"], _value(part, pwhere), pwhere))
            out.append(_Param("view", None, where, tuple(got)))
        else:
            out.append(_Param(entry["name"], _value(entry, where), where))
    return out


def _value(entry: dict[str, Any], where: str) -> Any:
    if "resource" in entry:
        return entry["resource"]
    if isinstance(entry.get("valueReference"), dict):
        ref = entry["valueReference"].get("reference")
        if not isinstance(ref, str):
            raise Invalid(f"{entry['name']} needs a Reference with a reference", expression=where)
        return ref
    value = next((v for k, v in entry.items() if k.startswith("value")), None)
    if value is None:
        raise Invalid(f"parameter {entry['name']} needs a value or a resource", expression=where)
    return value


def _format(given: list[_Param]) -> str:
    if not given:
        return "ndjson"
    raw = str(given[0].value)
    f = raw.split(";")[0].strip().lower()
    f = _FORMAT_ALIASES.get(f, f)
    if f not in FORMATS:
        raise NotSupported(f"_format {raw!r} is not supported (supported: csv, ndjson, json, parquet)",
                           expression=given[0].where)
    return f


def _tracking_id(given: list[_Param]) -> str | None:
    if not given:
        return None
    value = given[0].value
    if not isinstance(value, str) or not value.strip() or len(value) > 256:
        raise Invalid("clientTrackingId must be a non-empty string of at most 256 characters",
                      expression=given[0].where)
    return value


def _views(ctx: FhirContext, req: FhirRequest, given: list[_Param], target: Target) -> list[dict[str, Any]]:
    """Each requested view as {"name", "view"}: resolved, validated, with a unique output name."""
    from medcloud.analytics.server import views as stored_views

    if target.rid_id is not None:
        if len(given) > 1 or any(n != "name" for p in given for n, _, _ in p.parts):
            raise Invalid(f"at the instance level the view is ViewDefinition/{target.rid_id}: a view parameter "
                          "may only give it a name", expression=given[-1].where)
        named = (*given[0].parts,) if given else ()
        given = [_Param("view", None, "viewReference", (*named, ("viewReference",
                                                                 f"ViewDefinition/{target.rid_id}", "viewReference")))]
    if not given:
        raise Invalid("at least one view parameter (with a viewReference or a viewResource) is required",
                      expression="parameter")
    out: list[dict[str, Any]] = []
    with ctx.db.read() as conn:
        for p in given:
            parts = {n: (v, w) for n, v, w in p.parts}
            if len(parts) != len(p.parts):
                raise Invalid("each view part may be given once", expression=p.where)
            if ("viewReference" in parts) == ("viewResource" in parts):
                raise Invalid("each view needs either a viewReference or a viewResource", expression=p.where)
            if "viewResource" in parts:
                view, where = parts["viewResource"]
                if not isinstance(view, dict) or view.get("resourceType") != "ViewDefinition":
                    raise Invalid("viewResource must be a ViewDefinition resource", expression=where)
                stored_views.validate(view, f"{where}.resource.")
            else:
                ref, where = parts["viewReference"]
                view = stored_views.resolve_reference(ctx, conn, req, str(ref))
                stored_views.validate(view, f"{where}.")
            name = parts.get("name", (None, ""))[0]
            if name is not None and (not isinstance(name, str) or not name.strip()):
                raise Invalid("view name must be a non-empty string", expression=parts["name"][1])
            name = name or view.get("name") or f"view_{len(out) + 1}"
            if any(o["name"] == name for o in out):
                raise Invalid(f"two views would export as {name!r}: give each a distinct name part",
                              expression=p.where)
            out.append({"name": name, "file": _file_stem(name, len(out) + 1), "view": view})
    return out


def _file_stem(name: str, index: int) -> str:
    safe = _UNSAFE.sub("_", name).strip("._")[:80]
    return f"{index:03d}_{safe or 'view'}"


# ---------------------------------------------------------------- patients, groups, access


def _patients(ctx: FhirContext, req: FhirRequest, refs: list[_Param], groups: list[_Param]) -> tuple[str, ...] | None:
    """Patient ids from ``patient`` and ``group`` (their intersection when both are given), or None.

    An unknown (or unreadable, deleted) Patient or Group is 404 (ViewDefinitionExport notes).
    """
    from medcloud.analytics.server.run import patient_ids

    if not refs and not groups:
        return None
    return patient_ids(ctx, req, [(str(p.value), p.where) for p in refs], [(str(p.value), p.where) for p in groups],
                       missing=NotFound)


def _confine(ctx: FhirContext, req: FhirRequest, rtype: str, chosen: tuple[str, ...] | None,
             by_name: dict[str, list[_Param]]) -> list[str] | None:
    """The compartments one view is read from: the patient/group filter and the token's confinement."""
    from medcloud.analytics.server.run import confined_patients

    if chosen is not None and rtype != "Patient" and rtype not in patient_compartment():
        first = (by_name.get("patient") or by_name["group"])[0]
        raise Invalid(f"patient and group filter by Patient compartment; {rtype} is not in it",
                      expression=first.where)
    readable = ctx.guard.read_filter(req.principal, rtype)
    if readable == ():
        raise Forbidden(f"this token grants no read access to {rtype}, the resource type of a view")
    confined = confined_patients(readable)
    patients = chosen
    if confined is not None:
        patients = confined if patients is None else tuple(p for p in patients if p in confined)
    return None if patients is None else list(patients)
