"""Cohorts: saved, versioned patient sets defined by a FHIR search or by SQL over SQL-on-FHIR views.

Both the definition and every run are FHIR ``Group`` resources in the store, so replicas sharing one
database agree on them and ``_history`` is the audit of runs (R4 group.html):

- The **definition** is a ``Group`` with ``actual=false`` — the spec's "definitional" group, whose
  membership is described rather than enumerated ("If false, the group is a definition of a set of
  members, and the members are not listed"). ``Group.characteristic`` cannot hold a query
  (code + value[x] only), so a search rides in an extension whose value is an R4 ``Expression``,
  the datatype FHIR uses for computable criteria, with language ``application/x-fhir-query`` (a
  code of the ExpressionLanguage value set). SQL is not in that value set (R4's JSON schema, which
  the server validates against, enumerates it), so DuckDB SQL is a ``valueString`` extension of its
  own, with each ViewDefinition as a JSON ``Attachment``. Redefining writes a new Group version.
- A **run** writes ``Group/<id>-members``: ``actual=true``, one ``member.entity`` per Patient,
  ``quantity``, and a reference to the exact definition version it ran. Each run is a new version of
  that Group, so ``Group/<id>-members/_history`` lists every run and ``Group/<id>-members/$export``
  is the Bulk Data group export (fhir/operations/export.py).

A Library would also fit a query, but would need a second resource to point at; the Group keeps the
definition and its result one ``GET`` apart and is what Bulk Data's group export already consumes.
"""

from __future__ import annotations

import base64
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Final, Literal
from urllib.parse import parse_qsl

import orjson
from sqlalchemy import select

from medcloud.errors import Forbidden, Invalid, NotFound
from medcloud.fhir import definitions
from medcloud.fhir.resource_meta import check_id

if TYPE_CHECKING:
    from sqlalchemy import Connection

    from medcloud.analytics.engines._sources import Source
    from medcloud.fhir.context import FhirContext
    from medcloud.fhir.exchange import Principal
    from medcloud.storage.resources import Stored

EXT = "https://medcloud.dev/fhir/StructureDefinition/"
EXT_EXPRESSION = EXT + "cohort-expression"  # valueExpression: a FHIR search (x-fhir-query)
EXT_SQL = EXT + "cohort-sql"  # valueString: DuckDB SQL over the cohort-view tables
EXT_VIEW = EXT + "cohort-view"  # valueAttachment: one ViewDefinition (JSON) used by the SQL
EXT_DEFINITION = EXT + "cohort-definition"  # on a run: valueReference to the definition version
FHIR_QUERY: Final = "application/x-fhir-query"
SQL: Final = "application/sql"
MEMBERS_SUFFIX = "-members"
PATIENT_COLUMN = "patient_id"
_RESULT_PARAMS = {"_sort", "_count", "_include", "_revinclude", "_summary", "_elements", "_total",
                  "_contained", "_containedType", "_cursor", "_format", "_pretty"}
_BATCH = 500

Language = Literal["application/x-fhir-query", "application/sql"]


