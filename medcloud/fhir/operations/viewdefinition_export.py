"""``$viewdefinition-export`` (SQL-on-FHIR v2): registered here, implemented in ``medcloud/analytics/server``.

Kick-off at system, ViewDefinition type and instance level (``analytics/server/export.py``); the
job and its status, result and file endpoints (``analytics/server/export_job.py``) are helper
endpoints at the system level, not operations of their own.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from medcloud.fhir.operations import Operation, Target, register

if TYPE_CHECKING:
    from medcloud.fhir.context import FhirContext
    from medcloud.fhir.exchange import FhirRequest, FhirResponse

DEFINITION = "http://sql-on-fhir.org/OperationDefinition/$viewdefinition-export"


def kickoff(ctx: FhirContext, conn: Any, req: FhirRequest, target: Target) -> FhirResponse:
    from medcloud.analytics.server.export import kickoff as start

    return start(ctx, conn, req, target)


def status(ctx: FhirContext, conn: Any, req: FhirRequest, target: Target) -> FhirResponse:
    from medcloud.analytics.server.export_job import poll_status

    return poll_status(ctx, conn, req, target)


def result(ctx: FhirContext, conn: Any, req: FhirRequest, target: Target) -> FhirResponse:
    from medcloud.analytics.server.export_job import result as answer

    return answer(ctx, conn, req, target)


def export_file(ctx: FhirContext, conn: Any, req: FhirRequest, target: Target) -> FhirResponse:
    from medcloud.analytics.server.export_job import export_file as serve

    return serve(ctx, conn, req, target)


register(Operation("viewdefinition-export", kickoff, system=True, types=("ViewDefinition",),
                   instance_types=("ViewDefinition",), methods=("POST",), own_transaction=True,
                   definition=DEFINITION))
register(Operation("viewdefinition-export-status", status, system=True, types=(), instance_types=(),
                   methods=("GET", "DELETE"), own_transaction=True, listed=False))
register(Operation("viewdefinition-export-result", result, system=True, types=(), instance_types=(),
                   methods=("GET",), own_transaction=True, listed=False))
register(Operation("viewdefinition-export-file", export_file, system=True, types=(), instance_types=(),
                   methods=("GET",), own_transaction=True, listed=False))
