"""batch Bundles (http.html#transaction): independent entries, each in its own transaction.

Each entry goes through ``router.handle`` exactly like a single request: its own transaction, error
translation and authorization, so one failing entry only fails itself. Entries may not depend on
each other (http.html#brules), so a reference to another entry's fullUrl is an error for that entry.
"""

from __future__ import annotations

from typing import Any

from medcloud.errors import Invalid, MedcloudError
from medcloud.fhir import router
from medcloud.fhir.bundles import bundle
from medcloud.fhir.context import FhirContext
from medcloud.fhir.exchange import FhirRequest, FhirResponse, error_response
from medcloud.fhir.interactions._entries import ORDER, Entry, parse_entry, preferred_return, response_entry
from medcloud.fhir.interactions._references import placeholders


def run(ctx: FhirContext, req: FhirRequest, raw_entries: list[Any]) -> FhirResponse:
    """Answer every entry of a batch; the batch-response lists them in the request's order."""
    now = ctx.clock()
    parsed: list[Entry | None] = []
    responses: list[FhirResponse | None] = [None] * len(raw_entries)
    for i, raw in enumerate(raw_entries):
        try:
            parsed.append(parse_entry(raw, i, req.base_url))
        except MedcloudError as err:
            parsed.append(None)
            responses[i] = error_response(err)
    urns = {e.full_url for e in parsed if e is not None and e.full_url and e.full_url.startswith("urn:")}
    for e in sorted((e for e in parsed if e is not None), key=lambda e: (ORDER[e.method], e.index)):
        responses[e.index] = _run_entry(ctx, req, e, urns)
    prefer = preferred_return(req)
    out = []
    for i, resp in enumerate(responses):
        assert resp is not None
        out.append(response_entry(req.base_url, parsed[i], resp, prefer))
        responses[i] = None
    return FhirResponse(resource=bundle("batch-response", out, bundle_id=ctx.new_id(), timestamp_us=now))


def _run_entry(ctx: FhirContext, req: FhirRequest, e: Entry, urns: set[str]) -> FhirResponse:
    if urns and e.body is not None:
        linked = sorted(placeholders(e.body) & (urns - {e.full_url}))
        if linked:
            return error_response(Invalid(
                f"Bundle.entry[{e.index}] refers to {linked[0]}, another entry of this batch; entries of a batch "
                "must not depend on each other (use a transaction)", expression=f"Bundle.entry[{e.index}].resource"))
    return router.handle(ctx, e.request(req))
