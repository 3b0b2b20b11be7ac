"""``create_app(settings)``: the one place that wires medcloud together."""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from medcloud import __version__
from medcloud.ai import http as ai_http
from medcloud.cds import http as cds_http
from medcloud.config import Settings
from medcloud.fhir import http as fhir_http
from medcloud.fhir.context import FhirContext
from medcloud.fhir.indexing import Indexer
from medcloud.fhir.operations import load_all
from medcloud.fhir.paging import CursorCodec
from medcloud.imaging import Archive, dicomweb
from medcloud.jobs import JobQueue, Worker
from medcloud.security.at_rest import AtRest
from medcloud.security.audit import AuditTrail
from medcloud.security.guard import Guard
from medcloud.security.oauth import routes as oauth_routes
from medcloud.security.policy import SmartPolicy
from medcloud.storage.migrate import upgrade
from medcloud.storage.sql.database import Database

if TYPE_CHECKING:
    from medcloud.ai.reads import Reads


@dataclass
class Services:
    settings: Settings
    db: Database
    fhir: FhirContext
    audit: AuditTrail
    imaging: Archive | None = None
    ai_reads: Reads | None = None  # automatic reads of stable studies (ai/reads.py)

    def job_worker(self) -> Worker:
        """A worker for the background jobs (Bulk $export); the app runs one, ``medcloud worker`` another."""
        from medcloud.fhir.operations import export

        worker = Worker(JobQueue(self.db, clock=self.fhir.clock), {export.KIND: export.job_handler(self.fhir)})
        worker.idle_hooks.append(_every(60.0, lambda: export.purge_expired(self.fhir)))
        from medcloud.analytics.server import export_job as view_export

        worker.handlers[view_export.KIND] = view_export.job_handler(self.fhir)  # $viewdefinition-export
        worker.idle_hooks.append(_every(60.0, lambda: view_export.purge_expired(self.fhir)))
        # Planner statistics: search plans go badly wrong without them after bulk loads.
        worker.idle_hooks.append(_every(10.0, _analyze_when_grown(self.db)))
        if self.imaging is not None:
            worker.idle_hooks.append(_every(1.0, self.imaging.mark_stable))
            # Staged DICOM files a killed process never published: swept at start and every 6 h, in
            # its own thread (a walk of a large archive must not hold up the jobs).
            blobs = self.imaging.blobs
            worker.idle_hooks.append(_every(6 * 3600.0, _in_background(
                "imaging-sweep", lambda: _log_sweep(blobs.sweep_staged(older_than=3600.0)))))
        if self.ai_reads is not None:
            from medcloud.ai.reads import KIND as AI_READ

            worker.handlers[AI_READ] = self.ai_reads.handle
            self.ai_reads.wakers.append(worker.wake)
        return worker

    def close(self) -> None:
        self.audit.close()
        self.db.dispose()


def build_services(settings: Settings, *, migrate: bool = True) -> Services:
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    db = Database.connect(settings.db_url, pool_size=settings.db_pool_size)
    if migrate:
        upgrade(db)
    load_all()
    audit = AuditTrail(db)
    cursors = CursorCodec(db, settings.cursor_ttl)
    cursors.signing_key()  # created/loaded outside any request transaction (SQLite: one writer)
    at_rest = AtRest.open(settings, db)  # a missing or wrong master key stops the start here
    if settings.ai_default_models:
        _default_models(db)
    indexer = Indexer()
    ctx = FhirContext(
        settings=settings,
        db=db,
        indexer=indexer,
        guard=Guard(SmartPolicy(indexer=indexer, reference_compartments=_reference_compartments(db)), audit),
        cursors=cursors,
        at_rest=at_rest,
    )
    imaging = dicomweb.build_archive(settings, db, ctx)
    return Services(settings, db, ctx, audit, imaging, _ai_reads(settings, imaging, ctx))


# Default deny: every route needs credentials except these, each public for a stated reason.
# tests/security/oauth/test_route_walk.py walks the app's route table and checks both ways.
PUBLIC_ROUTES: dict[str, str] = {
    "/": "service banner (name, version, FHIR base)",
    "/healthz": "load balancer health check; no data",
    "/.well-known/smart-configuration": "SMART discovery happens before authorization",
    "/fhir/.well-known/smart-configuration": "SMART discovery happens before authorization",
    "/auth/jwks": "public keys that verify medcloud's tokens",
    "/auth/authorize": "the login + consent page itself",
    "/cds-services": "CDS Hooks discovery: service list and prefetch templates, no patient data",
}


def create_app(settings: Settings, services: Services | None = None) -> Starlette:
    svc = services or build_services(settings)

    async def root(request: Request) -> JSONResponse:
        return JSONResponse({"name": "medcloud", "version": __version__, "fhir": str(request.url_for("fhir_base"))})

    async def health(request: Request) -> JSONResponse:
        return JSONResponse({"status": "ok"})

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        from medcloud.fhir.operations import export

        worker = svc.job_worker()
        worker.start()
        export.add_waker(worker.wake)
        try:
            yield
        finally:
            export.remove_waker(worker.wake)
            worker.stop()
            if services is None:
                svc.close()

    fhir_routes = fhir_http.routes(svc.fhir)
    fhir_routes[0].name = "fhir_base"
    app = Starlette(
        # OAuth routes first: /fhir/.well-known/smart-configuration must not reach the FHIR catch-all.
        routes=[Route("/", root), Route("/healthz", health), *oauth_routes(svc.fhir), *fhir_routes,
                *dicomweb.routes(svc), *ai_http.routes(svc), *cds_http.routes(svc)],
        lifespan=lifespan,
    )
    app.state.services = svc
    return app


