"""The ``$viewdefinition-export`` job and its status, result and file endpoints.

The job (``medcloud.jobs``, kind ``viewdefinition-export``) runs each view with DuckDB over the
store, like ``$run``: rows come only from resources the recorded principal may read (the guard
checks each one as it is read). Each view becomes one file in ``DATA_DIR/exports/views/<job id>``,
written under a dot-prefixed temporary name and renamed into place when complete, so a half
written file is never listed or served. With encryption at rest on, DuckDB writes to a private
temporary folder and the file is sealed into the job folder (mode 2 stream, ``security/crypto``);
downloads are decrypted while sent. Key rotation finds the files under ``DATA_DIR/exports``.

The checkpoint is the list of views done: a worker that dies (or whose lease runs out) leaves
the job to the next worker, which drops any file not in the checkpoint and carries on with the
next view. Reading the store renews the lease as it goes, so a long view does not lose it.

Endpoints (async pattern of the ViewDefinitionExport notes):
``[base]/$viewdefinition-export-status?_jobId=`` answers 202 (``Retry-After``, ``X-Progress``,
Parameters with status ``in-progress``) while the job runs and ``303 See Other`` to the result URL
when it has finished; ``DELETE`` cancels the job and removes its files (later polls 404).
``[base]/$viewdefinition-export-result?_jobId=`` answers 200 Parameters (exportId,
clientTrackingId, _format, exportStartTime, exportEndTime, exportDuration, output) or, for a
failed job, 500 OperationOutcome. ``[base]/$viewdefinition-export-file?_jobId=&_file=`` serves a
file. All three answer only the principal that started the export (same subject), like ``$export``.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any
from urllib.parse import quote

from medcloud.analytics.server.export import FORMATS, KIND, parameters, status_url
from medcloud.config import Settings
from medcloud.errors import Gone, MedcloudError, NotFound
from medcloud.fhir.context import FhirContext
from medcloud.fhir.exchange import FhirRequest, FhirResponse, outcome_message
from medcloud.fhir.operations import Target
from medcloud.fhir.operations._export_run import principal_from_json
from medcloud.fhir.operations.export import owned_job, queue_for
from medcloud.fhir.operations.export import purge_expired as purge_bulk_jobs
from medcloud.fhir.resource_meta import http_date, instant
from medcloud.jobs import (
    CANCELLED,
    COMPLETED,
    FAILED,
    Handler,
    Job,
    JobControl,
    LeaseLost,
    Permanent,
)
from medcloud.storage.resources import Stored

RETRY_AFTER_SECONDS = 2
HEARTBEAT_SECONDS = 5.0  # lease renewal while a view's rows are read (the lease is 60 s)


def export_dir(settings: Settings, job_id: str) -> Path:
    return settings.data_dir / "exports" / "views" / job_id


# ---------------------------------------------------------------- the job


def job_handler(ctx: FhirContext) -> Handler:
    """The worker-side handler of ``viewdefinition-export`` jobs."""

    def run(job: Job, control: JobControl) -> dict[str, Any]:
        out = export_dir(ctx.settings, job.id)
        try:
            return run_views(ctx, job.request, out, job.state, control)
        except LeaseLost:
            now = control.queue.get(job.id)
            if now is None or now.status == CANCELLED:
                shutil.rmtree(out, ignore_errors=True)
            raise

    return run


def run_views(ctx: FhirContext, request: dict[str, Any], out: Path, state: dict[str, Any] | None,
              control: JobControl) -> dict[str, Any]:
    """Write every view not yet in ``state["done"]``; returns the job result (the outputs and times)."""
    out.mkdir(parents=True, exist_ok=True)
    if state is None:
        state = {"started": ctx.clock(), "done": []}
        control.checkpoint(state)
    keep = {f["file"] for d in state["done"] for f in d["files"]}
    for p in out.iterdir():  # files of a view a dead worker had started, and its temporaries
        if p.is_file() and p.name not in keep:
            p.unlink()
    principal = principal_from_json(request["principal"])
    fmt = request["format"]
    for entry in request["views"][len(state["done"]):]:
        beat = _Heartbeat(control)

        def admit(s: Stored, beat: _Heartbeat = beat) -> bool:
            beat()
            return ctx.guard.can_read(principal, s)

        try:
            written = _write_view(ctx, entry, request.get("since"), fmt, out, admit)
        except MedcloudError as e:  # an evaluation error: running it again gives the same answer
            raise Permanent(f"view {entry['name']!r}: {e.message}") from e
        state["done"].append({"name": entry["name"], "files": [written]})
        control.checkpoint(state)
    return {"started": state["started"], "finished": ctx.clock(), "output": state["done"]}


class _Heartbeat:
    """Renews the job's lease at most every HEARTBEAT_SECONDS (raises LeaseLost when it is gone)."""

    def __init__(self, control: JobControl):
        self.control = control
        self.last = time.monotonic()

    def __call__(self) -> None:
        now = time.monotonic()
        if now - self.last >= HEARTBEAT_SECONDS:
            self.control.checkpoint()
            self.last = now


