"""Bulk Data ``$export`` at system, ``Patient`` and ``Group/[id]`` level (Bulk Data Access IG v2,
hl7.org/fhir/uv/bulkdata/export.html), run as a leased job (``medcloud.jobs``).

Kick-off answers 202 with ``Content-Location`` pointing at ``[base]/$export-poll-status?_jobId=..``.
Polling answers 202 (``X-Progress``, ``Retry-After``) while the job runs, 200 with the completion
manifest when done, and a 5xx OperationOutcome if the job failed for good; ``DELETE`` on it cancels
the job and removes its files. Files are served by ``[base]/$export-file?_jobId=..&_file=..``,
streamed from disk. Unsupported kick-off parameters are an error unless the client sent
``Prefer: handling=lenient``, in which case they are ignored and reported in the manifest's
``error`` OperationOutcome file (export.html#query-parameters).

medcloud extension: ``_deidentify=true`` (or ``=safe-harbor``, ``=date-shift``, or the name of a
policy file ``DATA_DIR/deid-policies/<name>.toml``) makes the job write de-identified resources
(``security/deid``), pseudonymised with the server's own key, so pseudonyms agree across types
and across exports. Files under DATA_DIR are encrypted at rest and decrypted while downloaded.
"""

from __future__ import annotations

import itertools
import re
import shutil
import threading
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlencode

from sqlalchemy import Connection

from medcloud.config import Settings
from medcloud.errors import Gone, Invalid, NotFound, NotSupported
from medcloud.fhir.context import FhirContext
from medcloud.fhir.definitions import resource_types
from medcloud.fhir.exchange import FhirRequest, FhirResponse, outcome_message
from medcloud.fhir.operations import Operation, Target, register
from medcloud.fhir.operations._export_run import compartment_types, principal_to_json, run_export
from medcloud.fhir.primitives import date_range
from medcloud.fhir.resource_meta import http_date, instant
from medcloud.jobs import (
    CANCELLED,
    COMPLETED,
    FAILED,
    Handler,
    Job,
    JobControl,
    JobQueue,
    LeaseLost,
    Permanent,
)
from medcloud.security.deid.files import line_transform, named_policy

KIND = "bulk-export"
OUTPUT_FORMATS = {"application/fhir+ndjson": "application/fhir+ndjson",
                  "application/ndjson": "application/ndjson", "ndjson": "application/fhir+ndjson"}
_KNOWN = {"_outputFormat", "_since", "_type", "patient", "_deidentify"}
DEID_KEY = "deid-pseudonym-key"  # the server's pseudonymisation secret (security/keys.py)
_FILE_RE = re.compile(r"^[A-Za-z]{1,64}\.\d{3,6}\.ndjson$")
RETRY_AFTER_SECONDS = 2


def export_dir(settings: Settings, job_id: str) -> Path:
    return settings.data_dir / "exports" / job_id


def queue_for(ctx: FhirContext) -> JobQueue:
    return JobQueue(ctx.db, clock=ctx.clock)


# ---------------------------------------------------------------- kick-off