def _default_models(db: Database) -> None:
    """The image models shipped with medcloud, registered + active unless their name is taken."""
    from medcloud.ai.defaults import ensure_default_models
    from medcloud.ai.registry import Registry

    ensure_default_models(Registry(db))


def _ai_reads(settings: Settings, imaging: Archive, ctx: FhirContext) -> Reads | None:
    """Automatic reads: subscribed to the archive's study-stable event; the job worker runs them."""
    if not settings.ai_auto_read:
        return None
    from medcloud.ai.reads import Reads
    from medcloud.ai.registry import Registry
    from medcloud.ai.runtime import Runtime

    registry = Registry(ctx.db)
    reads = Reads(imaging, ctx, registry, Runtime(registry, threads=settings.ai_threads),
                  JobQueue(ctx.db, clock=ctx.clock), batch=settings.ai_batch)
    imaging.on_stable.append(reads.on_stable)
    return reads


def _reference_compartments(db: Database) -> Callable[[str, str], list[str]]:
    """The Patient compartments of the current version of ``Type/id`` (a Binary's securityContext)."""
    from sqlalchemy import select

    from medcloud.storage.schema import compartments, resources

    def lookup(rtype: str, rid: str) -> list[str]:
        stmt = (select(compartments.c.comp_id)
                .join(resources, resources.c.rid == compartments.c.rid)
                .where(resources.c.type == rtype, resources.c.id == rid, resources.c.deleted.is_(False),
                       compartments.c.comp_type == "Patient"))
        with db.read() as conn:
            return list(conn.scalars(stmt))

    return lookup


def _analyze_when_grown(db: Database) -> Callable[[], None]:
    """Re-analyze once the store has grown by a fifth (and 1,000 resources) since the last time;
    once growth has stopped (no new resource for a check interval), vacuum as well (see
    ``Database.analyze``: index-only scans on PostgreSQL)."""
    from sqlalchemy import func, select

    from medcloud.storage.schema import resources

    seen = [-1]
    previous = [-1]  # the top rid at the previous check
    settled = [True]  # vacuumed since the last growth (nothing to do at start-up)

    def check() -> None:
        with db.read() as conn:
            top = conn.execute(select(func.coalesce(func.max(resources.c.rid), 0))).scalar_one()
        if seen[0] < 0 or top > seen[0] * 1.2 + 1000:
            settled[0] = seen[0] < 0
            db.analyze()
            seen[0] = top
        elif not settled[0] and top == previous[0]:
            db.analyze(vacuum=True)
            settled[0] = True
        previous[0] = top

    return check


def _every(seconds: float, fn: Callable[[], object]) -> Callable[[], None]:
    """A hook that calls ``fn`` at its first call and then at most every ``seconds``."""
    last: list[float | None] = [None]

    def hook() -> None:
        now = time.monotonic()
        previous = last[0]
        if previous is None or now - previous >= seconds:
            last[0] = now
            fn()

    return hook


def _in_background(name: str, fn: Callable[[], object]) -> Callable[[], None]:
    """A hook that runs ``fn`` in a daemon thread, unless the previous run is still going."""
    import threading

    running = threading.Lock()

    def run() -> None:
        try:
            fn()
        except Exception:  # noqa: BLE001 - housekeeping: log and try again next time
            logging.getLogger("medcloud").exception("%s failed", name)
        finally:
            running.release()

    def hook() -> None:
        if running.acquire(blocking=False):
            threading.Thread(target=run, name=name, daemon=True).start()

    return hook


def _log_sweep(removed: int) -> None:
    if removed:
        logging.getLogger("medcloud.imaging").warning("removed %d staged DICOM files left by an interrupted store",
                                                      removed)


SETTINGS_ENV = "MEDCLOUD__SETTINGS_JSON"


def create_app_from_env() -> Starlette:
    """uvicorn factory for ``--workers N``: each worker rebuilds the settings the CLI resolved."""
    import os
    import threading

    from medcloud.fhir.validation import warm

    raw = os.environ.get(SETTINGS_ENV)
    settings = Settings.model_validate_json(raw) if raw else Settings()
    # A served process compiles the common validators in the background, so the first big
    # Bundle does not pay seconds of schema compilation.
    threading.Thread(target=_warm_then_freeze, args=(warm,), name="medcloud-warm", daemon=True).start()
    return create_app(settings)


def _warm_then_freeze(warm: Callable[[], None]) -> None:
    """Warm up, then move everything alive to the GC's permanent generation (``gc.freeze``).

    After start-up a process holds ~140k long-lived objects (schemas, search definitions, compiled
    FHIRPath); every full collection walked them all (35-80 ms measured here), which showed up as
    read p99 spikes. Frozen, they are never scanned again; request garbage still is.
    """
    import gc

    warm()
    gc.collect()
    gc.freeze()
