"""Shared write path: validate, stamp server meta, extract index rows, write, answer."""

from __future__ import annotations

from typing import Any

from sqlalchemy import Connection

from medcloud.errors import Invalid
from medcloud.fhir.context import FhirContext
from medcloud.fhir.exchange import FhirRequest, FhirResponse
from medcloud.fhir.resource_meta import etag, http_date, location, stamp
from medcloud.fhir.validation import check_resource
from medcloud.storage.resources import NewVersion, Stored


def body_resource(req: FhirRequest, rtype: str) -> dict[str, Any]:
    body = req.body
    if not isinstance(body, dict):
        raise Invalid("the request body must be a FHIR resource (a JSON object)")
    if body.get("resourceType") != rtype:
        raise Invalid(
            f"resourceType {body.get('resourceType')!r} does not match the URL's type {rtype!r}",
            expression="resourceType",
        )
    return body


def new_version(
    ctx: FhirContext, resource: dict[str, Any], rid_id: str, version: int, method: str, now: int
) -> NewVersion:
    rtype = resource["resourceType"]
    check_resource(resource, expected_type=rtype)
    content = stamp(resource, rid_id, version, now)
    return NewVersion(rtype, rid_id, version, now, method, content, ctx.indexer.extract(resource))


def deletion(rtype: str, rid_id: str, version: int, now: int) -> NewVersion:
    return NewVersion(rtype, rid_id, version, now, "DELETE", None, None)


def write_one(ctx: FhirContext, conn: Connection, v: NewVersion) -> Stored:
    (rid,) = ctx.store.write(conn, [v])
    return Stored(rid, v.type, v.id, v.version, v.last_updated, v.content is None, v.content, v.method)


def written(req: FhirRequest, s: Stored, status: int) -> FhirResponse:
    """The response to a create/update: Location, ETag, Last-Modified and the stored body."""
    loc = location(req.base_url, s)
    resp = FhirResponse(status=status, raw=s.content, location=loc, etag=etag(s.version),
                        last_modified=http_date(s.last_updated))
    resp.headers["Location"] = loc
    resp.headers["ETag"] = resp.etag or ""
    resp.headers["Last-Modified"] = resp.last_modified or ""
    return resp
