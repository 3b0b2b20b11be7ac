"""patch and conditional patch (http.html#patch): JSON Patch and FHIRPath Patch."""

from __future__ import annotations

from sqlalchemy import Connection

from medcloud.errors import NotSupported
from medcloud.fhir.context import FhirContext
from medcloud.fhir.exchange import FhirRequest, FhirResponse


def patch(ctx: FhirContext, conn: Connection, req: FhirRequest, rtype: str, rid_id: str) -> FhirResponse:
    raise NotSupported("patch is not available yet")


def conditional_patch(ctx: FhirContext, conn: Connection, req: FhirRequest, rtype: str) -> FhirResponse:
    raise NotSupported("patch is not available yet")
