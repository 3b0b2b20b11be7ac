"""``ViewDefinition/$run`` and ``ViewDefinition/[id]/$run`` (SQL-on-FHIR v2 OperationDefinition ViewDefinitionRun).

Runs one ViewDefinition synchronously with DuckDB over the server's own store (or over the
``resource`` parameters sent inline) and answers the rows as csv, ndjson, json or parquet. The
rows come only from resources the caller may read: the view's resource type is read through the
same read filter as search (a ``patient/`` token is confined to its compartment in SQL) and every
row is checked again with the guard, like Bulk ``$export``. A token with no read scope on the view's
resource type gets 403 (the operation itself needs read or search on ViewDefinition).

Parameters (operation's "Input Parameters" table): ``viewReference``, ``viewResource`` (POST),
``_format`` (or the Accept header), ``header`` (csv), ``patient`` (repeatable), ``group``
(repeatable; Group.member.entity references to Patients), ``_since``, ``_limit``, ``resource``
(POST, repeatable). ``source`` (an external data source) is not supported: 400 ``not-supported``.
The result is written to a temporary file first (so an evaluation error becomes an
OperationOutcome, never half a body) and then streamed in chunks and deleted.
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson

from medcloud.errors import Forbidden, Invalid, MedcloudError, NotSupported
from medcloud.fhir.context import FhirContext
from medcloud.fhir.definitions import patient_compartment
from medcloud.fhir.exchange import FhirRequest, FhirResponse
from medcloud.fhir.operations import Target
from medcloud.fhir.primitives import date_range

FORMATS = {"json": "application/json", "ndjson": "application/x-ndjson", "csv": "text/csv",
           "parquet": "application/octet-stream"}
_ACCEPT = {"application/json": "json", "application/fhir+json": "json", "application/x-ndjson": "ndjson",
           "application/ndjson": "ndjson", "application/fhir+ndjson": "ndjson", "text/csv": "csv",
           "application/octet-stream": "parquet", "application/vnd.apache.parquet": "parquet"}
_SINGLE = ("viewReference", "viewResource", "_format", "header", "_since", "_limit", "source")
_KNOWN = frozenset({*_SINGLE, "patient", "group", "resource"})
CHUNK = 64 * 1024


@dataclass
class RunParams:
    values: dict[str, list[Any]] = field(default_factory=dict)

    def one(self, name: str) -> Any:
        got = self.values.get(name) or []
        return got[0] if got else None

    def all(self, name: str) -> list[Any]:
        return self.values.get(name) or []


def run(ctx: FhirContext, conn: Any, req: FhirRequest, target: Target) -> FhirResponse:
    """The operation's handler (own transactions: the store is read in batches)."""
    params = _params(req)
    if params.one("source") is not None:
        raise NotSupported("the source parameter (an external data source) is not supported; this server runs "
                           "views over its own store or over inline resource parameters", expression="source")
    fmt = _format(req, params)
    header = _boolean(params.one("header"), "header", default=True)
    limit = _limit(params.one("_limit"))
    since = since_instant(params.one("_since"))
    view = _view(ctx, req, params, target)

    from medcloud.analytics.engines._sources import ResourcesSource, Source
    from medcloud.analytics.engines.duckdb import DuckDBEngine

    rtype = view.resource
    inline = params.all("resource")
    source: Source
    if inline:
        bad = [i for i, r in enumerate(inline) if not isinstance(r, dict) or "resourceType" not in r]
        if bad:
            raise Invalid("each resource parameter must carry a FHIR resource", expression=f"resource[{bad[0]}]")
        source = ResourcesSource(tuple(r for r in inline if r.get("resourceType") == rtype
                                       and (since is None or _updated_after(r, since))))
    else:
        source = readable_source(ctx, req, rtype, _patients(ctx, req, params, rtype), since)

    def write(out: Path) -> None:
        with DuckDBEngine() as engine:
            engine.write(view, source, out, fmt, limit=limit, header=header)  # type: ignore[arg-type]

    return file_response(write, f"result.{fmt}", FORMATS[fmt])


def file_response(write: Callable[[Path], None], name: str, media_type: str) -> FhirResponse:
    """Write a result to a temporary file first (an error becomes an OperationOutcome, never half a
    body), then stream it in chunks and delete it."""
    tmp_dir = Path(tempfile.mkdtemp(prefix="medcloud-result-"))
    try:
        out = tmp_dir / name
        write(out)
        size = out.stat().st_size
    except BaseException:
        shutil.rmtree(tmp_dir, ignore_errors=True)
        raise
    return FhirResponse(status=200, stream=_stream_file(out, tmp_dir), media_type=media_type,
                        headers={"Content-Length": str(size)})


