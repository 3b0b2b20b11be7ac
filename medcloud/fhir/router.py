"""Route a ``FhirRequest`` to its interaction (http.html), inside the right transaction.

``handle`` is the entry point for the HTTP edge; ``dispatch`` runs on a caller-owned connection so
batch/transaction entries go through exactly the same code as single requests.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass

from sqlalchemy import Connection
from sqlalchemy.exc import IntegrityError, OperationalError

from medcloud.errors import Busy, Conflict, Invalid, MedcloudError, MethodNotAllowed, NotFound
from medcloud.fhir import search
from medcloud.fhir.capability import capability_statement
from medcloud.fhir.context import FhirContext
from medcloud.fhir.definitions import resource_types
from medcloud.fhir.exchange import FhirRequest, FhirResponse, error_response, outcome_message
from medcloud.fhir.interactions import create, delete, history, patch, read, update
from medcloud.fhir.operations import OPERATIONS, Target
from medcloud.security.audit import AuditRecord

log = logging.getLogger("medcloud.fhir")

WRITE_METHODS = frozenset({"POST", "PUT", "PATCH", "DELETE"})


@dataclass(frozen=True, slots=True)
class Route:
    interaction: str  # read vread update patch delete history create search capabilities operation batch
    rtype: str | None
    rid_id: str | None
    writes: bool
    run: Callable[[FhirContext, Connection, FhirRequest], FhirResponse]
    own_transaction: bool = False
    single_statement: bool = False  # reads one row: no snapshot transaction needed


def resolve(req: FhirRequest) -> Route:
    """Parse the path and method into a route, or raise NotFound / MethodNotAllowed."""
    parts = [p for p in req.path.split("/") if p]
    m = req.method.upper()
    if m == "HEAD":
        m = "GET"
    types = _TYPES
    n = len(parts)

    if n == 0:
        if m == "GET":
            return Route("search-system", None, None, False, search.search_system)
        if m == "POST":
            from medcloud.fhir.interactions import transaction

            return Route("batch", None, None, True, lambda c, conn, r: transaction.process(c, r), own_transaction=True)
        raise MethodNotAllowed(f"{m} is not allowed on the base URL")
    head = parts[0]
    if n == 1 and head == "metadata":
        _only(m, "GET", "metadata")
        return Route("capabilities", None, None, False, lambda c, conn, r: FhirResponse(resource=capability_statement(c, r.base_url)))
    if n == 1 and head == "_history":
        _only(m, "GET", "_history")
        return Route("history-system", None, None, False, lambda c, conn, r: history.history(c, conn, r))
    if n == 1 and head == "_search":
        _only(m, "POST", "_search")
        return Route("search-system", None, None, False, search.search_system)
    if head.startswith("$"):
        if n != 1:
            raise NotFound(f"unknown path {req.path!r}")
        return _operation(req, m, head[1:], Target())
    if head == "AuditEvent":  # served from the audit trail, admins only, never written (security/audit_api.py)
        from medcloud.security import audit_api

        return audit_api.resolve(req, m, parts)
    if head == "ViewDefinition":  # SQL-on-FHIR, not an R4 core type: stored and run by analytics/server/views.py
        from medcloud.analytics.server import views

        return views.resolve(req, m, parts)
    if head not in types:
        raise NotFound(f"unknown resource type {head!r}")
    rtype = head
    if n == 1:
        if m == "GET":
            return Route("search-type", rtype, None, False, lambda c, conn, r: search.search_type(c, conn, r, rtype))
        if m == "POST":
            return Route("create", rtype, None, True, lambda c, conn, r: create.create(c, conn, r, rtype))
        if m == "PUT":
            _require_query(req, "conditional update")
            return Route("update", rtype, None, True, lambda c, conn, r: update.conditional_update(c, conn, r, rtype))
        if m == "PATCH":
            _require_query(req, "conditional patch")
            return Route("patch", rtype, None, True, lambda c, conn, r: patch.conditional_patch(c, conn, r, rtype))
        if m == "DELETE":
            _require_query(req, "conditional delete")
            return Route("delete", rtype, None, True, lambda c, conn, r: delete.conditional_delete(c, conn, r, rtype))
        raise MethodNotAllowed(f"{m} is not allowed on {rtype}")
    second = parts[1]
    if n == 2 and second == "_search":
        _only(m, "POST", f"{rtype}/_search")
        return Route("search-type", rtype, None, False, lambda c, conn, r: search.search_type(c, conn, r, rtype))
    if n == 2 and second == "_history":
        _only(m, "GET", f"{rtype}/_history")
        return Route("history-type", rtype, None, False, lambda c, conn, r: history.history(c, conn, r, rtype))
    if second.startswith("$"):
        if n != 2:
            raise NotFound(f"unknown path {req.path!r}")
        return _operation(req, m, second[1:], Target(rtype))
    rid_id = second
    if n == 2:
        if m == "GET":
            return Route("read", rtype, rid_id, False, lambda c, conn, r: read.read(c, conn, r, rtype, rid_id),
                         single_statement=True)
        if m == "PUT":
            return Route("update", rtype, rid_id, True, lambda c, conn, r: update.update(c, conn, r, rtype, rid_id))
        if m == "PATCH":
            return Route("patch", rtype, rid_id, True, lambda c, conn, r: patch.patch(c, conn, r, rtype, rid_id))
        if m == "DELETE":
            return Route("delete", rtype, rid_id, True, lambda c, conn, r: delete.delete(c, conn, r, rtype, rid_id))
        raise MethodNotAllowed(f"{m} is not allowed on {rtype}/{rid_id}")
    third = parts[2]
    if third == "_history":
        _only(m, "GET", f"{rtype}/{rid_id}/_history")
        if n == 3:
            return Route("history-instance", rtype, rid_id, False,
                         lambda c, conn, r: history.history(c, conn, r, rtype, rid_id))
        if n == 4:
            vid = parts[3]
            return Route("vread", rtype, rid_id, False, lambda c, conn, r: read.vread(c, conn, r, rtype, rid_id, vid))
    if third.startswith("$") and n == 3:
        return _operation(req, m, third[1:], Target(rtype, rid_id))
    if n == 3 and third in types:
        _only(m, "GET", f"{rtype}/{rid_id}/{third}")
        return Route("search-compartment", third, None, False,
                     lambda c, conn, r: search.search_compartment(c, conn, r, rtype, rid_id, third))
    raise NotFound(f"unknown path {req.path!r}")


_TYPES = frozenset(resource_types())


def _only(method: str, allowed: str, what: str) -> None:
    if method != allowed:
        raise MethodNotAllowed(f"{method} is not allowed on {what} (only {allowed})")


def _require_query(req: FhirRequest, what: str) -> None:
    if not req.query:
        raise MethodNotAllowed(f"a {what} needs search parameters in the URL")


def _operation(req: FhirRequest, method: str, name: str, target: Target) -> Route:
    op = OPERATIONS.get(name)
    if op is None:
        raise NotFound(f"unknown operation ${name}")
    level_ok = (
        (target.rtype is None and op.system)
        or (target.rtype is not None and target.rid_id is None and (op.types is None or target.rtype in op.types))
        or (target.rid_id is not None and (op.instance_types is None or target.rtype in op.instance_types))
    )
    if not level_ok:
        where = target.rtype or "the system level"
        raise NotFound(f"operation ${name} is not defined on {where}" + (" instances" if target.rid_id else ""))
    if method not in op.methods:
        raise MethodNotAllowed(f"${name} does not accept {method}")
    return Route("operation", target.rtype, target.rid_id, op.writes,
                 lambda c, conn, r: op.handler(c, conn, r, target), own_transaction=op.own_transaction)


def is_single_read(req: FhirRequest) -> bool:
    """``GET [type]/[id]``: one indexed lookup, cheap enough to answer without a thread hop."""
    if req.method != "GET":
        return False
    parts = req.path.split("/")
    return len(parts) == 2 and parts[0] in _TYPES and not parts[1].startswith(("$", "_"))


def dispatch(ctx: FhirContext, conn: Connection, req: FhirRequest) -> FhirResponse:
    """Run one request on an open transaction (used by batch/transaction for each entry).

    Errors propagate to the caller (a transaction fails as a whole); each entry is authorized
    and audited like a request of its own.
    """
    route: Route | None = None
    status = 500
    try:
        route = resolve(req)
        ctx.guard.authorize(req.principal, route.interaction, route.rtype)
        resp = apply_prefer(req, route.run(ctx, conn, req))
        status = resp.status
        return resp
    except MedcloudError as e:
        status = error_response(e).status
        raise
    finally:
        audit(ctx, req, route.interaction if route else "unknown", route.rtype if route else None,
              route.rid_id if route else None, status)


def handle(ctx: FhirContext, req: FhirRequest) -> FhirResponse:
    """Resolve, authorize, run in a transaction, translate errors, and audit one request."""
    route: Route | None = None
    try:
        route = resolve(req)
        ctx.guard.authorize(req.principal, route.interaction, route.rtype)
        if route.own_transaction:
            resp = route.run(ctx, None, req)  # type: ignore[arg-type]
        elif route.writes:
            with ctx.db.write() as conn:
                resp = route.run(ctx, conn, req)
        elif route.single_statement:
            resp = route.run(ctx, None, req)  # type: ignore[arg-type]
        else:
            with ctx.db.read() as conn:
                resp = route.run(ctx, conn, req)
        resp = apply_prefer(req, resp)
    except MedcloudError as e:
        resp = error_response(e)
    except IntegrityError as e:
        log.info("write conflict: %s", e)
        resp = error_response(Conflict("a concurrent write changed this resource; retry the request"))
    except OperationalError as e:
        if _is_contention(e):
            log.warning("database busy: %s", e)
            resp = error_response(Busy("the database is busy; retry the request"))
        else:
            log.exception("database error on %s %s", req.method, req.path)
            resp = error_response(MedcloudError("database error; see the server log"))
    except RecursionError:
        resp = error_response(Invalid("the request is nested too deeply"))
    except Exception:
        log.exception("unhandled error on %s %s", req.method, req.path)
        resp = error_response(MedcloudError("internal error; see the server log"))
    # A write (or a refused write attempt) is on disk before its response goes out; a batch entry's
    # record is committed with the batch's own, right after.
    audit(ctx, req, route.interaction if route else "unknown", route.rtype if route else None,
          route.rid_id if route else None, resp.status,
          durable=not req.in_bundle and (route.writes if route else req.method in WRITE_METHODS))
    return resp


def _is_contention(e: OperationalError) -> bool:
    text = str(e.orig if e.orig is not None else e).lower()
    return any(w in text for w in ("locked", "busy", "deadlock", "could not serialize", "lock timeout",
                                      "connection", "terminating"))


def apply_prefer(req: FhirRequest, resp: FhirResponse) -> FhirResponse:
    """Prefer: return=minimal | representation | OperationOutcome on writes (http.html#ops)."""
    if req.method not in WRITE_METHODS or resp.status >= 300 or req.path == "" and req.method == "POST":
        return resp
    prefer = (req.header("prefer") or "").replace(" ", "")
    wanted = None
    for part in prefer.split(","):
        for item in part.split(";"):
            if item.startswith("return="):
                wanted = item[len("return="):].strip('"')
    if wanted == "minimal":
        resp.raw = None
        resp.resource = None
    elif wanted == "OperationOutcome":
        resp.raw = None
        resp.resource = outcome_message(f"{req.method} {req.path}: {resp.status}")
    return resp


def audit(ctx: FhirContext, req: FhirRequest, interaction: str, rtype: str | None, rid_id: str | None,
          status: int, *, durable: bool = False) -> None:
    """Record one AuditEvent-shaped entry for an interaction (a whole request or one Bundle entry)."""
    p = req.principal
    resource = (f"{rtype}/{rid_id}" if rid_id else rtype) if rtype else None
    ctx.guard.record(
        AuditRecord(
            recorded=ctx.clock(),
            interaction=interaction,
            who=p.subject,
            client_id=p.client_id,
            source_ip=p.source_ip,
            resource=resource,
            patient=p.patient,
            status=status,
            durable=durable,
        )
    )
