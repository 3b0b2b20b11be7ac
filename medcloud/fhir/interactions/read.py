"""read and vread (http.html#read, #vread), with conditional read (If-None-Match, If-Modified-Since)."""

from __future__ import annotations

from sqlalchemy import Connection

from medcloud.errors import Gone, NotFound
from medcloud.fhir.context import FhirContext
from medcloud.fhir.exchange import FhirRequest, FhirResponse
from medcloud.fhir.resource_meta import etag, http_date, parse_etag, parse_http_date
from medcloud.storage.resources import Stored


def read(ctx: FhirContext, conn: Connection | None, req: FhirRequest, rtype: str, rid_id: str) -> FhirResponse:
    """Read by id; with ``conn`` None (a lone request) it runs as one statement outside a transaction."""
    s = ctx.store.read(conn, rtype, rid_id) if conn is not None else ctx.store.read_now(ctx.db, rtype, rid_id)
    if s is None:
        raise NotFound(f"{rtype}/{rid_id} is not known")
    ctx.guard.check_read(req.principal, s)
    if s.deleted:
        raise Gone(f"{rtype}/{rid_id} was deleted (version {s.version})")
    return _stored_response(req, s)


def vread(
    ctx: FhirContext, conn: Connection, req: FhirRequest, rtype: str, rid_id: str, version: str
) -> FhirResponse:
    if not version.isdigit():
        raise NotFound(f"{rtype}/{rid_id} has no version {version!r}")
    s = ctx.store.vread(conn, rtype, rid_id, int(version))
    if s is None:
        raise NotFound(f"{rtype}/{rid_id} has no version {version}")
    ctx.guard.check_read(req.principal, s)
    if s.deleted:
        raise Gone(f"version {version} of {rtype}/{rid_id} is a deletion")
    return _stored_response(req, s)


def _stored_response(req: FhirRequest, s: Stored) -> FhirResponse:
    tag = etag(s.version)
    lm = http_date(s.last_updated)
    headers = {"ETag": tag, "Last-Modified": lm}
    inm = req.header("if-none-match")
    if inm is not None and any(parse_etag(t) == s.version for t in inm.split(",")):
        return FhirResponse(status=304, headers=headers)
    ims = req.header("if-modified-since")
    if inm is None and ims is not None:
        since = parse_http_date(ims)
        # HTTP dates have second precision: not modified if the last update falls in that second or before.
        if since is not None and s.last_updated // 1_000_000 <= since // 1_000_000:
            return FhirResponse(status=304, headers=headers)
    return FhirResponse(status=200, raw=s.content, headers=headers, etag=tag, last_modified=lm)
