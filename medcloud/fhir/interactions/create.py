"""create and conditional create (http.html#create, #ccreate)."""

from __future__ import annotations

from urllib.parse import parse_qsl

from sqlalchemy import Connection

from medcloud.errors import MultipleMatches
from medcloud.fhir.context import FhirContext
from medcloud.fhir.exchange import FhirRequest, FhirResponse
from medcloud.fhir.interactions._write import body_resource, new_version, write_one, written
from medcloud.fhir.resource_meta import etag, http_date, location
from medcloud.fhir.search import matches


def create(ctx: FhirContext, conn: Connection, req: FhirRequest, rtype: str) -> FhirResponse:
    resource = body_resource(req, rtype)
    condition = req.header("if-none-exist")
    if condition is not None:
        query = parse_qsl(condition.split("?", 1)[-1], keep_blank_values=True)
        ctx.db.dialect.lock_key(conn, f"ccreate:{rtype}?{sorted(query)}")
        found = matches(ctx, conn, req.principal, rtype, query, limit=2)
        if len(found) > 1:
            raise MultipleMatches(f"If-None-Exist {condition!r} matches more than one {rtype}")
        if found:
            s = found[0]
            loc = location(req.base_url, s)
            return FhirResponse(
                status=200, raw=s.content, location=loc, etag=etag(s.version), last_modified=http_date(s.last_updated),
                headers={"Location": loc, "ETag": etag(s.version), "Last-Modified": http_date(s.last_updated)},
            )
    ctx.guard.check_write(req.principal, rtype, resource)
    resource.pop("id", None)  # create ignores a client id (http.html#create)
    v = new_version(ctx, resource, ctx.new_id(), 1, "POST", ctx.clock())
    return written(req, write_one(ctx, conn, v), 201)
