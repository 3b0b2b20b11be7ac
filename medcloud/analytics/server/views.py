"""The ViewDefinition resource on the FHIR server: create, read, vread, update, delete, history, search.

ViewDefinition is a SQL-on-FHIR logical model, not an R4 core resource type, so the R4 schema
validator and search index know nothing of it. It is stored like every resource (versioned rows in
``resources``/``resource_history``, shared by every replica through the database) but routed here,
like AuditEvent: writes are validated by the analytics parser (``viewdef.parse_view``: a bad view is
refused with 422 and the located error, e.g. ``select[0].column[1].path``), and search filters the
current ViewDefinitions in Python on ``name``, ``url``, ``status``, ``resource`` and ``_id`` —
a server holds tens to hundreds of views, never millions.
Operations: ``ViewDefinition/$run`` and ``ViewDefinition/[id]/$run`` (``run.py``).
Spec: https://sql-on-fhir.org/ig/StructureDefinition-ViewDefinition.html, operations-capability.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import orjson
from sqlalchemy import Connection, select

from medcloud.errors import Invalid, MethodNotAllowed, NotFound, PreconditionFailed, Unprocessable
from medcloud.fhir.bundles import bundle, full_url, resource_fragment
from medcloud.fhir.context import FhirContext
from medcloud.fhir.exchange import FhirRequest, FhirResponse
from medcloud.fhir.interactions import delete, history, read
from medcloud.fhir.interactions._write import body_resource, write_one, written
from medcloud.fhir.operations import Target
from medcloud.fhir.resource_meta import check_id, parse_etag, stamp
from medcloud.storage.resources import NewVersion, Stored, current_join
from medcloud.storage.schema import resource_history, resources

if TYPE_CHECKING:
    from medcloud.fhir.router import Route

VIEW_DEFINITION = "ViewDefinition"
SEARCH_PARAMS = ("_id", "name", "url", "status", "resource")
_IGNORED = frozenset({"_format", "_pretty", "_count"})


def resolve(req: FhirRequest, method: str, parts: list[str]) -> Route:
    """The route of a request under ``ViewDefinition`` (``parts[0]``)."""
    from medcloud.fhir.router import Route, _operation

    rt = VIEW_DEFINITION
    n = len(parts)
    if n == 1 or (n == 2 and parts[1] == "_search"):
        if method == "GET" or (n == 2 and method == "POST"):
            return Route("search-type", rt, None, False, search)
        if method == "POST" and n == 1:
            return Route("create", rt, None, True, create)
        raise MethodNotAllowed(f"{method} is not allowed on ViewDefinition (conditional writes are not supported)")
    second = parts[1]
    if second.startswith("$"):
        if n != 2:
            raise NotFound(f"unknown path {req.path!r}")
        return _operation(req, method, second[1:], Target(rt))
    rid_id = second
    if n == 2:
        if method == "GET":
            return Route("read", rt, rid_id, False, lambda c, conn, r: read.read(c, conn, r, rt, rid_id))
        if method == "PUT":
            return Route("update", rt, rid_id, True, lambda c, conn, r: update(c, conn, r, rid_id))
        if method == "DELETE":
            return Route("delete", rt, rid_id, True, lambda c, conn, r: delete.delete(c, conn, r, rt, rid_id))
        raise MethodNotAllowed(f"{method} is not allowed on ViewDefinition/{rid_id} (PATCH is not supported)")
    third = parts[2]
    if n == 3 and third.startswith("$"):
        return _operation(req, method, third[1:], Target(rt, rid_id))
    if third == "_history" and method == "GET" and n in (3, 4):
        if n == 3:
            return Route("history-instance", rt, rid_id, False,
                         lambda c, conn, r: history.history(c, conn, r, rt, rid_id))
        vid = parts[3]
        return Route("vread", rt, rid_id, False, lambda c, conn, r: read.vread(c, conn, r, rt, rid_id, vid))
    raise NotFound(f"unknown path {req.path!r}")


def validate(resource: dict[str, Any], prefix: str = "") -> None:
    """Refuse a ViewDefinition the engine could not run: 422 with the location of the first error."""
    from medcloud.analytics.errors import FhirPathSyntaxError, ViewDefinitionError
    from medcloud.analytics.viewdef import parse_view

    try:
        parse_view(resource)
    except ViewDefinitionError as e:
        where = f"{prefix}{e.location}" if e.location else (prefix.rstrip(".") or None)
        raise Unprocessable(f"invalid ViewDefinition: {e.message}", expression=where) from e
    except FhirPathSyntaxError as e:
        raise Unprocessable(f"invalid ViewDefinition: {e.message}", expression=prefix.rstrip(".") or None) from e


def create(ctx: FhirContext, conn: Connection, req: FhirRequest) -> FhirResponse:
    resource = body_resource(req, VIEW_DEFINITION)
    validate(resource)
    ctx.guard.check_write(req.principal, VIEW_DEFINITION, resource)
    resource.pop("id", None)  # create ignores a client id (http.html#create)
    now = ctx.clock()
    rid_id = ctx.new_id()
    return written(req, write_one(ctx, conn, _version(resource, rid_id, 1, "POST", now)), 201)


def update(ctx: FhirContext, conn: Connection, req: FhirRequest, rid_id: str) -> FhirResponse:
    resource = body_resource(req, VIEW_DEFINITION)
    if resource.get("id") != rid_id:
        raise Invalid(f"body id {resource.get('id')!r} does not match the URL id {rid_id!r}",
                      expression="ViewDefinition.id")
    check_id(rid_id)
    validate(resource)
    ctx.db.dialect.lock_key(conn, f"res:{VIEW_DEFINITION}/{rid_id}")
    current = ctx.store.read(conn, VIEW_DEFINITION, rid_id, lock=True)
    if_match = req.header("if-match")
    if if_match is not None and (current is None or current.deleted or parse_etag(if_match) != current.version):
        raise PreconditionFailed(f"If-Match {if_match} does not match the current version")
    if current is not None:
        ctx.guard.check_read(req.principal, current)
    ctx.guard.check_write(req.principal, VIEW_DEFINITION, resource)
    version = 1 if current is None else current.version + 1
    status = 201 if current is None or current.deleted else 200
    return written(req, write_one(ctx, conn, _version(resource, rid_id, version, "PUT", ctx.clock())), status)


def _version(resource: dict[str, Any], rid_id: str, version: int, method: str, now: int) -> NewVersion:
    # No search-index rows: ViewDefinition has no R4 SearchParameters; search() filters in Python.
    return NewVersion(VIEW_DEFINITION, rid_id, version, now, method, stamp(resource, rid_id, version, now), None)


def current(conn: Connection) -> list[Stored]:
    """Every current (not deleted) ViewDefinition, oldest first."""
    stmt = (select(resources.c.rid, resources.c.type, resources.c.id, resources.c.version, resources.c.last_updated,
                   resources.c.deleted, resource_history.c.content)
            .select_from(current_join())
            .where(resources.c.type == VIEW_DEFINITION, resources.c.deleted.is_(False))
            .order_by(resources.c.rid))
    return [Stored(*r) for r in conn.execute(stmt)]


def find(conn: Connection, criteria: list[tuple[str, str]]) -> list[tuple[Stored, dict[str, Any]]]:
    """Current ViewDefinitions matching every criterion (a comma in a value is an OR)."""
    out = []
    for s in current(conn):
        assert s.content is not None
        view = orjson.loads(s.content)
        if all(_matches(view, name, value) for name, value in criteria):
            out.append((s, view))
    return out


def _matches(view: dict[str, Any], name: str, value: str) -> bool:
    base, _, modifier = name.partition(":")
    field = {"_id": "id"}.get(base, base)
    have = view.get(field)
    if not isinstance(have, str):
        return False
    for alt in value.split(","):
        if base == "name" and modifier != "exact":  # string search: case-insensitive prefix
            if have.lower().startswith(alt.lower()):
                return True
        elif base == "url" and "|" in alt:  # canonical|version
            url, _, version = alt.partition("|")
            if have == url and view.get("version") == version:
                return True
        elif have == alt:
            return True
    return False


def search(ctx: FhirContext, conn: Connection, req: FhirRequest) -> FhirResponse:
    criteria: list[tuple[str, str]] = []
    for name, value in req.query:
        if name in _IGNORED:
            continue
        if name.partition(":")[0] not in SEARCH_PARAMS or (":" in name and name != "name:exact"):
            raise Invalid(f"unknown search parameter {name!r} for ViewDefinition (supported: "
                          f"{', '.join(SEARCH_PARAMS)})", expression=name)
        criteria.append((name, value))
    matches = [(s, v) for s, v in find(conn, criteria) if ctx.guard.can_read(req.principal, s)]
    entries = [{"fullUrl": full_url(req.base_url, s), "resource": resource_fragment(s), "search": {"mode": "match"}}
               for s, _ in matches]
    return FhirResponse(resource=bundle("searchset", entries, total=len(entries), timestamp_us=ctx.clock(),
                                        links=[("self", f"{req.base_url}/{req.path}")]))


def resolve_reference(ctx: FhirContext, conn: Connection, req: FhirRequest, ref: str) -> dict[str, Any]:
    """A ``viewReference``: ``ViewDefinition/[id]``, ``[base]/ViewDefinition/[id]``, or a canonical ``url[|version]``.

    Raises NotFound (404) when nothing on this server matches or the caller may not read it.
    """
    ref = ref.strip()
    local = ref[len(req.base_url) + 1:] if ref.startswith(req.base_url + "/") else ref
    parts = local.split("/")
    if len(parts) == 2 and parts[0] == VIEW_DEFINITION:
        s = ctx.store.read(conn, VIEW_DEFINITION, parts[1])
        if s is None or s.deleted or s.content is None or not ctx.guard.can_read(req.principal, s):
            raise NotFound(f"ViewDefinition with id {parts[1]!r} not found", expression="viewReference")
        return dict(orjson.loads(s.content))
    found = [v for s, v in find(conn, [("url", ref)]) if ctx.guard.can_read(req.principal, s)]
    if not found:
        raise NotFound(f"no ViewDefinition with url {ref!r} on this server", expression="viewReference")
    if len(found) > 1:
        raise Invalid(f"{len(found)} ViewDefinitions have url {ref!r}; add |version or use ViewDefinition/[id]",
                      expression="viewReference")
    return found[0]
