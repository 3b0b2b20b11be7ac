"""_include and _revinclude (search.html#include), with :iterate as a bounded loop.

Every included resource passes ``guard.can_read`` like a match; refusals are silently left out.
Only local references (relative, or absolute on this server's base) are followed.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Any

from sqlalchemy import Connection, Select, and_, bindparam, or_, select

from medcloud.fhir import definitions
from medcloud.fhir.context import FhirContext
from medcloud.fhir.exchange import Principal
from medcloud.fhir.search.parse import Include
from medcloud.storage.resources import Stored
from medcloud.storage.schema import idx_reference

MAX_ROUNDS = 4  # :iterate rounds after the first; cycles end early because seen resources are skipped
MAX_INCLUDED = 5000  # per page, so one request cannot pull in the whole database


def included(ctx: FhirContext, conn: Connection, principal: Principal, base: str, matches: list[Stored],
             specs: list[Include]) -> list[Stored]:
    """Resources that ``specs`` add to a page of ``matches``, in discovery order, without duplicates."""
    if not specs or not matches:
        return []
    seen = {(s.type, s.id) for s in matches}
    out: list[Stored] = []
    frontier = matches
    for round_no in range(MAX_ROUNDS + 1):
        active = specs if round_no == 0 else [s for s in specs if s.iterate]
        if not active or not frontier:
            break
        keys: list[tuple[str, str]] = []
        rids: list[int] = []
        for spec in active:
            if spec.reverse:
                rids += _revinclude(conn, spec, frontier)
            else:
                keys += _include(conn, base, spec, frontier)
        found = ctx.store.read_many(conn, [k for k in dict.fromkeys(keys) if k not in seen])
        new = [found[k] for k in dict.fromkeys(keys) if k in found]
        new += [s for s in ctx.store.read_rids(conn, list(dict.fromkeys(rids))) if (s.type, s.id) not in seen]
        frontier = []
        for s in new:
            if (s.type, s.id) in seen or not ctx.guard.can_read(principal, s):
                continue
            seen.add((s.type, s.id))
            frontier.append(s)
            out.append(s)
            if len(out) >= MAX_INCLUDED:
                return out
    return out


def _include(conn: Connection, base: str, spec: Include, frontier: list[Stored]) -> list[tuple[str, str]]:
    rids = [s.rid for s in frontier if spec.source is None or s.type == spec.source]
    if not rids:
        return []
    stmt = _include_stmt(spec.param == "*", spec.target is not None)
    prefix = base.rstrip("/") + "/"
    params: dict[str, Any] = {"local": prefix.replace("/", "//").replace("%", "/%").replace("_", "/_") + "%"}
    if spec.param != "*":
        params["param"] = spec.param
    if spec.target is not None:
        params["target"] = spec.target
    out: list[tuple[str, str]] = []
    for chunk in _chunks(rids):
        out += [(t, i) for t, i in conn.execute(stmt, {**params, "rids": chunk})]
    return out


@lru_cache(maxsize=4)
def _include_stmt(any_param: bool, typed: bool) -> Select[Any]:
    """The _include lookup for one shape, built once (building it per request cost more than running it).

    No ``type = source``: the rids are of that type already, and leaving it out leaves the
    (rid, param) index as the only way in (without statistics SQLite preferred scanning every
    reference of the type through the (type, param, ...) indexes). ``local`` is a LIKE pattern
    escaped with ``/``, as ``startswith(autoescape=True)`` would.
    """
    r = idx_reference
    stmt = select(r.c.target_type, r.c.target_id).where(
        r.c.rid.in_(bindparam("rids", expanding=True)), r.c.target_type.is_not(None), r.c.target_id.is_not(None),
        or_(r.c.url.is_(None), r.c.url.like(bindparam("local"), escape="/")),
    )
    stmt = stmt.where(~r.c.param.contains("#")) if any_param else stmt.where(r.c.param == bindparam("param"))
    if typed:
        stmt = stmt.where(r.c.target_type == bindparam("target"))
    return stmt


def _revinclude(conn: Connection, spec: Include, frontier: list[Stored]) -> list[int]:
    by_type: dict[str, list[str]] = {}
    for s in frontier:
        if spec.target is None or s.type == spec.target:
            by_type.setdefault(s.type, []).append(s.id)
    r = idx_reference
    out: list[int] = []
    for rtype, ids in by_type.items():
        for chunk in _chunks(ids):
            stmt = select(r.c.rid).where(and_(r.c.target_type == rtype, r.c.target_id.in_(chunk), r.c.url.is_(None)))
            if spec.source is not None:
                stmt = stmt.where(r.c.type == spec.source)
            if spec.param != "*":
                stmt = stmt.where(r.c.param == spec.param)
            elif spec.source is not None:
                # Name the parameters so the (type, param, target_id, ...) index still applies.
                stmt = stmt.where(r.c.param.in_(_reference_params(spec.source, rtype)))
            else:
                stmt = stmt.where(~r.c.param.contains("#"))
            out += [rid for (rid,) in conn.execute(stmt.order_by(r.c.rid))]
    return out


def _reference_params(source: str, target: str) -> list[str]:
    return [p.code for p in definitions.search_params(source).values()
            if p.type == "reference" and (not p.targets or target in p.targets)] or ["-"]


def _chunks(items: list, n: int = 500):
    for i in range(0, len(items), n):
        yield items[i : i + n]
