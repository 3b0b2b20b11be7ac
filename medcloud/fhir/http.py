"""The FHIR REST edge: HTTP in, ``FhirRequest`` to the router, ``FhirResponse`` back out.

Everything FHIR-specific about HTTP lives here: content negotiation (Accept, ``_format``),
body size and JSON parsing limits, ``application/x-www-form-urlencoded`` searches, and turning
errors into OperationOutcomes. The domain never sees Starlette.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import parse_qsl

import orjson
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import FileResponse, Response, StreamingResponse
from starlette.routing import Route

from medcloud.errors import (
    Invalid,
    MedcloudError,
    NotAcceptable,
    TooLarge,
    Unauthorized,
    UnsupportedMedia,
)
from medcloud.fhir import router
from medcloud.fhir.context import FhirContext
from medcloud.fhir.exchange import FhirRequest, FhirResponse, error_response
from medcloud.security.http import PUBLIC_FHIR, EdgeAuth, unauthorized_response

FHIR_JSON = "application/fhir+json"
JSON_TYPES = ("application/fhir+json", "application/json", "text/json", "application/json-patch+json")
FORMAT_ALIASES = {"json": FHIR_JSON, "application/json": "application/json", "application/fhir+json": FHIR_JSON,
                  "text/json": "application/json"}
XML_FORMATS = ("xml", "text/xml", "application/xml", "application/fhir+xml")
NDJSON_TYPES = ("application/fhir+ndjson", "application/ndjson", "ndjson")
# SQL-on-FHIR: output formats are the operation's
OWN_FORMAT_OPERATIONS = ("$run", "$viewdefinition-run", "$viewdefinition-export", "$viewdefinition-export-file")


def routes(ctx: FhirContext, prefix: str = "/fhir") -> list[Route]:
    auth = EdgeAuth.of(ctx)

    async def endpoint(request: Request) -> Response:
        return await _serve(ctx, request, prefix, auth)

    methods = ["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE"]
    return [
        Route(prefix, endpoint, methods=methods),
        Route(prefix + "/{path:path}", endpoint, methods=methods),
    ]


async def _serve(ctx: FhirContext, request: Request, prefix: str, auth: EdgeAuth) -> Response:
    path = request.path_params.get("path", "").strip("/")
    try:  # before the body is read: an anonymous client cannot make us read a large upload
        public = path in PUBLIC_FHIR and request.method in ("GET", "HEAD")
        principal = auth.public(request) if public else await auth.principal(request)
    except Unauthorized as e:
        return unauthorized_response(e)
    query = list(parse_qsl(request.url.query, keep_blank_values=True))
    pretty = any(k == "_pretty" and v == "true" for k, v in query)
    # ViewDefinition/$run answers csv, ndjson, parquet...: it reads _format and Accept itself.
    own_format = path.rsplit("/", 1)[-1] in OWN_FORMAT_OPERATIONS
    try:
        media = FHIR_JSON if own_format else _negotiate(request, query)
        body, content_type, form = await _read_body(ctx, request)
        if form:
            query.extend(form)
        req = FhirRequest(
            method=request.method,
            path=path,
            query=[(k, v) for k, v in query if k != "_pretty" and (k != "_format" or own_format)],
            headers={k.lower(): v for k, v in request.headers.items()},
            body=body,
            content_type=content_type,
            base_url=_base_url(ctx, request, prefix),
            principal=principal,
        )
    except MedcloudError as e:
        return _render(error_response(e), FHIR_JSON, pretty, head=False)
    if router.is_single_read(req) and ctx.db.is_sqlite:
        # A read by id on the embedded database takes tens of microseconds: handing it to the
        # thread pool costs more than running it here (measured: BENCHMARKS.md).
        resp = router.handle(ctx, req)
    else:
        resp = await run_in_threadpool(router.handle, ctx, req)
    return _render(resp, media, pretty, head=request.method == "HEAD")


def _negotiate(request: Request, query: list[tuple[str, str]]) -> str:
    fmt = next((v for k, v in query if k == "_format"), None)
    if fmt is not None:
        f = fmt.split(";")[0].strip().lower()
        if f in FORMAT_ALIASES:
            return FORMAT_ALIASES[f]
        if f in XML_FORMATS:
            raise NotAcceptable("this server speaks FHIR JSON only; XML is not supported")
        raise NotAcceptable(f"unsupported _format {fmt!r}")
    accept = request.headers.get("accept", "")
    if not accept:
        return FHIR_JSON
    wanted = [a.split(";")[0].strip().lower() for a in accept.split(",")]
    for w in wanted:
        if w in NDJSON_TYPES:  # Bulk Data file downloads; errors are still answered in FHIR JSON
            return FHIR_JSON
        if w in ("application/fhir+json", "*/*", "application/*", "") or w.startswith("application/fhir+json"):
            return FHIR_JSON
        if w in ("application/json", "text/json", "text/*", "text/html", "text/plain"):
            return "application/json"
    raise NotAcceptable(f"cannot produce {accept!r}; this server answers application/fhir+json")


async def _read_body(ctx: FhirContext, request: Request) -> tuple[Any, str | None, list[tuple[str, str]]]:
    if request.method not in ("POST", "PUT", "PATCH"):
        return None, None, []
    limit = ctx.settings.max_body_bytes
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > limit:
        raise TooLarge(f"request body of {declared} bytes exceeds the limit of {limit} bytes")
    chunks = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise TooLarge(f"request body exceeds the limit of {limit} bytes")
        chunks.append(chunk)
    raw = b"".join(chunks)
    ctype = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if ctype == "application/x-www-form-urlencoded":
        return None, ctype, list(parse_qsl(raw.decode("utf-8", "replace"), keep_blank_values=True))
    if not raw:
        if request.method == "POST" and request.url.path.endswith("/_search"):
            return None, ctype or None, []
        if request.url.path.rstrip("/").split("/")[-1].startswith("$"):
            return None, ctype or None, []
        raise Invalid("the request has no body")
    if ctype and ctype not in JSON_TYPES:
        if ctype in ("application/fhir+xml", "application/xml", "text/xml"):
            raise UnsupportedMedia("this server accepts FHIR JSON only; XML is not supported")
        raise UnsupportedMedia(f"unsupported Content-Type {ctype!r}; send application/fhir+json")
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError as e:
        raise Invalid(f"the body is not valid JSON: {e}") from e
    return body, ctype or FHIR_JSON, []


def _base_url(ctx: FhirContext, request: Request, prefix: str) -> str:
    if ctx.settings.base_url:
        return ctx.settings.base_url.rstrip("/")
    return f"{request.url.scheme}://{request.url.netloc}{prefix}"


def _render(resp: FhirResponse, media: str, pretty: bool, *, head: bool) -> Response:
    headers = dict(resp.headers)
    if resp.file is not None:  # streamed from disk in chunks; FileResponse answers HEAD without a body
        return FileResponse(resp.file, status_code=resp.status, headers=headers, media_type=resp.media_type)
    if resp.stream is not None:  # decrypted as it is sent (security/at_rest.py)
        if head:
            return Response(status_code=resp.status, headers=headers, media_type=resp.media_type)
        return StreamingResponse(resp.stream, status_code=resp.status, headers=headers, media_type=resp.media_type)
    if resp.media_type is not None:
        media = resp.media_type
    if resp.raw is not None:
        body = resp.raw if not pretty else orjson.dumps(orjson.loads(resp.raw), option=orjson.OPT_INDENT_2)
    elif resp.resource is not None:
        body = orjson.dumps(resp.resource, option=orjson.OPT_INDENT_2 if pretty else 0)
    else:
        body = b""
    if body:
        headers["Content-Type"] = f"{media}; charset=utf-8"
    if head:
        headers["Content-Length"] = str(len(body))
        return Response(status_code=resp.status, headers=headers)
    return Response(content=body, status_code=resp.status, headers=headers)