@dataclass(frozen=True, slots=True)
class CohortDefinition:
    """A cohort as the user wrote it. ``views`` only for SQL cohorts."""

    id: str
    language: Language
    expression: str
    title: str = ""
    views: tuple[dict[str, Any], ...] = field(default=())

    def check(self) -> None:
        """Raise ``Invalid`` for anything a run would trip over, before it is saved."""
        check_id(self.id)
        if len(self.id) + len(MEMBERS_SUFFIX) > 64:
            raise Invalid(f"cohort id {self.id!r} is too long (at most {64 - len(MEMBERS_SUFFIX)} characters)")
        if self.id.endswith(MEMBERS_SUFFIX):
            raise Invalid(f"cohort ids must not end with {MEMBERS_SUFFIX!r} (that is where runs are written)")
        if self.language == FHIR_QUERY:
            if self.views:
                raise Invalid("a FHIR search cohort takes no views")
            parse_search(self.expression)
        elif self.language == SQL:
            if not self.expression.strip():
                raise Invalid("the SQL of a cohort is empty")
            if not self.views:
                raise Invalid("a SQL cohort needs at least one ViewDefinition")
            names = [view_name(v) for v in self.views]
            if len(set(names)) != len(names):
                raise Invalid(f"two views share a name: {names}")
        else:
            raise Invalid(f"unknown cohort language {self.language!r}; use {FHIR_QUERY} or {SQL}")

    def to_group(self) -> dict[str, Any]:
        ext: list[dict[str, Any]] = (
            [{"url": EXT_EXPRESSION, "valueExpression": {"language": self.language, "expression": self.expression}}]
            if self.language == FHIR_QUERY else [{"url": EXT_SQL, "valueString": self.expression}])
        for v in self.views:
            data = base64.b64encode(orjson.dumps(v)).decode()
            ext.append({"url": EXT_VIEW, "valueAttachment": {
                "contentType": "application/json", "title": view_name(v), "data": data}})
        group: dict[str, Any] = {"resourceType": "Group", "id": self.id, "extension": ext,
                                 "type": "person", "actual": False}
        if self.title:
            group["name"] = self.title
        return group

    @classmethod
    def from_group(cls, group: dict[str, Any]) -> CohortDefinition:
        if group.get("actual") is not False:
            raise Invalid(f"Group/{group.get('id')} is not a cohort definition (actual must be false)")
        exprs: list[tuple[str, str]] = []
        for e in group.get("extension") or []:
            if e.get("url") == EXT_EXPRESSION and isinstance(e.get("valueExpression"), dict):
                exprs.append((e["valueExpression"].get("language", ""), e["valueExpression"].get("expression", "")))
            elif e.get("url") == EXT_SQL and isinstance(e.get("valueString"), str):
                exprs.append((SQL, e["valueString"]))
        if len(exprs) != 1:
            raise Invalid(f"Group/{group.get('id')} is not a cohort definition: it needs exactly one "
                          f"{EXT_EXPRESSION} or {EXT_SQL} extension")
        views = []
        for e in group.get("extension") or []:
            if e.get("url") == EXT_VIEW:
                try:
                    views.append(orjson.loads(base64.b64decode((e.get("valueAttachment") or {})["data"])))
                except (KeyError, ValueError, orjson.JSONDecodeError) as exc:
                    raise Invalid(f"Group/{group.get('id')}: a cohort-view attachment is not JSON") from exc
        language: Any = exprs[0][0]
        d = cls(group["id"], language, exprs[0][1], group.get("name", ""), tuple(views))
        d.check()
        return d


def view_name(view: dict[str, Any]) -> str:
    name = view.get("name")
    if not isinstance(name, str) or not name.isidentifier():
        raise Invalid("each cohort view needs a 'name' usable as a SQL table name (letters, digits, _)")
    return name


def parse_search(expression: str) -> tuple[str, list[tuple[str, str]]]:
    """``Type?a=b&c=d`` as (type, query); only filter parameters, no paging or result shaping."""
    rtype, _, qs = expression.strip().lstrip("/").partition("?")
    if rtype not in definitions.resource_types():
        raise Invalid(f"cohort search {expression!r}: {rtype!r} is not a FHIR resource type")
    query = parse_qsl(qs, keep_blank_values=True)
    for k, _ in query:
        if k.split(":", 1)[0] in _RESULT_PARAMS:
            raise Invalid(f"cohort search {expression!r}: {k} is a result parameter, not a criterion")
    return rtype, query


# ---------------------------------------------------------------- authorization


def require_population_access(ctx: FhirContext, principal: Principal, types: Sequence[str]) -> None:
    """A cohort ranges over every patient: a patient-confined token (``patient/...``) may not run one.

    Searches already confine what a principal sees; refusing outright is clearer than a "cohort" of
    the launch patient alone, and keeps the count from answering questions about the compartment.
    """
    for t in dict.fromkeys([*types, "Patient"]):
        grants = ctx.guard.read_filter(principal, t)
        if grants is not None and not any(g.patient is None for g in grants):
            raise Forbidden(f"running a cohort needs population-level read access to {t} "
                            "(a user/ or system/ scope); patient-scoped access is not enough")


