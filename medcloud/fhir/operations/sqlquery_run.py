"""``$sqlquery-run`` (SQL-on-FHIR v2 SQLQueryRun): registered here, implemented in
``medcloud/analytics/server/sqlquery_run.py``; system, ``Library`` type and instance level."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from medcloud.fhir.operations import Operation, Target, register

if TYPE_CHECKING:
    from medcloud.fhir.context import FhirContext
    from medcloud.fhir.exchange import FhirRequest, FhirResponse

# Spelled as operations-capability names the spec's other operations ($run, $viewdefinition-export).
DEFINITION = "http://sql-on-fhir.org/OperationDefinition/$sqlquery-run"


def run(ctx: FhirContext, conn: Any, req: FhirRequest, target: Target) -> FhirResponse:
    from medcloud.analytics.server.sqlquery_run import run as run_query

    return run_query(ctx, conn, req, target)


register(Operation("sqlquery-run", run, system=True, types=("Library",), instance_types=("Library",),
                   own_transaction=True, methods=("POST",), definition=DEFINITION))