def _write_view(ctx: FhirContext, entry: dict[str, Any], since: int | None, fmt: str, out: Path,
                admit: Any) -> dict[str, Any]:
    from medcloud.analytics.engines.duckdb import DuckDBEngine
    from medcloud.analytics.server.store import StoreQuery, StoreSource
    from medcloud.analytics.viewdef import parse_view

    view = parse_view(entry["view"])
    patients = entry.get("patients")
    source = StoreSource(ctx.db, StoreQuery(view.resource, None if patients is None else tuple(patients), since),
                         admit=admit)
    name = f"{entry['file']}.{fmt}"
    final = out / name
    seal = ctx.at_rest is not None and ctx.at_rest.encrypt
    if not seal:
        with DuckDBEngine() as engine:  # writes a temporary file and renames it into place
            result = engine.write(view, source, final, fmt)  # type: ignore[arg-type]
        size = final.stat().st_size
        return {"file": name, "rows": result.rows, "size": size}
    assert ctx.at_rest is not None
    from medcloud.security.crypto import encrypt_stream

    plain_dir = Path(tempfile.mkdtemp(prefix="medcloud-vdexport-"))
    # A unique temporary name: a worker that lost its lease may still be writing the same view.
    fd, partial = tempfile.mkstemp(prefix=f".{name}.", suffix=".partial", dir=out)
    try:
        plain = plain_dir / name
        with DuckDBEngine() as engine:
            result = engine.write(view, source, plain, fmt)  # type: ignore[arg-type]
        size = plain.stat().st_size
        with open(plain, "rb") as src, open(fd, "wb", closefd=False) as dst:
            encrypt_stream(src, dst, ctx.at_rest.keyring())
            dst.flush()
            os.fsync(dst.fileno())
        os.replace(partial, final)
    finally:
        os.close(fd)
        shutil.rmtree(plain_dir, ignore_errors=True)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(partial)
    return {"file": name, "rows": result.rows, "size": size}


# ---------------------------------------------------------------- status, result, cancel, files


def _owned_job(ctx: FhirContext, req: FhirRequest) -> Job:
    return owned_job(ctx, req, KIND, "view export", expression="_jobId")


def _result_url(base: str, jid: str) -> str:
    return f"{base}/$viewdefinition-export-result?_jobId={jid}"


def _file_url(base: str, jid: str, name: str) -> str:
    return f"{base}/$viewdefinition-export-file?_jobId={jid}&_file={quote(name)}"


def poll_status(ctx: FhirContext, conn: Any, req: FhirRequest, target: Target) -> FhirResponse:
    job = _owned_job(ctx, req)
    if req.method == "DELETE":
        queue_for(ctx).cancel(job.id)
        shutil.rmtree(export_dir(ctx.settings, job.id), ignore_errors=True)
        return FhirResponse(status=202, resource=outcome_message(f"view export {job.id} cancelled and its files "
                                                                 "deleted"))
    if job.status in (COMPLETED, FAILED):
        return FhirResponse(status=303, headers={"Location": _result_url(req.base_url, job.id)})
    return _in_progress(req, job)