def kickoff(ctx: FhirContext, conn: Connection | None, req: FhirRequest, target: Target) -> FhirResponse:
    prefer = [p.strip() for p in (req.header("prefer") or "").replace(";", ",").split(",")]
    if "respond-async" not in prefer:
        raise Invalid("$export runs asynchronously: send the header 'Prefer: respond-async'")
    lenient = "handling=lenient" in prefer
    warnings: list[str] = []

    def unsupported(message: str) -> None:
        if not lenient:
            raise NotSupported(message + " (send 'Prefer: handling=lenient' to ignore it)")
        warnings.append(message + "; ignored")

    params = _parameters(req)
    fmt = OUTPUT_FORMATS["ndjson"]
    types: list[str] | None = None
    since: int | None = None
    patients: list[str] | None = None
    deid: str | None = None
    for name, value in params:
        if name == "_outputFormat":
            if value not in OUTPUT_FORMATS:
                raise NotSupported(f"_outputFormat {value!r} is not supported; use application/fhir+ndjson")
            fmt = OUTPUT_FORMATS[value]
        elif name == "_type":
            types = (types or []) + [t.strip() for t in value.split(",") if t.strip()]
        elif name == "_since":
            try:
                since = date_range(value)[0]
            except Invalid as e:
                raise Invalid(f"_since: {e.message}") from e
        elif name == "patient":
            if target.rtype is None:
                unsupported("the patient parameter applies to Patient and Group level exports only")
                continue
            pid = value.split("/")[-1] if value.startswith("Patient/") or "/Patient/" in value else None
            if not pid:
                raise Invalid(f"patient must reference a Patient, not {value!r}")
            patients = (patients or []) + [pid]
        elif name == "_deidentify":
            deid = _deid_policy_name(ctx, value)
        else:
            unsupported(f"the kick-off parameter {name} is not supported")

    level = "system" if target.rtype is None else ("group" if target.rtype == "Group" else "patient")
    if types is not None:
        known = set(resource_types())
        allowed = set(compartment_types()) if level != "system" else known
        for t in [t for t in types if t not in allowed]:
            why = "is not a resource type" if t not in known else "has no Patient compartment"
            unsupported(f"_type {t} {why}")
        types = [t for t in types if t in allowed]
    if level == "group":
        assert target.rid_id is not None
        members = _group_members(ctx, req, target.rid_id)
        patients = members if patients is None else [p for p in patients if p in set(members)]

    now = ctx.clock()
    request = {
        "level": level,
        "types": types,
        "since": since,
        "patients": patients,
        "output_format": fmt,
        "request_url": _request_url(req),
        "requires_token": bool(req.header("authorization")),
        "transaction_time": now,
        "principal": principal_to_json(req.principal),
        "warnings": warnings,
        "deidentify": deid,
    }
    jid = queue_for(ctx).enqueue(KIND, request, owner=req.principal.subject)
    wake_workers()
    return FhirResponse(status=202, headers={"Content-Location": _status_url(req.base_url, jid)},
                        resource=outcome_message(f"export {jid} accepted; poll the Content-Location URL"))


def deid_policy_dir(settings: Settings) -> Path:
    return settings.data_dir / "deid-policies"


def _deid_policy_name(ctx: FhirContext, value: str) -> str | None:
    """``_deidentify``: false, true or a policy name; checked now so a bad name is a 400, not a failed job."""
    name = value.strip().lower()
    if name in ("false", ""):
        return None
    if ctx.at_rest is None:
        raise NotSupported("_deidentify needs the server's key store, which this server was built without")
    named_policy(name, b"\0" * 32, deid_policy_dir(ctx.settings))
    return "safe-harbor" if name == "true" else name


def _parameters(req: FhirRequest) -> list[tuple[str, str]]:
    out = [(k, v) for k, v in req.query]
    body = req.body
    if req.method == "POST" and isinstance(body, dict):
        if body.get("resourceType") != "Parameters":
            raise Invalid("the $export POST body must be a Parameters resource")
        for p in body.get("parameter") or []:
            if not isinstance(p, dict) or not isinstance(p.get("name"), str):
                raise Invalid("each Parameters.parameter needs a name", expression="Parameters.parameter")
            value = next((v for k, v in p.items() if k.startswith("value")), None)
            if isinstance(value, dict):
                value = value.get("reference")
            if not isinstance(value, str):
                raise Invalid(f"parameter {p['name']} needs a string, instant or Reference value")
            out.append((p["name"], value))
    return out


def _group_members(ctx: FhirContext, req: FhirRequest, group_id: str) -> list[str]:
    with ctx.db.read() as conn:
        s = ctx.store.read(conn, "Group", group_id)
    if s is None:
        raise NotFound(f"Group/{group_id} is not known")
    ctx.guard.check_read(req.principal, s)
    if s.deleted or s.content is None:
        raise Gone(f"Group/{group_id} was deleted")
    import orjson

    group = orjson.loads(s.content)
    members: list[str] = []
    for m in group.get("member") or []:
        ref = (m.get("entity") or {}).get("reference", "")
        if m.get("inactive") is True or "Patient/" not in ref:
            continue
        members.append(ref.split("Patient/", 1)[1].split("/")[0])
    return list(dict.fromkeys(members))


