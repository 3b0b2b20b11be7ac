"""batch and transaction Bundles (http.html#transaction)."""

from __future__ import annotations

from medcloud.errors import NotSupported
from medcloud.fhir.context import FhirContext
from medcloud.fhir.exchange import FhirRequest, FhirResponse


def process(ctx: FhirContext, req: FhirRequest) -> FhirResponse:
    raise NotSupported("batch and transaction are not available yet")
