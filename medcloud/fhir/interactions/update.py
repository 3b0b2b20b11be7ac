"""update, update-as-create and conditional update (http.html#update, #cond-update)."""

from __future__ import annotations

from sqlalchemy import Connection

from medcloud.errors import Invalid, MultipleMatches, PreconditionFailed
from medcloud.fhir.context import FhirContext
from medcloud.fhir.exchange import FhirRequest, FhirResponse
from medcloud.fhir.interactions._write import body_resource, new_version, write_one, written
from medcloud.fhir.resource_meta import check_id, parse_etag
from medcloud.fhir.search import matches


def update(ctx: FhirContext, conn: Connection, req: FhirRequest, rtype: str, rid_id: str) -> FhirResponse:
    resource = body_resource(req, rtype)
    if "id" not in resource:
        raise Invalid("an update must carry the resource id in the body", expression=f"{rtype}.id")
    if resource["id"] != rid_id:
        raise Invalid(f"body id {resource['id']!r} does not match the URL id {rid_id!r}", expression=f"{rtype}.id")
    check_id(rid_id)
    return _put(ctx, conn, req, rtype, rid_id, resource)


def conditional_update(ctx: FhirContext, conn: Connection, req: FhirRequest, rtype: str) -> FhirResponse:
    resource = body_resource(req, rtype)
    ctx.db.dialect.lock_key(conn, f"cupdate:{rtype}?{sorted(req.query)}")
    found = matches(ctx, conn, req.principal, rtype, req.query, limit=2)
    if len(found) > 1:
        raise MultipleMatches(f"the conditional update matches more than one {rtype}")
    if found:
        target = found[0].id
        if "id" in resource and resource["id"] != target:
            raise Invalid(f"body id {resource['id']!r} differs from the matched resource {target!r}")
        return _put(ctx, conn, req, rtype, target, resource)
    rid_id = resource.get("id")
    if rid_id is None:
        rid_id = ctx.new_id()
    check_id(rid_id)
    return _put(ctx, conn, req, rtype, rid_id, resource)


def _put(
    ctx: FhirContext, conn: Connection, req: FhirRequest, rtype: str, rid_id: str, resource: dict
) -> FhirResponse:
    current = ctx.store.read(conn, rtype, rid_id, lock=True)
    if current is None:
        # Two update-as-creates of one new id must not both insert: serialise on the id.
        ctx.db.dialect.lock_key(conn, f"res:{rtype}/{rid_id}")
        current = ctx.store.read(conn, rtype, rid_id, lock=True)
    if_match = req.header("if-match")
    if if_match is not None:
        want = parse_etag(if_match)
        if current is None or current.deleted or want != current.version:
            have = "none" if current is None else str(current.version)
            raise PreconditionFailed(f"If-Match {if_match} does not match the current version ({have})")
    if current is not None:
        ctx.guard.check_read(req.principal, current)
    ctx.guard.check_write(req.principal, rtype, resource)
    exists = current is not None and not current.deleted
    version = current.version + 1 if current is not None else 1
    v = new_version(ctx, resource, rid_id, version, "PUT", ctx.clock())
    return written(req, write_one(ctx, conn, v), 200 if exists else 201)