# ---------------------------------------------------------------- members


def search_members(ctx: FhirContext, conn: Connection, principal: Principal, expression: str) -> list[str]:
    """Patient ids matched by a FHIR search, through the server's own search engine and guard.

    Searches on other types resolve to their ``subject`` or ``patient`` when that is a Patient.
    """
    rtype, query = parse_search(expression)
    return sorted({pid for s in matching(ctx, conn, principal, rtype, query)
                   if (pid := _patient_of(s, rtype)) is not None})


def check_search(ctx: FhirContext, conn: Connection, principal: Principal, expression: str) -> None:
    """Plan the search without running it: unknown parameters and bad values raise ``Invalid``."""
    rtype, query = parse_search(expression)
    _conditions(ctx, conn, principal, rtype, query)


def _conditions(ctx: FhirContext, conn: Connection, principal: Principal, rtype: str,
                query: list[tuple[str, str]]) -> list[Any]:
    # The search engine's private planner helpers: the same access filter and terminology as
    # GET [type]?..., so a cohort can never see more than the caller's own search would.
    from medcloud.fhir.search import _access, _terminology
    from medcloud.fhir.search.parse import WarnFn
    from medcloud.fhir.search.plan import Planner, base_conditions
    from medcloud.storage.schema import resources

    planner = Planner(base=ctx.settings.base_url.rstrip("/"), now_us=ctx.clock(), warn=WarnFn(strict=True),
                      access=_access(ctx, principal), terminology=_terminology(ctx, conn))
    return [*base_conditions(resources, (rtype,)), *planner.restrict(resources, (rtype,)),
            *planner.conditions(resources, (rtype,), query)]


def matching(ctx: FhirContext, conn: Connection, principal: Principal, rtype: str,
              query: list[tuple[str, str]]) -> Iterator[Stored]:
    from medcloud.storage.schema import resources

    conds = _conditions(ctx, conn, principal, rtype, query)
    after = 0
    while True:
        stmt = (select(resources.c.rid).where(*conds, resources.c.rid > after)
                .order_by(resources.c.rid).limit(_BATCH))
        rids = [r for (r,) in conn.execute(stmt)]
        if not rids:
            return
        after = rids[-1]
        yield from (s for s in ctx.store.read_rids(conn, rids) if ctx.guard.can_read(principal, s))


def _patient_of(s: Stored, rtype: str) -> str | None:
    if rtype == "Patient":
        return s.id
    doc = orjson.loads(s.content or b"{}")
    for key in ("subject", "patient", "beneficiary"):
        ref = (doc.get(key) or {}).get("reference") if isinstance(doc.get(key), dict) else None
        if isinstance(ref, str) and "Patient/" in ref:
            return ref.split("Patient/", 1)[1].split("/")[0]
    return None


def sql_members(definition: CohortDefinition, sources: Mapping[str, Source]) -> list[str]:
    """Patient ids from the cohort's SQL, each view registered as a DuckDB table under its ``name``.

    The query must return a ``patient_id`` column (or exactly one column); ids may be bare or
    ``Patient/<id>`` references, as ``getReferenceKey()``/``getResourceKey()`` give them.
    """
    import duckdb

    from medcloud.analytics.engines.duckdb import DuckDBEngine

    with DuckDBEngine() as engine:
        for view in definition.views:
            name = view_name(view)
            query, _ = engine.sql(view, sources[name], typed=True)
            engine.con.execute(f'CREATE TEMP TABLE "{name}" AS {query}')
        sandbox(engine.con)
        try:
            cur = engine.con.execute(definition.expression)
            columns = [d[0] for d in cur.description or []]
            if PATIENT_COLUMN in columns:
                idx = columns.index(PATIENT_COLUMN)
            elif len(columns) == 1:
                idx = 0
            else:
                raise Invalid(f"the cohort SQL must return a {PATIENT_COLUMN!r} column (it returned {columns})")
            rows = cur.fetchall()
        except duckdb.Error as e:
            raise Invalid(f"the cohort SQL failed: {str(e).splitlines()[0]}") from e
    ids = {str(r[idx]).split("Patient/")[-1] for r in rows if r[idx] is not None}
    return sorted(ids)


