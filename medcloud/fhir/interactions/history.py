"""history at instance, type and system level (http.html#history): _count, _since, _at, paging."""

from __future__ import annotations

from urllib.parse import urlencode

from sqlalchemy import Connection

from medcloud.errors import Invalid, NotFound
from medcloud.fhir.bundles import bundle, history_entry
from medcloud.fhir.context import FhirContext
from medcloud.fhir.exchange import FhirRequest, FhirResponse
from medcloud.fhir.primitives import date_range


def history(
    ctx: FhirContext, conn: Connection, req: FhirRequest, rtype: str | None = None, rid_id: str | None = None
) -> FhirResponse:
    if rtype is not None and rid_id is not None and ctx.store.read(conn, rtype, rid_id) is None:
        raise NotFound(f"{rtype}/{rid_id} is not known")
    count = _count(ctx, req.param("_count"))
    since = _instant_param(req.param("_since"), "_since", low=True)
    at = _instant_param(req.param("_at"), "_at", low=False)
    before = None
    token = req.param("_cursor")
    if token:
        state = ctx.cursors.decode(token, ctx.clock(), req.principal)
        if state.get("k") != "history" or state.get("p") != req.path:
            raise Invalid("this paging cursor belongs to another query")
        before, since, at, count = state["v"], state["since"], state["at"], state["n"]
    rows = ctx.store.history(conn, rtype=rtype, rid_id=rid_id, since=since, at=at, before_vid=before, limit=count + 1)
    rows = [s for s in rows if ctx.guard.can_read(req.principal, s)][: count + 1]
    links = [("self", f"{req.base_url}/{req.path}" + (f"?{urlencode(req.query)}" if req.query else ""))]
    if len(rows) > count:
        rows = rows[:count]
        state = {"k": "history", "p": req.path, "v": rows[-1].vid, "since": since, "at": at, "n": count}
        links.append(("next", f"{req.base_url}/{req.path}?_cursor={ctx.cursors.encode(state, ctx.clock(), req.principal)}"))
    entries = [history_entry(req.base_url, s) for s in rows]
    return FhirResponse(resource=bundle("history", entries, links=links, timestamp_us=ctx.clock()))


def _count(ctx: FhirContext, value: str | None) -> int:
    if value is None:
        return ctx.settings.default_page_size
    if not value.isdigit():
        raise Invalid(f"_count must be a non-negative integer, not {value!r}")
    return max(1, min(int(value), ctx.settings.max_page_size))


def _instant_param(value: str | None, name: str, *, low: bool) -> int | None:
    if value is None:
        return None
    try:
        lo, hi = date_range(value)
    except Invalid as e:
        raise Invalid(f"{name}: {e.message}") from e
    return lo if low else hi