def _request_url(req: FhirRequest) -> str:
    url = f"{req.base_url}/{req.path}"
    return url + (f"?{urlencode(req.query)}" if req.query else "")


def _status_url(base: str, jid: str) -> str:
    return f"{base}/$export-poll-status?_jobId={jid}"


def _file_url(base: str, jid: str, name: str) -> str:
    return f"{base}/$export-file?_jobId={jid}&_file={quote(name)}"


# ---------------------------------------------------------------- status, cancel, files


def owned_job(ctx: FhirContext, req: FhirRequest, kind: str = KIND, what: str = "export job",
              expression: str | None = None) -> Job:
    """The ``kind`` job named by ``_jobId`` if the caller started it and it is not cancelled, else
    NotFound (shared by Bulk ``$export`` and ``$viewdefinition-export``)."""
    jid = req.param("_jobId")
    if not jid:
        raise Invalid("_jobId is required", expression=expression)
    job = queue_for(ctx).get(jid)
    if job is None or job.kind != kind or job.status == CANCELLED or job.owner != req.principal.subject:
        raise NotFound(f"no {what} {jid!r}")
    return job


def poll_status(ctx: FhirContext, conn: Connection | None, req: FhirRequest, target: Target) -> FhirResponse:
    job = owned_job(ctx, req)
    if req.method == "DELETE":
        queue_for(ctx).cancel(job.id)
        shutil.rmtree(export_dir(ctx.settings, job.id), ignore_errors=True)
        return FhirResponse(status=202, resource=outcome_message(f"export {job.id} cancelled and its files deleted"))
    if job.status == FAILED:
        return FhirResponse(status=500, resource=outcome_message(
            f"export {job.id} failed: {job.error}", code="exception", severity="error"))
    if job.status != COMPLETED:
        return FhirResponse(status=202, headers={"X-Progress": _progress(job),
                                                 "Retry-After": str(RETRY_AFTER_SECONDS)})
    assert job.result is not None
    base = req.base_url
    manifest = {
        "transactionTime": instant(job.request["transaction_time"]),
        "request": job.request["request_url"],
        "requiresAccessToken": bool(job.request.get("requires_token")),
        "output": [{"type": f["type"], "url": _file_url(base, job.id, f["name"]), "count": f["count"]}
                   for f in job.result["output"]],
        "error": [{"type": f["type"], "url": _file_url(base, job.id, f["name"]), "count": f["count"]}
                  for f in job.result["error"]],
    }
    expires = http_date(job.updated + ctx.settings.export_ttl * 1_000_000)
    return FhirResponse(status=200, resource=manifest, media_type="application/json", headers={"Expires": expires})


def _progress(job: Job) -> str:
    if job.status == "queued" and job.error:
        return f"retrying after an error: {job.error}"[:200]
    st = job.state
    if not st:
        return "queued"
    types = st.get("types") or []
    done = min(st.get("t", 0), len(types))
    written = sum(f.get("count", 0) for f in st.get("files", []))
    current = f", exporting {types[done]}" if done < len(types) else ""
    return f"{done}/{len(types)} types done{current}, {written} resources written"


