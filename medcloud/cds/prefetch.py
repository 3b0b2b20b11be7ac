"""Prefetch templates (CDS Hooks 2.0 "Prefetch Template"): fill the tokens, use what the EHR sent,
fetch what it did not from ``fhirServer`` with ``fhirAuthorization``.

Tokens are ``{{context.X}}`` (a simple context member) and ``{{userPractitionerId}}``,
``{{userPractitionerRoleId}}``, ``{{userPatientId}}``, ``{{userRelatedPersonId}}`` (from
``context.userId``). A template whose token has no value is not fetched. A key the EHR sent as
null means "nothing there": it is not fetched again.

``FhirSource`` is where missing keys come from: ``LocalSource`` runs the query through this
server's own router with the Principal of the EHR's access token (so the token's scopes and patient
compartment apply exactly as for any FHIR client), ``RemoteSource`` GETs it from another server.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any, Protocol
from urllib.parse import parse_qsl

from medcloud.cds.request import HookRequest
from medcloud.errors import PreconditionFailed

_TOKEN = re.compile(r"\{\{\s*([A-Za-z0-9_.]+)\s*\}\}")
_USER_TOKENS = {"userPractitionerId": "Practitioner", "userPractitionerRoleId": "PractitionerRole",
                "userPatientId": "Patient", "userRelatedPersonId": "RelatedPerson"}
MAX_FETCH_BYTES = 32 * 1024 * 1024


class FhirSource(Protocol):
    def get(self, query: str) -> dict[str, Any] | None:
        """GET ``query`` (relative to the FHIR base): a resource or a Bundle; None when not found."""


def fill(template: str, request: HookRequest) -> str | None:
    """The template with its tokens replaced; None when a token has no value in this request."""
    missing = False

    def value(m: re.Match[str]) -> str:
        nonlocal missing
        name = m.group(1)
        if name.startswith("context."):
            v = request.context.get(name[len("context."):])
            if isinstance(v, str | int) and not isinstance(v, bool):
                return str(v)
        elif name in _USER_TOKENS:
            user = str(request.context.get("userId", ""))
            rtype, _, rid = user.partition("/")
            if rtype == _USER_TOKENS[name] and rid:
                return rid
        missing = True
        return ""

    out = _TOKEN.sub(value, template)
    return None if missing else out


def resources(value: dict[str, Any] | None) -> list[dict[str, Any]]:
    """A prefetch value as resources: a Bundle's entries, a single resource, or nothing."""
    if not value:
        return []
    if value.get("resourceType") == "Bundle":
        return [e["resource"] for e in value.get("entry") or [] if isinstance(e, dict) and isinstance(e.get("resource"), dict)]
    if value.get("resourceType") == "OperationOutcome":
        return []
    return [value]


def resolve(templates: dict[str, str], request: HookRequest, source: Callable[[], FhirSource | None]
            ) -> tuple[dict[str, list[dict[str, Any]]], list[str]]:
    """Per prefetch key, its resources; and the keys that had to be fetched."""
    out: dict[str, list[dict[str, Any]]] = {}
    fetched: list[str] = []
    server: FhirSource | None = None
    for key, template in templates.items():
        if key in request.prefetch:
            out[key] = resources(request.prefetch[key])
            continue
        query = fill(template, request)
        if query is None:
            out[key] = []
            continue
        if server is None:
            server = source()
            if server is None:
                raise PreconditionFailed(f"prefetch {key!r} was not sent and the request gives no fhirServer and "
                                         "fhirAuthorization to fetch it with")
        out[key] = resources(server.get(query))
        fetched.append(key)
    return out, fetched


def split(query: str) -> tuple[str, list[tuple[str, str]]]:
    path, _, qs = query.partition("?")
    return path.strip("/"), parse_qsl(qs, keep_blank_values=True)


class FetchError(PreconditionFailed):
    """The FHIR server refused or failed a prefetch query."""

