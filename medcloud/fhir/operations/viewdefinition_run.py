"""``ViewDefinition/$run`` (SQL-on-FHIR v2): registered here, implemented in ``medcloud/analytics/server/run.py``.

The spec names the operation ``$run`` on the ViewDefinition type and instance (operations-capability)
and ``$viewdefinition-run`` in its OperationDefinition; both names are served, at type and instance
level (ViewDefinition is routed by ``analytics/server/views.py``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from medcloud.fhir.operations import Operation, Target, register

if TYPE_CHECKING:
    from medcloud.fhir.context import FhirContext
    from medcloud.fhir.exchange import FhirRequest, FhirResponse

DEFINITION = "http://sql-on-fhir.org/OperationDefinition/$run"


def run(ctx: FhirContext, conn: Any, req: FhirRequest, target: Target) -> FhirResponse:
    from medcloud.analytics.server.run import run as run_view

    return run_view(ctx, conn, req, target)


for _name in ("run", "viewdefinition-run"):
    register(Operation(_name, run, types=("ViewDefinition",), instance_types=("ViewDefinition",),
                       own_transaction=True, definition=DEFINITION, listed=_name == "run"))