def export_file(ctx: FhirContext, conn: Connection | None, req: FhirRequest, target: Target) -> FhirResponse:
    job = owned_job(ctx, req)
    name = req.param("_file") or ""
    listed = {f["name"] for f in (job.result or {}).get("output", []) + (job.result or {}).get("error", [])}
    if job.status != COMPLETED or not _FILE_RE.match(name) or name not in listed:
        raise NotFound(f"export {job.id} has no file {name!r}")
    path = export_dir(ctx.settings, job.id) / name
    if not path.is_file():
        raise Gone(f"the file {name} of export {job.id} has expired")
    media = job.request.get("output_format", "application/fhir+ndjson")
    done = job.result or {}
    size = next((f.get("size") for f in done.get("output", []) + done.get("error", []) if f["name"] == name), None)
    if ctx.at_rest is None or size is None:
        return FhirResponse(status=200, file=path, media_type=media)
    # Decrypted while sent (constant memory). The first piece is read now, so a wrong key or a
    # tampered header is an error response, not a cut-off 200. No Range support: a Range header
    # is ignored and the whole file sent (RFC 9110 §14.2 allows that).
    pieces = ctx.at_rest.iter_file(path)
    first = next(pieces, b"")
    return FhirResponse(status=200, stream=itertools.chain([first], pieces), media_type=media,
                        headers={"Content-Length": str(size)})


# ---------------------------------------------------------------- the job


def job_handler(ctx: FhirContext) -> Handler:
    """The worker-side handler of ``bulk-export`` jobs: files under data_dir/exports/<job id>."""

    def run(job: Job, control: JobControl) -> dict[str, Any]:
        out = export_dir(ctx.settings, job.id)
        transform = None
        if job.request.get("deidentify"):
            transform = _deid_transform(ctx, job.request)
        try:
            return run_export(ctx, job.request, out, job.state, control.checkpoint, at_rest=ctx.at_rest,
                              transform=transform)
        except LeaseLost:
            now = control.queue.get(job.id)
            if now is None or now.status == CANCELLED:
                shutil.rmtree(out, ignore_errors=True)
            raise

    return run


def _deid_transform(ctx: FhirContext, request: dict[str, Any]) -> Callable[[bytes], bytes]:
    if ctx.at_rest is None:
        raise Permanent("_deidentify needs the server's key store")
    try:
        policy = named_policy(request["deidentify"], ctx.at_rest.keys.secret(DEID_KEY), deid_policy_dir(ctx.settings))
    except Invalid as e:  # the policy file was removed or broken since the kick-off
        raise Permanent(e.message) from e
    year = datetime.fromtimestamp(request["transaction_time"] / 1e6, tz=UTC).year
    return line_transform(policy, year)


def purge_expired(ctx: FhirContext, kind: str = KIND,
                  folder: Callable[[Settings, str], Path] = export_dir) -> int:
    """Delete finished ``kind`` jobs (and their files in ``folder``) older than ``settings.export_ttl``."""
    queue = queue_for(ctx)
    expired = queue.finished_before(kind, ctx.clock() - ctx.settings.export_ttl * 1_000_000)
    for job in expired:
        shutil.rmtree(folder(ctx.settings, job.id), ignore_errors=True)
        queue.delete(job.id)
    return len(expired)


# Workers in this process register here so a kick-off starts them without waiting for a poll.
_WAKERS: list[Any] = []
_WAKERS_LOCK = threading.Lock()


def add_waker(wake: Any) -> None:
    with _WAKERS_LOCK:
        _WAKERS.append(wake)


def remove_waker(wake: Any) -> None:
    with _WAKERS_LOCK:
        if wake in _WAKERS:
            _WAKERS.remove(wake)


def wake_workers() -> None:
    with _WAKERS_LOCK:
        for w in list(_WAKERS):
            w()


BULK = "http://hl7.org/fhir/uv/bulkdata/OperationDefinition/"
register(Operation("export", kickoff, system=True, types=("Patient",), instance_types=("Group",),
                   own_transaction=True,
                   definition={"*": BULK + "export", "Patient": BULK + "patient-export", "Group": BULK + "group-export"}))
register(Operation("export-poll-status", poll_status, system=True, types=(), instance_types=(),
                   methods=("GET", "DELETE"), own_transaction=True, listed=False))
register(Operation("export-file", export_file, system=True, types=(), instance_types=(), methods=("GET",),
                   own_transaction=True, listed=False))
