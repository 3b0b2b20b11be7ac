"""A CDS Hooks 2.0 service request, checked: what the EHR sent, or a clear ``Invalid`` saying what is wrong.

Fields (CDS Hooks 2.0 "HTTP Request"): ``hook`` and ``hookInstance`` are required, ``fhirServer``
is required when ``fhirAuthorization`` is given, ``context`` is an object whose required members
depend on the hook, ``prefetch`` maps the service's prefetch keys to a resource, a Bundle or null.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

from medcloud.errors import Invalid

# hook -> context members it requires (CDS Hooks 2.0 hook definitions)
HOOK_CONTEXT: dict[str, tuple[str, ...]] = {
    "patient-view": ("userId", "patientId"),
    "order-select": ("userId", "patientId", "selections", "draftOrders"),
    "order-sign": ("userId", "patientId", "draftOrders"),
}
_ID = re.compile(r"^[A-Za-z0-9\-.]{1,64}$")  # FHIR id


@dataclass(frozen=True)
class FhirAuthorization:
    access_token: str
    token_type: str
    scope: str
    subject: str
    patient: str | None = None


@dataclass(frozen=True)
class HookRequest:
    hook: str
    hook_instance: str
    context: dict[str, Any]
    fhir_server: str | None = None
    authorization: FhirAuthorization | None = None
    prefetch: dict[str, Any] = field(default_factory=dict)

    @property
    def patient_id(self) -> str:
        return str(self.context["patientId"])


def parse(body: Any, expected_hook: str) -> HookRequest:
    """Check a request body for a service of ``expected_hook``; raises Invalid naming the problem."""
    if not isinstance(body, dict):
        raise Invalid("the request body must be a JSON object (a CDS Hooks request)")
    hook = body.get("hook")
    if not isinstance(hook, str) or not hook:
        raise Invalid("'hook' is required: the name of the hook that triggered this call")
    if hook != expected_hook:
        raise Invalid(f"this service answers the {expected_hook!r} hook, not {hook!r}")
    instance = body.get("hookInstance")
    if not isinstance(instance, str) or not instance:
        raise Invalid("'hookInstance' is required: a UUID for this hook call")
    context = body.get("context")
    if not isinstance(context, dict):
        raise Invalid("'context' is required and must be an object")
    missing = [k for k in HOOK_CONTEXT.get(hook, ()) if k not in context]
    if missing:
        raise Invalid(f"context of {hook} misses {', '.join(missing)}")
    if not isinstance(context.get("patientId"), str) or not _ID.match(context["patientId"]):
        raise Invalid("context.patientId must be a FHIR id")
    if hook in ("order-select", "order-sign"):
        orders = context.get("draftOrders")
        if not isinstance(orders, dict) or orders.get("resourceType") != "Bundle":
            raise Invalid("context.draftOrders must be a FHIR Bundle")
        if hook == "order-select" and not (isinstance(context.get("selections"), list)
                                           and all(isinstance(s, str) for s in context["selections"])):
            raise Invalid("context.selections must be an array of references (strings)")
    server = body.get("fhirServer")
    if server is not None and (not isinstance(server, str) or not server.startswith(("http://", "https://"))):
        raise Invalid("'fhirServer' must be an http(s) URL")
    auth = _authorization(body.get("fhirAuthorization"))
    if auth is not None and server is None:
        raise Invalid("'fhirServer' is required when 'fhirAuthorization' is given")
    prefetch = body.get("prefetch", {})
    if prefetch is None:
        prefetch = {}
    if not isinstance(prefetch, dict):
        raise Invalid("'prefetch' must be an object of prefetch keys")
    for key, value in prefetch.items():
        if value is not None and not (isinstance(value, dict) and isinstance(value.get("resourceType"), str)):
            raise Invalid(f"prefetch.{key} must be a FHIR resource, a Bundle or null")
    return HookRequest(hook, instance, context, server.rstrip("/") if server else None, auth, prefetch)


def _authorization(raw: Any) -> FhirAuthorization | None:
    if raw is None:
        return None
    if not isinstance(raw, dict):
        raise Invalid("'fhirAuthorization' must be an object")
    for key in ("access_token", "token_type", "scope", "subject"):
        if not isinstance(raw.get(key), str) or not raw[key]:
            raise Invalid(f"fhirAuthorization.{key} is required (a string)")
    if raw["token_type"].lower() != "bearer":
        raise Invalid("fhirAuthorization.token_type must be 'Bearer'")
    patient = raw.get("patient")
    return FhirAuthorization(raw["access_token"], "Bearer", raw["scope"], raw["subject"],
                             patient if isinstance(patient, str) else None)