def readable_source(ctx: FhirContext, req: FhirRequest, rtype: str, patients: tuple[str, ...] | None = None,
                    since: int | None = None) -> Any:
    """The store's ``rtype`` resources the caller may read, streamed (a StoreSource); 403 without read access.

    A ``patient/`` token is confined to its compartment in SQL and every row is checked again by the guard.
    """
    from medcloud.analytics.server.store import StoreQuery, StoreSource

    readable = ctx.guard.read_filter(req.principal, rtype)
    if readable == ():
        raise Forbidden(f"this token grants no read access to {rtype}, the resource type of the view")
    confined = confined_patients(readable)
    if confined is not None:
        patients = confined if patients is None else tuple(p for p in patients if p in confined)
    principal = req.principal
    return StoreSource(ctx.db, StoreQuery(rtype, patients, since), admit=lambda s: ctx.guard.can_read(principal, s))


def _stream_file(path: Path, tmp_dir: Path) -> Iterator[bytes]:
    try:
        with open(path, "rb") as fh:
            while chunk := fh.read(CHUNK):
                yield chunk
    finally:
        shutil.rmtree(tmp_dir, ignore_errors=True)


def _params(req: FhirRequest) -> RunParams:
    """Query parameters plus those of a POSTed Parameters resource (operations.html#request)."""
    p = RunParams()
    for k, v in req.query:
        if k in ("viewResource", "resource"):
            raise Invalid(f"{k} carries a resource: send it in a POSTed Parameters resource", expression=k)
        p.values.setdefault(k, []).append(v)
    body = req.body
    if req.method == "POST" and body is not None:
        if not isinstance(body, dict) or body.get("resourceType") != "Parameters":
            raise Invalid("the $run POST body must be a Parameters resource")
        for i, entry in enumerate(body.get("parameter") or []):
            if not isinstance(entry, dict) or not isinstance(entry.get("name"), str):
                raise Invalid("each Parameters.parameter needs a name", expression=f"parameter[{i}]")
            if "resource" in entry:
                value = entry["resource"]
            elif isinstance(entry.get("valueReference"), dict):
                value = entry["valueReference"].get("reference")
            else:
                value = next((v for k, v in entry.items() if k.startswith("value")), None)
            if value is None:
                raise Invalid(f"parameter {entry['name']} needs a value or a resource", expression=f"parameter[{i}]")
            p.values.setdefault(entry["name"], []).append(value)
    unknown = sorted(set(p.values) - _KNOWN)
    if unknown:
        raise NotSupported(f"$run does not support the parameter(s) {', '.join(unknown)}", expression=unknown[0])
    for name in _SINGLE:
        if len(p.all(name)) > 1:
            raise Invalid(f"{name} may be given once", expression=name)
    return p


def _format(req: FhirRequest, params: RunParams) -> str:
    fmt = params.one("_format")
    if fmt is not None:
        f = str(fmt).split(";")[0].strip().lower()
        f = _ACCEPT.get(f, f)
        if f not in FORMATS:
            raise NotSupported(f"Format {fmt!r} is not supported. Supported formats: json, ndjson, csv, parquet",
                               expression="_format")
        return f
    for item in (req.header("accept") or "").split(","):
        media = item.split(";")[0].strip().lower()
        if media in _ACCEPT:
            return _ACCEPT[media]
    return "json"


def _boolean(value: Any, name: str, *, default: bool) -> bool:
    if value is None:
        return default
    if isinstance(value, bool):
        return value
    if str(value) in ("true", "false"):
        return str(value) == "true"
    raise Invalid(f"{name} must be true or false, not {value!r}", expression=name)


def _limit(value: Any) -> int | None:
    if value is None:
        return None
    text = str(value)
    if isinstance(value, bool) or not text.isdigit() or int(text) == 0:
        raise Invalid(f"_limit must be a positive integer, not {value!r}", expression="_limit")
    return int(text)


def since_instant(value: Any) -> int | None:
    if value is None:
        return None
    try:
        return date_range(str(value))[0]
    except Invalid as e:
        raise Invalid(f"_since: {e.message}", expression="_since") from e


def _updated_after(resource: dict[str, Any], since: int) -> bool:
    last = (resource.get("meta") or {}).get("lastUpdated")
    if not isinstance(last, str):
        return True  # the spec: resources without a last-updated time MAY be included
    try:
        return date_range(last)[0] > since
    except Invalid:
        return True


