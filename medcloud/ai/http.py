"""HTTP edge of the model registry (``GET/POST /ai/models``, ``GET /ai/models/{name}``) and of the
reads (``GET /ai/jobs``; ``POST /ai/jobs`` asks for a read of one study now).

Every route needs a token (default deny, app.py ``PUBLIC_ROUTES``); listing needs no particular
scope (manifests hold no patient data), registering needs ``medcloud/admin``. The body of a POST
is the package archive itself (``application/zip`` or ``application/gzip``), at most
``MAX_UPLOAD_BYTES``; ``?activate=true`` makes it the active version, ``?sha256=`` refuses it
unless the package digest is that one. Errors are OperationOutcomes with the status of their
category (medcloud/errors.py), like every other edge.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import orjson
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from medcloud.ai import package as packages
from medcloud.ai.registry import Registry
from medcloud.errors import Forbidden, Invalid, MedcloudError, NotFound, TooLarge, Unauthorized, Unprocessable
from medcloud.fhir.exchange import STATUS_BY_CATEGORY, Principal, operation_outcome
from medcloud.security.audit import AuditRecord
from medcloud.security.http import EdgeAuth, unauthorized_response
from medcloud.security.scopes import is_admin

if TYPE_CHECKING:
    from medcloud.ai.reads import Reads
    from medcloud.app import Services
    from medcloud.fhir.context import FhirContext
    from medcloud.jobs import Job
    from medcloud.security.guard import Guard

MAX_UPLOAD_BYTES = 256 * 1024 * 1024
_JSON = "application/json"


def routes(svc: Services) -> list[Route]:
    edge = _Edge(Registry(svc.db), EdgeAuth.of(svc.fhir), svc.fhir, svc.ai_reads)
    return [
        Route("/ai/models", edge.wrap(edge.collection), methods=["GET", "POST"]),
        Route("/ai/models/{name}", edge.wrap(edge.model), methods=["GET"]),
        Route("/ai/jobs", edge.wrap(edge.jobs), methods=["GET", "POST"]),
    ]


class _Edge:
    def __init__(self, registry: Registry, auth: EdgeAuth, ctx: FhirContext, reads: Reads | None = None):
        self.registry = registry
        self.auth = auth
        self.ctx = ctx
        self.reads = reads

    def wrap(self, fn: Any) -> Any:
        async def endpoint(request: Request) -> Response:
            try:
                return await fn(request)
            except Unauthorized as e:
                return unauthorized_response(e)
            except MedcloudError as e:
                return Response(orjson.dumps(operation_outcome(e.issues)),
                                status_code=STATUS_BY_CATEGORY.get(e.category, 500),
                                media_type="application/fhir+json; charset=utf-8")

        return endpoint

    async def collection(self, request: Request) -> Response:
        principal = await self.auth.principal(request)  # before the body: no anonymous uploads
        if request.method == "GET":
            versions = await run_in_threadpool(self.registry.list, request.query_params.get("name"))
            return _json({"models": [v.to_json() for v in versions]})
        entity = "AIModel"
        try:
            if not is_admin(principal):
                raise Forbidden("registering a model needs the medcloud/admin scope")
            activate = _flag(request.query_params.get("activate"))
            expected = request.query_params.get("sha256")
            body = await _body(request)
            pkg = await run_in_threadpool(packages.from_bytes, body, expected_sha256=expected)
            entity = f"AIModel/{pkg.manifest.name}@{pkg.manifest.version}"
            existed = await run_in_threadpool(self._known, pkg.manifest.name, pkg.manifest.version)
            version = await run_in_threadpool(lambda: self.registry.register(pkg, activate=activate,
                                                                             by=principal.subject))
        except MedcloudError as e:
            await run_in_threadpool(self._audit, principal, entity, STATUS_BY_CATEGORY.get(e.category, 500))
            raise
        status = 200 if existed else 201
        await run_in_threadpool(self._audit, principal, entity, status)
        return _json(version.to_json(), status=status, headers={"Location": f"/ai/models/{version.name}"})

    def _audit(self, principal: Principal, entity: str, status: int) -> None:
        """Registrations and refused attempts go to the audit trail: a model changes what clinicians see."""
        self.ctx.guard.record(AuditRecord(recorded=self.ctx.clock(), interaction="create", who=principal.subject,
                                          client_id=principal.client_id, source_ip=principal.source_ip,
                                          resource=entity, patient=None, status=status, durable=True))

    async def model(self, request: Request) -> Response:
        await self.auth.principal(request)
        name = request.path_params["name"]
        versions = await run_in_threadpool(self.registry.list, name)
        if not versions:
            raise NotFound(f"no model named {name}")
        active = next((v.version for v in versions if v.active), None)
        return _json({"name": name, "active": active, "versions": [v.to_json() for v in versions]})

    async def jobs(self, request: Request) -> Response:
        """``GET /ai/jobs`` (``?status=``): automatic reads, as their results are seen: a token that may
        search DiagnosticReport, and only the jobs of patients whose reports it may read."""
        from medcloud.ai.reads import KIND
        from medcloud.jobs import JobQueue

        principal = await self.auth.principal(request)
        if request.method == "POST":
            return await self._request_read(request, principal)
        if not self.ctx.guard.policy.may(principal, "search-type", "DiagnosticReport"):
            raise Forbidden("listing AI jobs needs read access to DiagnosticReport (e.g. user/DiagnosticReport.rs)")
        status = request.query_params.get("status")
        found = await run_in_threadpool(JobQueue(self.ctx.db).recent, [KIND], status=status)
        visible = visible_jobs(self.ctx.guard, principal, found)
        await run_in_threadpool(self._audit_search, principal, len(visible))
        return _json({"jobs": [job_json(j) for j in visible]})

    async def _request_read(self, request: Request, principal: Principal) -> Response:
        """``POST /ai/jobs`` ``{"study": UID, "model": NAME?}``: a read of a study now (the automatic
        read waits for the study to become stable). Needs read access to the study's ImagingStudy and
        create access to DiagnosticReport for its patient (the read writes one). 202 with the new
        jobs; 200 when every applicable model already has a job for these images (the same job)."""
        if self.reads is None:
            raise NotFound("AI reads are not enabled on this server (no imaging archive)")
        try:
            doc = orjson.loads(await request.body())
        except orjson.JSONDecodeError as e:
            raise Invalid(f"the body must be JSON: {e}") from e
        if not isinstance(doc, dict) or not isinstance(doc.get("study"), str) or not doc["study"]:
            raise Invalid('send {"study": "<StudyInstanceUID>", "model": "<name>" (optional)}')
        model = doc.get("model")
        if model is not None and not isinstance(model, str):
            raise Invalid("model must be a model name")
        study: str = doc["study"]
        reads = self.reads
        from medcloud.imaging.access import ImagingAccess

        def run() -> list[tuple[str, bool]]:
            ImagingAccess(self.ctx).check_study(principal, study)  # 404 as if unknown
            summary = reads.archive.study_summary(study)
            if summary is None:
                raise NotFound(f"study {study} is not known")
            patient = summary.get("patient_fhir_id")
            report = {"resourceType": "DiagnosticReport",
                      **({"subject": {"reference": f"Patient/{patient}"}} if patient else {})}
            if not self.ctx.guard.policy.may_write(principal, "DiagnosticReport", report):
                # the study is visible to this principal, so saying why reveals nothing new
                raise Forbidden("a read writes a DiagnosticReport: it needs create access to DiagnosticReport "
                                "for the study's patient (e.g. user/DiagnosticReport.c)")
            return reads.request(study, model)

        try:
            requested = await run_in_threadpool(run)
        except MedcloudError as e:
            await run_in_threadpool(self._audit, principal, f"AIJob?study={study}", STATUS_BY_CATEGORY.get(e.category, 500))
            raise
        if not requested:
            raise Unprocessable(f"no active image model applies to study {study}" if model is None else
                                f"model {model!r} is not active or does not apply to study {study}")
        from medcloud.jobs import JobQueue

        queue = JobQueue(self.ctx.db)
        found = [j for j in (await run_in_threadpool(lambda: [queue.get(jid) for jid, _ in requested])) if j]
        status = 202 if any(created for _, created in requested) else 200
        await run_in_threadpool(self._audit, principal, f"AIJob?study={study}", status)
        return _json({"jobs": [job_json(j) for j in found]}, status=status)

    def _audit_search(self, principal: Principal, count: int) -> None:
        self.ctx.guard.record(AuditRecord(recorded=self.ctx.clock(), interaction="search-type", who=principal.subject,
                                          client_id=principal.client_id, source_ip=principal.source_ip,
                                          resource="AIJob", patient=principal.patient, status=200))

    def _known(self, name: str, version: str) -> bool:
        return any(v.version == version for v in self.registry.list(name))


def visible_jobs(guard: Guard, principal: Principal, jobs: list[Job]) -> list[Job]:
    """The jobs whose patient's DiagnosticReports the principal may read. Only grants without further
    ``?param`` restrictions admit a job (a job has no category to match): never wider than the reports."""
    grants = guard.read_filter(principal, "DiagnosticReport")
    if grants is None:
        return jobs
    patients = {g.patient for g in grants if not g.params}
    return [j for j in jobs if None in patients or j.request.get("patient") in patients]


def job_json(job: Job) -> dict[str, Any]:
    """One automatic-read job for ``GET /ai/jobs`` and ``medcloud ai jobs --json``."""
    req = job.request
    return {"id": job.id, "status": job.status, "study": req.get("study"), "model": req.get("model"),
            "version": req.get("version"), "patient": req.get("patient"), "images": len(req.get("instances", [])),
            "attempts": job.attempts, "created": _iso_us(job.created), "updated": _iso_us(job.updated),
            "error": job.error, "result": job.result}


def _iso_us(us: int) -> str:
    import time

    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(us / 1_000_000)) + f".{us // 1000 % 1000:03d}Z"


async def _body(request: Request) -> bytes:
    size = request.headers.get("content-length")
    if size is not None and size.isdigit() and int(size) > MAX_UPLOAD_BYTES:
        raise TooLarge(f"a model package upload is at most {MAX_UPLOAD_BYTES // 2**20} MiB")
    chunks: list[bytes] = []
    total = 0
    async for chunk in request.stream():
        total += len(chunk)
        if total > MAX_UPLOAD_BYTES:
            raise TooLarge(f"a model package upload is at most {MAX_UPLOAD_BYTES // 2**20} MiB")
        chunks.append(chunk)
    if not total:
        raise Invalid("send the model package (.zip or .tar.gz) as the request body")
    return b"".join(chunks)


def _flag(value: str | None) -> bool:
    if value in (None, "", "false", "0"):
        return False
    if value in ("true", "1"):
        return True
    raise Invalid(f"activate must be true or false, not {value!r}")


def _json(doc: Any, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    return Response(orjson.dumps(doc), status_code=status, media_type=_JSON, headers=headers)