def sandbox(con: Any) -> None:
    """Confine a DuckDB connection to the tables it already holds before running a user's SQL.

    No file or network access (``read_csv('/etc/passwd')``, ``COPY ... TO``, ``ATTACH``, extension
    loading), and the setting cannot be turned back on from the query.
    """
    con.execute("SET enable_external_access = false")
    con.execute("SET lock_configuration = true")


# ---------------------------------------------------------------- storage as Group resources


def read_definition(ctx: FhirContext, conn: Connection, principal: Principal, cohort_id: str) -> tuple[
        CohortDefinition, Stored]:
    s = ctx.store.read(conn, "Group", cohort_id)
    if s is None or s.deleted or s.content is None:
        raise NotFound(f"no cohort Group/{cohort_id}")
    ctx.guard.check_read(principal, s)
    return CohortDefinition.from_group(orjson.loads(s.content)), s


def save_definition(ctx: FhirContext, conn: Connection, principal: Principal,
                    definition: CohortDefinition) -> Stored:
    """Create or version the definition Group (``Group/<id>``, actual=false)."""
    definition.check()
    return _put(ctx, conn, principal, definition.to_group())


def members_group(definition: CohortDefinition, source: Stored, members: Sequence[str]) -> dict[str, Any]:
    group: dict[str, Any] = {
        "resourceType": "Group", "id": definition.id + MEMBERS_SUFFIX,
        "extension": [{"url": EXT_DEFINITION, "valueReference": {
            "reference": f"Group/{definition.id}/_history/{source.version}"}}],
        "type": "person", "actual": True, "quantity": len(members),
    }
    if definition.title:
        group["name"] = definition.title
    if members:
        group["member"] = [{"entity": {"reference": f"Patient/{m}"}} for m in members]
    return group


def materialise(ctx: FhirContext, conn: Connection, principal: Principal, definition: CohortDefinition,
                source: Stored, members: Sequence[str]) -> Stored:
    """Write the run as a new version of ``Group/<id>-members`` (actual=true)."""
    return _put(ctx, conn, principal, members_group(definition, source, members))


def _put(ctx: FhirContext, conn: Connection, principal: Principal, group: dict[str, Any]) -> Stored:
    from medcloud.fhir.interactions._write import new_version, write_one

    gid = group["id"]
    current = ctx.store.read(conn, "Group", gid, lock=True)
    if current is None:
        ctx.db.dialect.lock_key(conn, f"res:Group/{gid}")  # as update-as-create does
        current = ctx.store.read(conn, "Group", gid, lock=True)
    if current is not None:
        ctx.guard.check_read(principal, current)
    ctx.guard.check_write(principal, "Group", group)
    version = current.version + 1 if current is not None else 1
    return write_one(ctx, conn, new_version(ctx, group, gid, version, "PUT", ctx.clock()))


def list_definitions(ctx: FhirContext, conn: Connection, principal: Principal) -> list[tuple[CohortDefinition, Stored]]:
    out = []
    for s in matching(ctx, conn, principal, "Group", [("actual", "false")]):
        doc = orjson.loads(s.content or b"{}")
        if any(e.get("url") in (EXT_EXPRESSION, EXT_SQL) for e in doc.get("extension") or []):
            try:
                out.append((CohortDefinition.from_group(doc), s))
            except Invalid:
                continue  # a hand-edited Group that no longer parses is not listed as a cohort
    return sorted(out, key=lambda p: p[0].id)
