"""``POST Group/[id]/$cohort-run``: evaluate a saved cohort definition and materialise its members.

``Group/[id]`` is a cohort definition (``actual=false``, analytics/cohorts.py). The run evaluates
it over the store with the caller's own authorization (a FHIR search through the search engine and
guard; SQL cohorts read their views' resources the same way), refuses patient-confined tokens, and
writes a new version of ``Group/[id]-members`` (``actual=true``), which it returns (200, Location of
that version). Takes no parameters. Defining a cohort is a plain ``PUT Group/[id]`` (or
``medcloud cohort define``), so definitions are versioned like any resource.
"""

from __future__ import annotations

import orjson
from sqlalchemy import Connection

from medcloud.analytics import cohorts
from medcloud.errors import Invalid
from medcloud.fhir.context import FhirContext
from medcloud.fhir.exchange import FhirRequest, FhirResponse
from medcloud.fhir.interactions._write import written
from medcloud.fhir.operations import Operation, Target, register

DEFINITION = "https://medcloud.dev/fhir/OperationDefinition/Group-cohort-run"


def cohort_run(ctx: FhirContext, conn: Connection | None, req: FhirRequest, target: Target) -> FhirResponse:
    assert target.rid_id is not None
    if req.query or (isinstance(req.body, dict) and req.body.get("parameter")):
        raise Invalid("$cohort-run takes no parameters")
    # Evaluate in a read transaction, write in a short one: a long evaluation must not hold
    # SQLite's single writer lock (or a PostgreSQL write transaction) while it reads the store.
    with ctx.db.read() as rconn:
        definition, stored = cohorts.read_definition(ctx, rconn, req.principal, target.rid_id)
        members = _evaluate(ctx, rconn, req, definition)
    with ctx.db.write() as wconn:
        run = cohorts.materialise(ctx, wconn, req.principal, definition, stored, members)
    resp = written(req, run, 200)
    resp.resource = orjson.loads(run.content or b"{}")
    return resp


def _evaluate(ctx: FhirContext, conn: Connection, req: FhirRequest, definition: cohorts.CohortDefinition) -> list[str]:
    if definition.language == cohorts.FHIR_QUERY:
        rtype, _ = cohorts.parse_search(definition.expression)
        cohorts.require_population_access(ctx, req.principal, [rtype])
        return cohorts.search_members(ctx, conn, req.principal, definition.expression)
    from medcloud.analytics.server.run import readable_source
    from medcloud.analytics.viewdef import parse_view

    types = {cohorts.view_name(v): parse_view(v).resource for v in definition.views}
    cohorts.require_population_access(ctx, req.principal, list(types.values()))
    # Streamed from the store in batches (what the caller may read), not loaded into Python first.
    sources = {name: readable_source(ctx, req, t) for name, t in types.items()}
    return cohorts.sql_members(definition, sources)


register(Operation("cohort-run", cohort_run, types=(), instance_types=("Group",), writes=True,
                   own_transaction=True, methods=("POST",), definition=DEFINITION))
