"""CDS Hooks edge at ``/cds-services``: discovery (public: it lists services and prefetch templates,
no patient data), invocation and feedback (CDS client JWT, ``auth.py``). Every error is a JSON
answer with its status (400 malformed request or wrong hook, 401 bad JWT, 403 client not allowed,
404 unknown service, 412 prefetch not obtainable); nothing escapes as a 500.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

import orjson
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from medcloud.ai.registry import Registry
from medcloud.cds import sources
from medcloud.cds.auth import CdsCaller, ClientVerifier
from medcloud.cds.engine import CdsEngine, builtin_services
from medcloud.errors import Invalid, MedcloudError, TooLarge, Unauthorized
from medcloud.fhir.exchange import STATUS_BY_CATEGORY
from medcloud.security.startup import is_loopback

if TYPE_CHECKING:
    from medcloud.app import Services

log = logging.getLogger("medcloud.cds")
MAX_BODY = 16 * 1024 * 1024


def build_engine(svc: Services) -> tuple[CdsEngine, ClientVerifier]:
    registry = Registry(svc.db)
    cache: dict[tuple[str, str], Any] = {}

    def load(name: str, version: str | None) -> tuple[Any, str]:
        v = version or registry.get(name).version
        if (name, v) not in cache:
            cache[(name, v)] = registry.load(name, v)
        return cache[(name, v)], v

    ctx = svc.fhir
    local = {ctx.settings.fhir_audience, ctx.settings.public_base + "/fhir"}
    engine = CdsEngine(svc.settings, svc.db, builtin_services(svc.settings, load),
                       source=lambda req, base: sources.source_for(ctx, req, local | ({base} if base else set()),
                                                                   None),
                       writer=sources.writer(ctx, ctx.settings.fhir_audience))
    return engine, ClientVerifier(svc.settings, svc.db)


def routes(svc: Services) -> list[Route]:
    engine, verifier = build_engine(svc)
    open_access = not svc.settings.auth and is_loopback(svc.settings.host) and not svc.settings.cds_clients

    async def caller(request: Request, service_id: str | None) -> CdsCaller | None:
        if open_access:
            return None  # --no-auth on loopback with no CDS clients configured: local experiments only
        return await run_in_threadpool(verifier.verify, request.headers.get("authorization"), service_id)

    async def discovery(request: Request) -> Response:
        return _json(engine.discovery())

    async def invoke(request: Request) -> Response:
        service_id = request.path_params["id"]
        try:
            await caller(request, service_id)
            engine.service(service_id)
            body = await _body(request)
            base = str(request.base_url).rstrip("/") + "/fhir"  # this server, as the caller reached it
            result = await run_in_threadpool(engine.invoke, service_id, body, base)
            return _json(result.response)
        except MedcloudError as e:
            return _error(e)
        except Exception:
            log.exception("CDS service %s failed", service_id)
            return _error(MedcloudError("the service failed; see the server log"))

    async def feedback(request: Request) -> Response:
        service_id = request.path_params["id"]
        try:
            who = await caller(request, service_id)
            body = await _body(request)
            n = await run_in_threadpool(engine.feedback, service_id, body, who)
            return _json({"stored": n})
        except MedcloudError as e:
            return _error(e)
        except Exception:
            log.exception("CDS feedback for %s failed", service_id)
            return _error(MedcloudError("feedback could not be stored; see the server log"))

    return [Route("/cds-services", discovery, methods=["GET"]),
            Route("/cds-services/{id}", invoke, methods=["POST"]),
            Route("/cds-services/{id}/feedback", feedback, methods=["POST"])]


async def _body(request: Request) -> Any:
    raw = await request.body()
    if len(raw) > MAX_BODY:
        raise TooLarge(f"request body larger than {MAX_BODY} bytes")
    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError as e:
        raise Invalid(f"the request body is not JSON: {e}") from e


def _json(doc: Any, status: int = 200) -> Response:
    return Response(orjson.dumps(doc), status_code=status, media_type="application/json")


def _error(e: MedcloudError) -> Response:
    status = STATUS_BY_CATEGORY.get(e.category, 500)
    message = e.issues[0].diagnostics if e.issues else str(e)
    headers = {"WWW-Authenticate": 'Bearer realm="medcloud-cds"'} if isinstance(e, Unauthorized) else None
    return Response(orjson.dumps({"error": e.category, "message": message}), status_code=status,
                    media_type="application/json", headers=headers)
