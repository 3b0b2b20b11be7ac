"""``create_app(settings)``: the one place that wires medcloud together."""

from __future__ import annotations

import contextlib
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from medcloud import __version__
from medcloud.config import Settings
from medcloud.fhir import http as fhir_http
from medcloud.fhir.context import FhirContext
from medcloud.fhir.indexing import Indexer
from medcloud.fhir.operations import load_all
from medcloud.fhir.paging import CursorCodec
from medcloud.imaging import Archive, dicomweb
from medcloud.jobs import JobQueue, Worker
from medcloud.security.audit import AuditTrail
from medcloud.security.guard import AllowAll, Guard
from medcloud.storage.migrate import upgrade
from medcloud.storage.sql.database import Database


@dataclass
class Services:
    settings: Settings
    db: Database
    fhir: FhirContext
    audit: AuditTrail
    imaging: Archive | None = None

    def job_worker(self) -> Worker:
        """A worker for the background jobs (Bulk $export); the app runs one, ``medcloud worker`` another."""
        from medcloud.fhir.operations import export

        worker = Worker(JobQueue(self.db, clock=self.fhir.clock), {export.KIND: export.job_handler(self.fhir)})
        worker.idle_hooks.append(_every(60.0, lambda: export.purge_expired(self.fhir)))
        # Planner statistics: search plans go badly wrong without them after bulk loads.
        worker.idle_hooks.append(_every(10.0, _analyze_when_grown(self.db)))
        if self.imaging is not None:
            worker.idle_hooks.append(_every(1.0, self.imaging.mark_stable))
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
    ctx = FhirContext(
        settings=settings,
        db=db,
        indexer=Indexer(),
        guard=Guard(AllowAll(), audit),
        cursors=cursors,
    )
    imaging = dicomweb.build_archive(settings, db, ctx)
    return Services(settings, db, ctx, audit, imaging)


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
        routes=[Route("/", root), Route("/healthz", health), *fhir_routes, *dicomweb.routes(svc)],
        lifespan=lifespan,
    )
    app.state.services = svc
    return app


def _analyze_when_grown(db: Database) -> Callable[[], None]:
    """Re-analyze once the store has grown by a fifth (and 1,000 resources) since the last time."""
    from sqlalchemy import func, select

    from medcloud.storage.schema import resources

    seen = [-1]

    def check() -> None:
        with db.read() as conn:
            top = conn.execute(select(func.coalesce(func.max(resources.c.rid), 0))).scalar_one()
        if seen[0] < 0 or top > seen[0] * 1.2 + 1000:
            db.analyze()
            seen[0] = top

    return check


def _every(seconds: float, fn: Callable[[], object]) -> Callable[[], None]:
    last = [0.0]

    def hook() -> None:
        now = time.monotonic()
        if now - last[0] >= seconds:
            last[0] = now
            fn()

    return hook


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
    threading.Thread(target=warm, name="medcloud-warm", daemon=True).start()
    return create_app(settings)
