"""``Patient/[id]/$everything`` (hl7.org/fhir/R4/patient-operation-everything.html).

Returns, as a searchset Bundle, the Patient, every resource in its compartment (the
``compartments`` table), and the resources those reference (Practitioner, Organization, Location,
Medication, ...; entries with ``search.mode = include``). Pages are keyset-ordered on ``rid`` in
three phases (the Patient, its compartment, then referenced resources), so paging stays correct
while others write: nothing is repeated or skipped, and resources added meanwhile with a higher
``rid`` show up on a later page. The paging state travels in a signed cursor (``ctx.cursors``).

Parameters: ``_since`` (updated at or after), ``_type`` (comma-separated, repeatable), ``_count``.
``start``/``end`` (care dates) are not supported: reported as a warning OperationOutcome entry.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import urlencode

from sqlalchemy import Connection, and_, or_, select

from medcloud.errors import Gone, Invalid, NotFound
from medcloud.fhir.bundles import bundle, full_url, resource_fragment
from medcloud.fhir.context import FhirContext
from medcloud.fhir.definitions import resource_types
from medcloud.fhir.exchange import FhirRequest, FhirResponse, outcome_message
from medcloud.fhir.operations import Operation, Target, register
from medcloud.fhir.primitives import date_range
from medcloud.storage.resources import Stored, current_join
from medcloud.storage.schema import compartments, idx_date, idx_reference, resource_history, resources

_COLS = (resources.c.rid, resources.c.type, resources.c.id, resources.c.version, resources.c.last_updated,
         resources.c.deleted, resource_history.c.content)
PATIENT, MEMBERS, REFERENCED = 0, 1, 2
MAX_CARRIED = 200  # referenced rids carried in a cursor; beyond that the next page recomputes them


def everything(ctx: FhirContext, conn: Connection, req: FhirRequest, target: Target) -> FhirResponse:
    assert target.rid_id is not None
    pid = target.rid_id
    patient = ctx.store.read(conn, "Patient", pid)
    if patient is None:
        raise NotFound(f"Patient/{pid} is not known")
    ctx.guard.check_read(req.principal, patient)
    if patient.deleted:
        raise Gone(f"Patient/{pid} was deleted")

    params = _params(req)
    token = params.get("_cursor")
    notes: list[str] = []
    if token:
        state = ctx.cursors.decode(token, ctx.clock(), req.principal)
        if state.get("k") != "everything" or state.get("p") != pid:
            raise Invalid("this paging cursor belongs to another query")
    else:
        state = {"k": "everything", "p": pid, "ph": PATIENT, "r": 0, "n": _count(ctx, params.get("_count")),
                 "t": _types(params.get("_type")), "s": _since(params.get("_since")),
                 "cd": _care_dates(params.get("start"), params.get("end"))}
    count: int = state["n"]
    types: list[str] | None = state["t"]
    since: int | None = state["s"]
    care: list[int] | None = state.get("cd")

    page: list[tuple[Stored, str]] = []
    more = False
    phase, after = state["ph"], state["r"]
    if phase == PATIENT:
        if _wanted(patient, types, since):
            page.append((patient, "match"))
        phase, after = MEMBERS, 0
    pending: list[int] | None = state.get("q")
    if phase == MEMBERS:
        room = count - len(page)
        rows = [Stored(*r) for r in conn.execute(_members(pid, patient.rid, types, since, after, room + 1, care))]
        if len(rows) > room:  # more members than fit: the page is full
            rows = rows[:room]
            more = True
            if rows:
                after = rows[-1].rid
        else:
            phase, after = REFERENCED, 0
        page.extend((s, "match") for s in rows)
    if phase == REFERENCED and not more:
        # The referenced set is computed once (it walks every member's references) and, when small,
        # carried in the cursor so later pages need not walk them again.
        if pending is None:
            pending = [rid for rid in conn.execute(_referenced(pid, types, since)).scalars() if rid > after]
        room = count - len(page)
        take, pending = pending[:room], pending[room:]
        page.extend((s, "include") for s in ctx.store.read_rids(conn, take))
        if take:
            after = take[-1]
        if pending:
            more = True
            if len(pending) > MAX_CARRIED:
                pending = None

    entries: list[dict[str, Any]] = [
        {"fullUrl": full_url(req.base_url, s), "resource": resource_fragment(s), "search": {"mode": mode}}
        for s, mode in page
        if ctx.guard.can_read(req.principal, s)
    ]
    if notes:
        entries.append({"resource": outcome_message("; ".join(notes), code="not-supported", severity="warning"),
                        "search": {"mode": "outcome"}})
    self_url = f"{req.base_url}/{req.path}" + (f"?{urlencode(req.query)}" if req.query and req.method == "GET" else "")
    links = [("self", self_url)]
    if more:
        nxt = {**state, "ph": phase, "r": after, "q": pending if phase == REFERENCED else None}
        links.append(("next", f"{req.base_url}/Patient/{pid}/$everything?_cursor={ctx.cursors.encode(nxt, ctx.clock(), req.principal)}"))
    return FhirResponse(resource=bundle("searchset", entries, links=links, timestamp_us=ctx.clock()))


def _members(pid: str, patient_rid: int, types: list[str] | None, since: int | None, after: int, limit: int,
             care: list[int] | None = None) -> Any:
    # Pick the page's rids from the compartment index alone (ix_compartments_owner_rid, no sort), then
    # fetch content for just those: joining content first would read every member's JSON per page.
    page = (
        select(compartments.c.rid)
        .where(compartments.c.comp_type == "Patient", compartments.c.comp_id == pid,
               compartments.c.rid > after, compartments.c.rid != patient_rid)
        .order_by(compartments.c.rid)
    )
    if types is not None:
        page = page.where(compartments.c.type.in_(types))
    if since is not None:
        page = page.join(resources, resources.c.rid == compartments.c.rid).where(resources.c.last_updated >= since)
    if care is not None:
        # start/end: members with a care date outside [start, end] are left out; members without one
        # (an AllergyIntolerance without onset...) stay, as the operation's definition allows.
        dated = select(idx_date.c.rid).where(idx_date.c.rid == compartments.c.rid, idx_date.c.param.in_(CARE_DATES))
        overlapping = dated.where(idx_date.c.high >= care[0], idx_date.c.low <= care[1])
        page = page.where(or_(~dated.exists(), overlapping.exists()))
    return (
        select(*_COLS).select_from(current_join())
        .where(resources.c.rid.in_(page.limit(limit)), resources.c.deleted.is_(False))
        .order_by(resources.c.rid)
    )


def _referenced(pid: str, types: list[str] | None, since: int | None) -> Any:
    """rids of the targets of the members' literal references that are not members themselves."""
    members = select(compartments.c.rid).where(compartments.c.comp_type == "Patient", compartments.c.comp_id == pid)
    targets = (
        select(idx_reference.c.target_type, idx_reference.c.target_id)
        .where(idx_reference.c.rid.in_(members), idx_reference.c.target_type.is_not(None),
               idx_reference.c.target_id.is_not(None))
        .distinct()
    )
    if types is not None:
        targets = targets.where(idx_reference.c.target_type.in_(types))
    t = targets.subquery()
    stmt = (
        select(resources.c.rid)
        .select_from(t.join(resources, and_(resources.c.type == t.c.target_type, resources.c.id == t.c.target_id)))
        .where(resources.c.rid.not_in(members), resources.c.deleted.is_(False))
        .order_by(resources.c.rid)
    )
    if since is not None:
        stmt = stmt.where(resources.c.last_updated >= since)
    return stmt


