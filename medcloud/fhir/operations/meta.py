"""``$meta``, ``$meta-add`` and ``$meta-delete`` (hl7.org/fhir/R4/resource-operation-meta.html,
-meta-add.html, -meta-delete.html).

``$meta`` at system and type level lists the tags, security labels and profiles in use (read from
the ``_tag``/``_security`` token index and the ``_profile`` uri index, so only current versions
count; codings carry system and code, no display); at instance level it returns the resource's own.

``$meta-add`` / ``$meta-delete`` change meta *without creating a new version*, as the spec says
("it is not necessary to create a new version"): the current version's stored content is rewritten
in place with the same versionId and lastUpdated, and its index rows are rebuilt, so the ETag stays
valid and history does not grow (HAPI does the same). Both answer Parameters{return: Meta}.
"""

from __future__ import annotations

from typing import Any

import orjson
from sqlalchemy import Connection, and_, select, update

from medcloud.errors import Gone, Invalid, NotFound
from medcloud.fhir.context import FhirContext
from medcloud.fhir.exchange import FhirRequest, FhirResponse
from medcloud.fhir.operations import Operation, Target, register
from medcloud.storage.resources import Stored
from medcloud.storage.schema import idx_token, idx_uri, resource_history

_LIST_KEYS = ("tag", "security", "profile")


def meta(ctx: FhirContext, conn: Connection, req: FhirRequest, target: Target) -> FhirResponse:
    if target.rid_id is not None:
        s = _current(ctx, conn, req, target)
        assert s.content is not None
        return _answer(_in_use_of(orjson.loads(s.content).get("meta") or {}))
    out: dict[str, Any] = {}
    for key, param in (("tag", "_tag"), ("security", "_security")):
        stmt = select(idx_token.c.system, idx_token.c.code).where(idx_token.c.param == param).distinct()
        if target.rtype is not None:
            stmt = stmt.where(idx_token.c.type == target.rtype)
        codings = [{**({"system": sy} if sy else {}), "code": co}
                   for sy, co in sorted(conn.execute(stmt).all(), key=lambda r: (r[0] or "", r[1] or "")) if co]
        if codings:
            out[key] = codings
    stmt = select(idx_uri.c.value).where(idx_uri.c.param == "_profile").distinct()
    if target.rtype is not None:
        stmt = stmt.where(idx_uri.c.type == target.rtype)
    profiles = sorted(conn.execute(stmt).scalars())
    if profiles:
        out["profile"] = profiles
    return _answer(out)


def meta_add(ctx: FhirContext, conn: Connection, req: FhirRequest, target: Target) -> FhirResponse:
    return _change(ctx, conn, req, target, add=True)


def meta_delete(ctx: FhirContext, conn: Connection, req: FhirRequest, target: Target) -> FhirResponse:
    return _change(ctx, conn, req, target, add=False)


def _change(ctx: FhirContext, conn: Connection, req: FhirRequest, target: Target, *, add: bool) -> FhirResponse:
    change = _meta_parameter(req)
    s = _current(ctx, conn, req, target, lock=True)
    assert s.content is not None
    resource = orjson.loads(s.content)
    ctx.guard.check_write(req.principal, s.type, resource)
    current = dict(resource.get("meta") or {})
    for key in ("tag", "security"):
        have: list[dict[str, Any]] = list(current.get(key) or [])
        for c in change.get(key) or []:
            same = [h for h in have if h.get("system") == c.get("system") and h.get("code") == c.get("code")]
            if add and not same:
                have.append(c)
            elif not add:
                have = [h for h in have if h not in same]
        _set(current, key, have)
    profiles: list[str] = list(current.get("profile") or [])
    for p in change.get("profile") or []:
        if add and p not in profiles:
            profiles.append(p)
        elif not add:
            profiles = [q for q in profiles if q != p]
    _set(current, "profile", profiles)
    if current == (resource.get("meta") or {}):
        return _answer(_in_use_of(current))
    resource["meta"] = current
    content = orjson.dumps(resource)
    conn.execute(
        update(resource_history)
        .where(and_(resource_history.c.rid == s.rid, resource_history.c.version == s.version))
        .values(content=content)
    )
    ctx.store.delete_index(conn, [s.rid])
    ctx.store.write_index(conn, [(s.rid, s.type, ctx.indexer.extract(resource))])
    return _answer(_in_use_of(current))


def _set(meta_: dict[str, Any], key: str, values: list[Any]) -> None:
    if values:
        meta_[key] = values
    else:
        meta_.pop(key, None)


def _current(ctx: FhirContext, conn: Connection, req: FhirRequest, target: Target, *, lock: bool = False) -> Stored:
    assert target.rtype is not None and target.rid_id is not None
    s = ctx.store.read(conn, target.rtype, target.rid_id, lock=lock)
    if s is None:
        raise NotFound(f"{target.rtype}/{target.rid_id} is not known")
    ctx.guard.check_read(req.principal, s)
    if s.deleted or s.content is None:
        raise Gone(f"{target.rtype}/{target.rid_id} was deleted")
    return s


def _meta_parameter(req: FhirRequest) -> dict[str, Any]:
    body = req.body
    if not isinstance(body, dict) or body.get("resourceType") != "Parameters":
        raise Invalid("the body must be a Parameters resource with a 'meta' parameter (valueMeta)")
    metas = [p.get("valueMeta") for p in body.get("parameter") or [] if isinstance(p, dict) and p.get("name") == "meta"]
    if len(metas) != 1 or not isinstance(metas[0], dict):
        raise Invalid("Parameters must hold exactly one 'meta' parameter with a valueMeta",
                      expression="Parameters.parameter")
    m = metas[0]
    if not isinstance(m.get("tag", []), list) or not isinstance(m.get("security", []), list) \
            or not isinstance(m.get("profile", []), list):
        raise Invalid("meta.tag, meta.security and meta.profile must be arrays")
    for key in ("tag", "security"):
        for i, c in enumerate(m.get(key) or []):
            if not isinstance(c, dict) or not isinstance(c.get("code"), str) or not (
                    c.get("system") is None or isinstance(c.get("system"), str)):
                raise Invalid(f"meta.{key}[{i}] must be a Coding with a code",
                              expression=f"Parameters.parameter.valueMeta.{key}[{i}]")
    for i, p in enumerate(m.get("profile") or []):
        if not isinstance(p, str) or not p:
            raise Invalid(f"meta.profile[{i}] must be a canonical URL",
                          expression=f"Parameters.parameter.valueMeta.profile[{i}]")
    return m


def _in_use_of(m: dict[str, Any]) -> dict[str, Any]:
    return {k: m[k] for k in _LIST_KEYS if m.get(k)}


def _answer(m: dict[str, Any]) -> FhirResponse:
    return FhirResponse(resource={"resourceType": "Parameters", "parameter": [{"name": "return", "valueMeta": m}]})


_CORE = "http://hl7.org/fhir/OperationDefinition/"
register(Operation("meta", meta, system=True, types=None, instance_types=None,
                   definition=_CORE + "Resource-meta"))
register(Operation("meta-add", meta_add, types=(), instance_types=None, methods=("POST",), writes=True,
                   definition=_CORE + "Resource-meta-add"))
register(Operation("meta-delete", meta_delete, types=(), instance_types=None, methods=("POST",), writes=True,
                   definition=_CORE + "Resource-meta-delete"))
