"""The FHIR exchange the domain works on: a plain request in, a plain response out.

The HTTP edge (``fhir/http.py``) and Bundle processing (batch/transaction entries) both build
``FhirRequest`` values and call the router, so an entry in a transaction is handled exactly like
the same request sent alone (cf. Medplum's fhir-router).
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from medcloud.errors import Issue, MedcloudError


@dataclass(frozen=True, slots=True)
class Principal:
    """Who is asking. The security layer fills in scopes and the launch patient."""

    subject: str = "anonymous"
    client_id: str | None = None
    scopes: tuple[str, ...] = ()
    patient: str | None = None
    source_ip: str | None = None
    fhir_user: str | None = None  # the token's ``fhirUser`` claim (SMART), e.g. "Practitioner/123"


# medcloud itself (loader, imaging link, CLI export): full access, recorded as "system".
SYSTEM = Principal(subject="system", client_id="medcloud", scopes=("system/*.cruds", "medcloud/admin"))
# Who asks when authentication is switched off (``--no-auth``, loopback only).
ANONYMOUS_SCOPES = ("system/*.cruds", "medcloud/admin")


@dataclass(slots=True)
class FhirRequest:
    method: str  # GET POST PUT PATCH DELETE HEAD
    path: str  # relative to the FHIR base, no leading slash: "Patient/1/_history/2"
    query: list[tuple[str, str]] = field(default_factory=list)
    headers: Mapping[str, str] = field(default_factory=dict)  # lower-case names
    body: Any = None  # parsed JSON (dict) or raw bytes for Binary
    content_type: str | None = None
    base_url: str = "http://localhost/fhir"
    principal: Principal = SYSTEM
    in_bundle: bool = False

    def header(self, name: str) -> str | None:
        return self.headers.get(name.lower())

    def params(self, name: str) -> list[str]:
        return [v for k, v in self.query if k == name]

    def param(self, name: str) -> str | None:
        for k, v in self.query:
            if k == name:
                return v
        return None


@dataclass(slots=True)
class FhirResponse:
    status: int = 200
    resource: dict[str, Any] | None = None
    raw: bytes | None = None  # pre-serialised JSON of ``resource`` (stored bytes)
    headers: dict[str, str] = field(default_factory=dict)
    # The stored version this response is about (for Bundle entry.response and Prefer handling).
    location: str | None = None
    etag: str | None = None
    last_modified: str | None = None
    # A body other than FHIR JSON: a file streamed from disk (Bulk Data NDJSON) and/or its media type.
    file: Path | None = None
    media_type: str | None = None
    # A body produced while it is sent (a decrypted export file); give Content-Length in ``headers``.
    stream: Iterator[bytes] | None = None


def operation_outcome(issues: list[Issue]) -> dict[str, Any]:
    out = []
    for i in issues:
        entry: dict[str, Any] = {"severity": i.severity, "code": i.code, "diagnostics": i.diagnostics}
        if i.expression:
            entry["expression"] = list(i.expression)
        out.append(entry)
    return {"resourceType": "OperationOutcome", "issue": out}


def outcome_message(message: str, *, code: str = "informational", severity: str = "information") -> dict[str, Any]:
    return operation_outcome([Issue(message, code, severity)])


STATUS_BY_CATEGORY = {
    "invalid": 400,
    "unprocessable": 422,
    "too-large": 413,
    "not-found": 404,
    "gone": 410,
    "unsupported": 400,
    "method-not-allowed": 405,
    "not-acceptable": 406,
    "unsupported-media": 415,
    "conflict": 409,
    "precondition-failed": 412,
    "multiple-matches": 412,
    "forbidden": 403,
    "unauthorized": 401,
    "busy": 503,
    "fault": 500,
}


def error_response(err: MedcloudError) -> FhirResponse:
    return FhirResponse(status=STATUS_BY_CATEGORY.get(err.category, 500), resource=operation_outcome(err.issues))
