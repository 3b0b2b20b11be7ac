"""FHIR search (https://hl7.org/fhir/R4/search.html): type, system and compartment level, and ``matches``.

``parse`` knows the query grammar, ``params/`` each parameter type, ``plan`` turns parameters into
one SQL query, ``include`` adds _include/_revinclude, ``results`` shapes entries.

Decisions where the spec leaves room:

- Unknown or unsupported parameters are ignored and reported in an OperationOutcome entry
  (``search.mode = outcome``) unless the client sends ``Prefer: handling=strict`` (then 400).
  Malformed values of known parameters are always a 400.
- ``_total`` defaults to "known when free": the first page carries ``total`` when it holds the whole
  result; larger results need ``_total=accurate`` (``estimate`` is answered with the exact count).
  A total, once counted, travels in the paging cursor to the following pages.
- Paging is keyset over (sort keys, rid) in a signed cursor that also binds the query, the search
  scope and who asked; ``next``/``previous`` links are ``?_cursor=...`` (``previous`` walks the same
  keyset backwards) and expire after ``cursor_ttl`` (410).
  Rows written after the first page appear on later pages only if they sort after the position
  reached; pre-existing rows are never skipped or repeated.
- Every match and every included resource passes ``guard.can_read``; refusals are left out silently.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any
from urllib.parse import urlencode

import orjson
from sqlalchemy import func, select

from medcloud.errors import Invalid, NotSupported
from medcloud.fhir import definitions
from medcloud.fhir.bundles import bundle
from medcloud.fhir.exchange import FhirResponse, operation_outcome
from medcloud.fhir.search import include as _include
from medcloud.fhir.search import results as _results
from medcloud.fhir.search.parse import RESULT_PARAMS, WarnFn, parse_results, strict_handling
from medcloud.fhir.search.plan import Planner, base_conditions, intersect_rids, page_query
from medcloud.fhir.terminology import Terminology
from medcloud.storage.schema import compartments, idx_uri, resources

if TYPE_CHECKING:
    from sqlalchemy import Connection

    from medcloud.fhir.context import FhirContext
    from medcloud.fhir.exchange import FhirRequest, Principal
    from medcloud.storage.resources import Stored

__all__ = ["matches", "search_compartment", "search_system", "search_type"]


@dataclass(frozen=True, slots=True)
class _Scope:
    key: str  # bound into cursors: "type:Patient", "system", "compartment:Patient/1/Observation"
    path: str  # relative URL of the search, for links
    types: tuple[str, ...] | None
    rids: tuple[Any, ...] = ()  # rid sets the matches must be in (compartment membership), intersected


def matches(ctx: FhirContext, conn: Connection, principal: Principal, rtype: str,
            query: list[tuple[str, str]], limit: int) -> list[Stored]:
    """Resources of ``rtype`` matching ``query`` (for conditional interactions), at most ``limit``.

    Strict: an unknown parameter or a results parameter (``_sort``, ``_count``...) is a 400.
    """
    query = [(k, v) for k, v in query if k not in ("_format", "_pretty")]
    if not query:
        raise Invalid(f"a conditional {rtype} request needs search parameters")
    for k, _ in query:
        if k.split(":", 1)[0] in RESULT_PARAMS:
            raise Invalid(f"{k} is not allowed in the criteria of a conditional interaction")
    planner = Planner(base=ctx.settings.base_url.rstrip("/"), now_us=ctx.clock(), warn=WarnFn(strict=True),
                      access=_access(ctx, principal), terminology=_terminology(ctx, conn))
    conds = [*base_conditions(resources, (rtype,)), *planner.restrict(resources, (rtype,)),
             *planner.conditions(resources, (rtype,), query)]
    stmt = select(resources.c.rid).where(*conds).order_by(resources.c.rid).limit(limit)
    rids = [r for (r,) in conn.execute(stmt)]
    return [s for s in ctx.store.read_rids(conn, rids) if ctx.guard.can_read(principal, s)]


def search_type(ctx: FhirContext, conn: Connection, req: FhirRequest, rtype: str) -> FhirResponse:
    """``GET [base]/[type]?...`` and ``POST [base]/[type]/_search``."""
    return _search(ctx, conn, req, _Scope(f"type:{rtype}", rtype, (rtype,)))


def search_system(ctx: FhirContext, conn: Connection, req: FhirRequest) -> FhirResponse:
    """``GET [base]?_type=...`` and ``POST [base]/_search``: across types (search.html#all)."""
    query = _state_query(ctx, req, "system") if req.param("_cursor") else req.query
    types: list[str] = []
    known = definitions.resource_types()
    for k, v in query:
        if k == "_type":
            for t in v.split(","):
                if t not in known:
                    raise Invalid(f"_type: unknown resource type {t!r}")
                if t not in types:
                    types.append(t)
        elif k.startswith("_type:"):
            raise Invalid("_type takes no modifier")
    return _search(ctx, conn, req, _Scope("system", "", tuple(types) or None))


def search_compartment(ctx: FhirContext, conn: Connection, req: FhirRequest, ctype: str, cid: str,
                       rtype: str) -> FhirResponse:
    """``GET [base]/Patient/[id]/[type]?...`` (compartmentdefinition.html#search)."""
    if ctype != "Patient":
        raise NotSupported(f"compartment search is supported for the Patient compartment only, not {ctype}")
    if rtype != "Patient" and rtype not in definitions.patient_compartment():
        raise Invalid(f"{rtype} is not part of the Patient compartment")
    member = select(compartments.c.rid).where(
        compartments.c.comp_type == ctype, compartments.c.comp_id == cid, compartments.c.type == rtype
    )
    scope = _Scope(f"compartment:{ctype}/{cid}/{rtype}", f"{ctype}/{cid}/{rtype}", (rtype,), (member,))
    return _search(ctx, conn, req, scope)


# ---------------------------------------------------------------- the shared search


def _state_query(ctx: FhirContext, req: FhirRequest, scope_key: str) -> list[tuple[str, str]]:
    state = _cursor_state(ctx, req, scope_key)
    return [(k, v) for k, v in state["q"]]


def _cursor_state(ctx: FhirContext, req: FhirRequest, scope_key: str) -> dict[str, Any]:
    token = req.param("_cursor") or ""
    state = ctx.cursors.decode(token, ctx.clock(), req.principal)
    if state.get("k") != "search" or state.get("s") != scope_key:
        raise Invalid("this paging link belongs to another search")
    return state


def _terminology(ctx: FhirContext, conn: Connection) -> Terminology:
    """R4's value sets and code systems, and the ValueSet/CodeSystem resources stored here (by ``url``)."""

    def stored(rtype: str, canonical: str) -> dict[str, Any] | None:
        url, _, version = canonical.partition("|")
        rids = conn.execute(select(idx_uri.c.rid).where(idx_uri.c.type == rtype, idx_uri.c.param == "url",
                                                        idx_uri.c.value == url)).scalars().all()
        docs = [orjson.loads(s.content) for s in ctx.store.read_rids(conn, list(rids)) if s.content]
        docs = [d for d in docs if not version or d.get("version") == version]
        return docs[-1] if docs else None

    return Terminology(stored)


def _access(ctx: FhirContext, principal: Principal) -> Any:
    return lambda rtype: ctx.guard.read_filter(principal, rtype)


def _search(ctx: FhirContext, conn: Connection, req: FhirRequest, scope: _Scope) -> FhirResponse:
    now = ctx.clock()
    base = req.base_url.rstrip("/")
    position: list[Any] | None = None  # keyset (sort keys..., rid) the page starts after (or before)
    backwards = False
    carried_total: int | None = None
    if req.param("_cursor"):
        state = _cursor_state(ctx, req, scope.key)
        query = [(k, v) for k, v in state["q"]]
        position, carried_total, backwards = state["a"], state["t"], state.get("d") == "p"
    else:
        query = [(k, v) for k, v in req.query if k not in ("_format", "_pretty")]
    warn = WarnFn(strict_handling(req.header("prefer")))
    res = parse_results(query, default_count=ctx.settings.default_page_size,
                        max_count=ctx.settings.max_page_size, warn=warn)
    planner = Planner(base=base, now_us=now, warn=warn, access=_access(ctx, req.principal),
                      terminology=_terminology(ctx, conn))
    filters = [(k, v) for k, v in query if not (k == "_type" and scope.key == "system")]
    sets, others = planner.filters(resources, scope.types, filters)
    sets = [*scope.rids, *sets]
    conds = [*base_conditions(resources, scope.types, narrowed=bool(sets)), *planner.restrict(resources, scope.types),
             *([resources.c.rid.in_(intersect_rids(sets))] if sets else []), *others]
    keys = planner.sort_keys(resources, scope.types, res.sort)
    used = [(k, v) for k, v in query if (k, v) not in warn.ignored and k != "_cursor"]

    total: int | None = carried_total
    want_total = res.total in ("accurate", "estimate") or res.summary == "count" or res.count == 0
    if total is None and want_total and res.total != "none":
        total = conn.execute(select(func.count()).select_from(resources).where(*conds)).scalar_one()

    first = _url(base, scope.path, used)
    links = [("self", first if position is None else _url(base, scope.path, req.query))]
    entries: list[dict[str, Any]] = []
    if res.summary != "count" and res.count > 0:
        stmt = page_query(select(resources.c.rid).where(*conds), resources.c.rid, keys, position, res.count + 1,
                          backwards=backwards)
        rows = list(conn.execute(stmt).all())
        more = len(rows) > res.count
        rows = rows[: res.count]
        if backwards:
            rows.reverse()
        if total is None and position is None and not more and res.total != "none":
            total = len(rows)
        found = [s for s in ctx.store.read_rids(conn, [r[0] for r in rows]) if ctx.guard.can_read(req.principal, s)]
        extra = _include.included(ctx, conn, req.principal, base, found, res.includes)
        entries = [_results.entry(base, s, "match", res.summary, res.elements) for s in found]
        entries += [_results.entry(base, s, "include", res.summary, None) for s in extra]

        def cursor(row: Any, direction: str) -> str:
            state = {"k": "search", "s": scope.key, "q": used, "a": [*row[1:], row[0]], "d": direction, "t": total}
            return _url(base, scope.path, [("_cursor", ctx.cursors.encode(state, now, req.principal))])

        if position is not None:
            links.append(("first", first))
        # Forward pages always have a predecessor once a cursor was followed; a backwards page has
        # one only when the reversed query found more rows than fit.
        if rows and (more if backwards else position is not None):
            links.append(("previous", cursor(rows[0], "p")))
        if rows and (more if not backwards else True):
            links.append(("next", cursor(rows[-1], "n")))
    if res.total == "none":
        total = None
    if warn.issues:
        entries.append({"resource": operation_outcome(warn.issues), "search": {"mode": "outcome"}})
    body = bundle("searchset", entries, total=total, links=links, timestamp_us=now, bundle_id=ctx.new_id())
    return FhirResponse(resource=body)


def _url(base: str, path: str, query: list[tuple[str, str]]) -> str:
    url = f"{base}/{path}" if path else base
    return f"{url}?{urlencode(query)}" if query else url