def _wanted(s: Stored, types: list[str] | None, since: int | None) -> bool:
    return (types is None or s.type in types) and (since is None or s.last_updated >= since)


def _params(req: FhirRequest) -> dict[str, str]:
    """Query parameters, plus those of a POSTed Parameters resource (operations.html#request)."""
    out: dict[str, str] = {}
    for k, v in req.query:
        out[k] = f"{out[k]},{v}" if k == "_type" and k in out else v
    body = req.body
    if req.method == "POST" and isinstance(body, dict):
        if body.get("resourceType") != "Parameters":
            raise Invalid("the $everything POST body must be a Parameters resource")
        for p in body.get("parameter") or []:
            if not isinstance(p, dict) or not isinstance(p.get("name"), str):
                raise Invalid("each Parameters.parameter needs a name")
            value = next((v for k, v in p.items() if k.startswith("value")), None)
            if value is None:
                raise Invalid(f"parameter {p['name']} needs a value")
            name = p["name"]
            out[name] = f"{out[name]},{value}" if name == "_type" and name in out else str(value)
    return out


def _count(ctx: FhirContext, value: str | None) -> int:
    if value is None:
        return ctx.settings.default_page_size
    if not value.isdigit() or int(value) == 0:
        raise Invalid(f"_count must be a positive integer, not {value!r}")
    return min(int(value), ctx.settings.max_page_size)


def _types(value: str | None) -> list[str] | None:
    if value is None:
        return None
    known = set(resource_types())
    types = sorted({t.strip() for t in value.split(",") if t.strip()})
    unknown = [t for t in types if t not in known]
    if unknown:
        raise Invalid(f"_type: unknown resource type(s) {', '.join(unknown)}")
    return types


# Search parameters that carry a member's care dates; it is in [start, end] when one of them overlaps.
CARE_DATES = ("date", "onset-date", "authoredon", "recorded-date", "created", "issued", "period", "occurrence")


def _care_dates(start: str | None, end: str | None) -> list[int] | None:
    """``start``/``end`` (Patient-everything: "care provided in that period") as an inclusive µs range."""
    if start is None and end is None:
        return None
    try:
        low = date_range(start)[0] if start is not None else -(2**62)
        high = date_range(end)[1] if end is not None else 2**62
    except Invalid as e:
        raise Invalid(f"start/end: {e.message}") from e
    if low > high:
        raise Invalid("start is after end")
    return [low, high]


def _since(value: str | None) -> int | None:
    if value is None:
        return None
    try:
        return date_range(value)[0]
    except Invalid as e:
        raise Invalid(f"_since: {e.message}") from e


register(Operation("everything", everything, types=(), instance_types=("Patient",),
                   definition="http://hl7.org/fhir/OperationDefinition/Patient-everything"))