def _view(ctx: FhirContext, req: FhirRequest, params: RunParams, target: Target) -> Any:
    from medcloud.analytics.server import views
    from medcloud.analytics.viewdef import parse_view

    ref, inline = params.one("viewReference"), params.one("viewResource")
    if target.rid_id is not None:
        if ref is not None or inline is not None:
            raise Invalid("viewReference and viewResource are not allowed at the instance level (the view is "
                          f"ViewDefinition/{target.rid_id})", expression="viewReference" if ref else "viewResource")
        ref = f"ViewDefinition/{target.rid_id}"
    elif ref is not None and inline is not None:
        raise Invalid("give either viewReference or viewResource, not both", expression="viewResource")
    elif ref is None and inline is None:
        raise Invalid("Either viewReference or viewResource parameter is required when invoking at type level")
    if inline is not None:
        if not isinstance(inline, dict):
            raise Invalid("viewResource must be a ViewDefinition resource", expression="viewResource")
        views.validate(inline, "viewResource.")
        return parse_view(inline)
    with ctx.db.read() as conn:
        stored = views.resolve_reference(ctx, conn, req, str(ref))
    views.validate(stored, "viewReference.")
    return parse_view(stored)


def _patients(ctx: FhirContext, req: FhirRequest, params: RunParams, rtype: str) -> tuple[str, ...] | None:
    """Patient ids from ``patient`` and ``group`` (their intersection when both are given), or None."""
    refs, groups = params.all("patient"), params.all("group")
    if not refs and not groups:
        return None
    if rtype != "Patient" and rtype not in patient_compartment():
        raise Invalid(f"patient and group filter by Patient compartment; {rtype} is not in it",
                      expression="patient" if refs else "group")
    return patient_ids(ctx, req, [(str(r), "patient") for r in refs], [(str(g), "group") for g in groups],
                       missing=Invalid)


def patient_ids(ctx: FhirContext, req: FhirRequest, refs: Sequence[tuple[str, str]],
                groups: Sequence[tuple[str, str]], *, missing: type[MedcloudError]) -> tuple[str, ...]:
    """The Patient ids named by ``refs`` and by the active members of ``groups`` (their intersection
    when both are given), as (reference, FHIRPath expression of the parameter) pairs. A Patient or
    Group that is unknown, deleted or not readable by the caller raises ``missing`` (``$run``: 400;
    ``$viewdefinition-export``: 404, as its OperationDefinition says)."""
    chosen: set[str] | None = None
    with ctx.db.read() as conn:
        if refs:
            chosen = set()
            for ref, where in refs:
                pid = local_id(ref, "Patient", "patient")
                s = ctx.store.read(conn, "Patient", pid)
                if s is None or s.deleted or not ctx.guard.can_read(req.principal, s):
                    raise missing(f"Patient with reference 'Patient/{pid}' not found", expression=where)
                chosen.add(pid)
        if groups:
            members: set[str] = set()
            for ref, where in groups:
                gid = local_id(ref, "Group", "group")
                s = ctx.store.read(conn, "Group", gid)
                if s is None or s.deleted or s.content is None or not ctx.guard.can_read(req.principal, s):
                    raise missing(f"Group with reference 'Group/{gid}' not found", expression=where)
                for m in orjson.loads(s.content).get("member") or []:
                    entity = str((m.get("entity") or {}).get("reference") or "")
                    if entity.startswith("Patient/") and not m.get("inactive"):
                        members.add(entity.split("/", 1)[1])
            chosen = members if chosen is None else chosen & members
    return tuple(sorted(chosen or ()))


def local_id(ref: str, rtype: str, param: str) -> str:
    ref = ref.strip()
    if "/" not in ref:
        return ref
    head, _, rid = ref.rpartition("/")
    if head.rsplit("/", 1)[-1] != rtype or not rid:
        raise Invalid(f"{param} must reference a {rtype} ({rtype}/[id]), not {ref!r}", expression=param)
    return rid


def confined_patients(readable: Any) -> tuple[str, ...] | None:
    """Patients a read filter confines rows to (every grant patient-confined), or None for no confinement."""
    if readable is None:
        return None
    patients = [g.patient for g in readable]
    if any(p is None for p in patients):
        return None  # some grant is not confined to a patient; the per-row check applies its params
    return tuple(sorted({p for p in patients if p is not None}))
