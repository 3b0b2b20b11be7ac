"""delete and conditional delete (http.html#delete, #cdelete). Deletes are versioned."""

from __future__ import annotations

from sqlalchemy import Connection

from medcloud.errors import MultipleMatches, PreconditionFailed
from medcloud.fhir.context import FhirContext
from medcloud.fhir.exchange import FhirRequest, FhirResponse
from medcloud.fhir.interactions._write import deletion, write_one
from medcloud.fhir.resource_meta import etag, parse_etag
from medcloud.fhir.search import matches


def delete(ctx: FhirContext, conn: Connection, req: FhirRequest, rtype: str, rid_id: str) -> FhirResponse:
    current = ctx.store.read(conn, rtype, rid_id, lock=True)
    if_match = req.header("if-match")
    if if_match is not None and (current is None or current.deleted or parse_etag(if_match) != current.version):
        raise PreconditionFailed(f"If-Match {if_match} does not match the current version")
    if current is None or current.deleted:
        # Deleting what does not exist (or no longer exists) succeeds without a new version.
        return FhirResponse(status=204)
    ctx.guard.check_read(req.principal, current)
    ctx.guard.check_delete(req.principal, current)
    s = write_one(ctx, conn, deletion(rtype, rid_id, current.version + 1, ctx.clock()))
    return FhirResponse(status=204, headers={"ETag": etag(s.version)}, etag=etag(s.version))


def conditional_delete(ctx: FhirContext, conn: Connection, req: FhirRequest, rtype: str) -> FhirResponse:
    found = matches(ctx, conn, req.principal, rtype, req.query, limit=2)
    if len(found) > 1:
        raise MultipleMatches(f"the conditional delete matches more than one {rtype}")
    if not found:
        return FhirResponse(status=204)
    return delete(ctx, conn, req, rtype, found[0].id)