def _in_progress(req: FhirRequest, job: Job) -> FhirResponse:
    started = (job.state or {}).get("started")
    body = parameters([
        ("exportId", "valueString", job.id),
        ("clientTrackingId", "valueString", job.request.get("client_tracking_id")),
        ("status", "valueCode", "in-progress"),
        ("location", "valueUri", status_url(req.base_url, job.id)),
        ("exportStartTime", "valueInstant", instant(started) if started else None),
    ])
    return FhirResponse(status=202, resource=body, headers={"X-Progress": _progress(job),
                                                            "Retry-After": str(RETRY_AFTER_SECONDS)})


def _progress(job: Job) -> str:
    if job.status == "queued" and job.error:
        return f"retrying after an error: {job.error}"[:200]
    total = len(job.request["views"])
    done = len((job.state or {}).get("done", []))
    if job.state is None:
        return "queued"
    return f"{done}/{total} views done ({100 * done // max(total, 1)}%)"


def result(ctx: FhirContext, conn: Any, req: FhirRequest, target: Target) -> FhirResponse:
    job = _owned_job(ctx, req)
    if job.status == FAILED:
        return FhirResponse(status=500, resource=outcome_message(
            f"Export failed: {job.error}", code="exception", severity="error"))
    if job.status != COMPLETED:
        return _in_progress(req, job)
    done = job.result or {}
    started, finished = done["started"], done["finished"]
    entries: list[tuple[str, str, Any]] = [
        ("exportId", "valueString", job.id),
        ("clientTrackingId", "valueString", job.request.get("client_tracking_id")),
        ("status", "valueCode", "completed"),
        ("_format", "valueCode", job.request["format"]),
        ("exportStartTime", "valueInstant", instant(started)),
        ("exportEndTime", "valueInstant", instant(finished)),
        ("exportDuration", "valueInteger", max(0, round((finished - started) / 1_000_000))),
    ]
    body = parameters(entries)
    for o in done["output"]:
        body["parameter"].append({"name": "output", "part": [
            {"name": "name", "valueString": o["name"]},
            *({"name": "location", "valueUri": _file_url(req.base_url, job.id, f["file"])} for f in o["files"]),
        ]})
    expires = http_date(job.updated + ctx.settings.export_ttl * 1_000_000)
    return FhirResponse(status=200, resource=body, headers={"Expires": expires})


def export_file(ctx: FhirContext, conn: Any, req: FhirRequest, target: Target) -> FhirResponse:
    job = _owned_job(ctx, req)
    name = req.param("_file") or ""
    files = {f["file"]: f for o in (job.result or {}).get("output", []) for f in o["files"]}
    if job.status != COMPLETED or name not in files:
        raise NotFound(f"view export {job.id} has no file {name!r}")
    path = export_dir(ctx.settings, job.id) / name
    if not path.is_file():
        raise Gone(f"the file {name} of view export {job.id} has expired")
    media = FORMATS[job.request["format"]]
    headers = {"Content-Disposition": f'attachment; filename="{name}"'}
    if ctx.at_rest is None:
        return FhirResponse(status=200, file=path, media_type=media, headers=headers)
    # Decrypted while sent; the first piece is read now, so a wrong key is an error, not a cut-off 200.
    pieces = ctx.at_rest.iter_file(path)
    first = next(pieces, b"")
    return FhirResponse(status=200, stream=itertools.chain([first], pieces), media_type=media,
                        headers={**headers, "Content-Length": str(files[name]["size"])})


def purge_expired(ctx: FhirContext) -> int:
    """Delete finished view exports (and their files) older than ``settings.export_ttl``."""
    return purge_bulk_jobs(ctx, KIND, export_dir)
