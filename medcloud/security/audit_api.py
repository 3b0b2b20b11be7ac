"""``GET [base]/AuditEvent`` and ``GET [base]/AuditEvent/[id]``: the audit trail, for administrators.

AuditEvents are served from ``audit_log`` (never from the resources table) and are never writable
through the API: any write method answers 405, and ``Guard.authorize`` refuses AuditEvent writes
that reach it another way (transaction entries). Only principals for which ``is_admin`` holds see
them; everyone else gets 404, as if the type had nothing. The id of an AuditEvent is its ``seq``,
its place in the hash chain.

Search parameters (https://hl7.org/fhir/R4/auditevent.html#search, AND across repeats, OR within
a comma list): ``date`` (with prefixes), ``agent`` (the requesting subject or the client),
``who`` (the requesting subject), ``client`` (the client app), ``entity``, ``entity-type``,
``patient``, ``action``, ``outcome``, ``subtype``, ``address`` (prefix; ``:exact``), ``_id``;
results: ``_count``, ``_sort`` (``date``/``-date``, default newest first), ``_total=accurate``.
Paging is keyset on ``seq`` with signed ``_cursor`` links (``fhir/paging.py``). Unknown
parameters are refused (400): an ignored filter would show an administrator too much.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any
from urllib.parse import urlencode

from sqlalchemy import ColumnElement, Connection, and_, false, func, or_, select

from medcloud.errors import Invalid, MethodNotAllowed, NotFound
from medcloud.fhir.bundles import bundle
from medcloud.fhir.context import FhirContext
from medcloud.fhir.exchange import FhirRequest, FhirResponse, Principal
from medcloud.fhir.resource_meta import instant
from medcloud.fhir.search.params import date as date_param
from medcloud.fhir.search.parse import or_values, split_escaped, unescape
from medcloud.security import audit_store, scopes
from medcloud.storage.schema import audit_log

if TYPE_CHECKING:
    from medcloud.fhir.router import Route

AUDIT_EVENT = "AuditEvent"
ADMIN_SCOPE = "medcloud/admin"
WRITE_METHODS = frozenset({"POST", "PUT", "PATCH", "DELETE"})
_ACTION = "http://hl7.org/fhir/audit-event-action"
_OUTCOME = "http://hl7.org/fhir/audit-event-outcome"
_INTERACTION = "http://hl7.org/fhir/restful-interaction"
_IGNORED = frozenset({"_format", "_pretty"})


def is_admin(principal: Principal) -> bool:
    """``medcloud.security.scopes.is_admin`` once the OAuth slice provides it; the scope test until then."""
    check: Callable[[Principal], bool] | None = getattr(scopes, "is_admin", None)
    if check is not None:
        return bool(check(principal))
    return ADMIN_SCOPE in principal.scopes


def resolve(req: FhirRequest, method: str, parts: list[str]) -> Route:
    """The route of a request under ``AuditEvent`` (``parts[0]``); raises MethodNotAllowed / NotFound."""
    from medcloud.fhir.router import Route

    n = len(parts)
    search_path = n == 1 or (n == 2 and parts[1] == "_search")
    if method in WRITE_METHODS and not (method == "POST" and n == 2 and parts[1] == "_search"):
        raise MethodNotAllowed("AuditEvent is read-only: the server records audit events itself, they cannot "
                               "be created, changed or deleted through the API")
    if method == "GET" and search_path or method == "POST" and n == 2:
        return Route("search-type", AUDIT_EVENT, None, False, search)
    if method == "GET" and n == 2 and not parts[1].startswith(("_", "$")):
        rid_id = parts[1]
        return Route("read", AUDIT_EVENT, rid_id, False, lambda c, conn, r: read(c, conn, r, rid_id))
    raise NotFound(f"AuditEvent supports search and read only, not {req.method} {req.path}")


def read(ctx: FhirContext, conn: Connection, req: FhirRequest, rid_id: str) -> FhirResponse:
    if not is_admin(req.principal) or not rid_id.isdigit() or len(rid_id) > 18:
        raise NotFound(f"AuditEvent/{rid_id} is not known")
    row = conn.execute(select(audit_log.c.seq, audit_log.c.recorded, audit_log.c.content)
                       .where(audit_log.c.seq == int(rid_id))).first()
    if row is None:
        raise NotFound(f"AuditEvent/{rid_id} is not known")
    return FhirResponse(resource=_resource(row.seq, row.recorded, row.content), etag='W/"1"')


def search(ctx: FhirContext, conn: Connection, req: FhirRequest) -> FhirResponse:
    if not is_admin(req.principal):
        raise NotFound("AuditEvent is not available")
    now = ctx.clock()
    token = req.param("_cursor")
    after: int | None = None
    if token:
        state = ctx.cursors.decode(token, now, req.principal)
        if state.get("t") != AUDIT_EVENT:
            raise Invalid("this paging link belongs to another search")
        query = [(str(k), str(v)) for k, v in state["q"]]
        after = int(state["after"])
    else:
        query = [(k, v) for k, v in req.query if k not in _IGNORED]
    plan = _Plan.parse(query, ctx, now)
    seq = audit_log.c.seq
    stmt = select(seq, audit_log.c.recorded, audit_log.c.content).where(*plan.filters)
    if after is not None:
        stmt = stmt.where(seq < after if plan.descending else seq > after)
    stmt = stmt.order_by(seq.desc() if plan.descending else seq).limit(plan.count + 1)
    rows = conn.execute(stmt).all() if plan.count else []
    more = len(rows) > plan.count
    rows = rows[:plan.count]
    total = None
    if plan.total:
        total = conn.execute(select(func.count()).select_from(audit_log).where(*plan.filters)).scalar_one()
    base = f"{req.base_url}/{AUDIT_EVENT}"
    links = [("self", f"{base}?{urlencode(query)}" if query else base)]
    if more:
        state = {"t": AUDIT_EVENT, "q": query, "after": rows[-1].seq}
        links.append(("next", f"{base}?{urlencode([('_cursor', ctx.cursors.encode(state, now, req.principal))])}"))
    entries = [{"fullUrl": f"{base}/{r.seq}", "resource": _resource(r.seq, r.recorded, r.content),
                "search": {"mode": "match"}} for r in rows]
    return FhirResponse(resource=bundle("searchset", entries, total=total, links=links, timestamp_us=now,
                                        bundle_id=ctx.new_id()))


def _resource(seq: int, recorded: int, content: bytes) -> dict[str, Any]:
    ev = audit_store.as_resource(seq, bytes(content))
    ev["meta"] = {"versionId": "1", "lastUpdated": instant(recorded)}
    return ev


class _Plan:
    """The WHERE clauses and result parameters of one AuditEvent search."""

    def __init__(self, filters: list[ColumnElement[bool]], count: int, descending: bool, total: bool):
        self.filters = filters
        self.count = count
        self.descending = descending
        self.total = total

    @classmethod
    def parse(cls, query: list[tuple[str, str]], ctx: FhirContext, now: int) -> _Plan:
        filters: list[ColumnElement[bool]] = []
        count, descending, total = ctx.settings.default_page_size, True, False
        for key, value in query:
            name, _, modifier = key.partition(":")
            if name == "_count":
                if not value.isdigit():
                    raise Invalid(f"_count must be a non-negative integer, not {value!r}")
                count = min(int(value), ctx.settings.max_page_size)
            elif name == "_sort":
                if value not in ("date", "-date", "_id", "-_id"):
                    raise Invalid(f"AuditEvent can be sorted by date or -date only, not {value!r}")
                descending = value.startswith("-")
            elif name == "_total":
                if value not in ("none", "estimate", "accurate"):
                    raise Invalid(f"_total must be none, estimate or accurate, not {value!r}")
                total = value == "accurate"
            elif name in _FILTERS:
                if modifier and (name, modifier) not in _MODIFIERS:
                    raise Invalid(f"modifier :{modifier} is not supported on AuditEvent {name}")
                build = _FILTERS[name]
                filters.append(or_(*(build(unescape(v) if name != "date" else v, modifier, now)
                                     for v in or_values(value))))
            else:
                raise Invalid(f"unknown AuditEvent search parameter {key!r}; supported: "
                              f"{', '.join(sorted(_FILTERS))}, _count, _sort, _total")
        return cls(filters, count, descending, total)


# -- one predicate per parameter value -------------------------------------------------------------

def _date(value: str, modifier: str, now: int) -> ColumnElement[bool]:
    v = date_param.parse(value)
    return date_param.range_predicate(audit_log.c.recorded, audit_log.c.recorded, v, now)


def _reference(value: str) -> tuple[str | None, str]:
    """``Type/id``, ``id`` or an absolute URL ending in ``Type/id`` -> (type, id)."""
    parts = value.rstrip("/").split("/")
    if len(parts) >= 2:
        return parts[-2], parts[-1]
    return None, value


def _who(value: str, modifier: str, now: int) -> ColumnElement[bool]:
    return audit_log.c.who == value


def _client(value: str, modifier: str, now: int) -> ColumnElement[bool]:
    return audit_log.c.client_id == value


def _agent(value: str, modifier: str, now: int) -> ColumnElement[bool]:
    return or_(audit_log.c.who == value, audit_log.c.client_id == value)


def _entity(value: str, modifier: str, now: int) -> ColumnElement[bool]:
    rtype, rid = _reference(value)
    if rtype is None:
        return or_(audit_log.c.entity_id == rid, audit_log.c.patient == rid)
    match = and_(audit_log.c.entity_id == rid, audit_log.c.entity_type == rtype)
    return or_(match, audit_log.c.patient == rid) if rtype == "Patient" else match


def _patient(value: str, modifier: str, now: int) -> ColumnElement[bool]:
    rtype, rid = _reference(value)
    if rtype not in (None, "Patient"):
        return false()
    return or_(audit_log.c.patient == rid, and_(audit_log.c.entity_id == rid, audit_log.c.entity_type == "Patient"))


def _entity_type(value: str, modifier: str, now: int) -> ColumnElement[bool]:
    return audit_log.c.entity_type == value


def _token(column: Any, system: str) -> Callable[[str, str, int], ColumnElement[bool]]:
    def build(value: str, modifier: str, now: int) -> ColumnElement[bool]:
        parts = split_escaped(value, "|")
        if len(parts) > 2:
            raise Invalid(f"invalid token {value!r}")
        if len(parts) == 2:
            sys, code = unescape(parts[0]), unescape(parts[1])
            if sys != system:  # "|code" (no system) matches nothing: every stored code has one
                return false()
            if not code:
                return column.is_not(None)
            value = code
        return column == value

    return build


def _address(value: str, modifier: str, now: int) -> ColumnElement[bool]:
    if modifier == "exact":
        return audit_log.c.address == value
    if modifier == "contains":
        return audit_log.c.address.contains(value, autoescape=True)
    return audit_log.c.address.startswith(value, autoescape=True)


def _id(value: str, modifier: str, now: int) -> ColumnElement[bool]:
    return audit_log.c.seq == int(value) if value.isdigit() and len(value) <= 18 else false()


_FILTERS: dict[str, Callable[[str, str, int], ColumnElement[bool]]] = {
    "date": _date,
    "agent": _agent,
    "who": _who,
    "client": _client,
    "entity": _entity,
    "entity-type": _entity_type,
    "patient": _patient,
    "action": _token(audit_log.c.action, _ACTION),
    "outcome": _token(audit_log.c.outcome, _OUTCOME),
    "subtype": _token(audit_log.c.subtype, _INTERACTION),
    "address": _address,
    "_id": _id,
}
_MODIFIERS = frozenset({("address", "exact"), ("address", "contains")})
