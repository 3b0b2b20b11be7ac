"""The one exception tree of medcloud.

Domain code raises these; each edge (FHIR HTTP, DICOMweb, DIMSE, CLI) translates the
``category`` into its own vocabulary (HTTP status + OperationOutcome issue code, DICOM status,
exit code). Nothing below the edges knows about HTTP.

    MedcloudError              category "fault"        -> 500 / exception
    ├── Invalid                "invalid"               -> 400 / invalid
    │   ├── Unprocessable      "unprocessable"         -> 422 / processing
    │   └── TooLarge           "too-large"             -> 413 / too-costly
    ├── NotFound               "not-found"             -> 404 / not-found
    │   └── Gone               "gone"                  -> 410 / deleted
    ├── NotSupported           "unsupported"           -> 400 / not-supported
    │   ├── MethodNotAllowed   "method-not-allowed"    -> 405 / not-supported
    │   ├── NotAcceptable      "not-acceptable"        -> 406 / not-supported
    │   └── UnsupportedMedia   "unsupported-media"     -> 415 / not-supported
    ├── Conflict               "conflict"              -> 409 / conflict
    │   └── PreconditionFailed "precondition-failed"   -> 412 / conflict
    ├── MultipleMatches        "multiple-matches"      -> 412 / multiple-matches
    ├── Forbidden              "forbidden"             -> 403 / forbidden
    ├── Unauthorized           "unauthorized"          -> 401 / login
    └── Busy                   "busy"                  -> 503 / transient
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True, slots=True)
class Issue:
    """One problem, in OperationOutcome terms (severity, code, diagnostics, FHIRPath expression)."""

    diagnostics: str
    code: str = "invalid"
    severity: str = "error"
    expression: tuple[str, ...] = field(default_factory=tuple)


class MedcloudError(Exception):
    category = "fault"
    issue_code = "exception"

    def __init__(self, message: str, *, issues: list[Issue] | None = None, expression: str | None = None):
        super().__init__(message)
        self.message = message
        if issues is None:
            issues = [Issue(message, self.issue_code, "error", (expression,) if expression else ())]
        self.issues = issues


class Invalid(MedcloudError):
    category = "invalid"
    issue_code = "invalid"


class Unprocessable(Invalid):
    category = "unprocessable"
    issue_code = "processing"


class TooLarge(Invalid):
    category = "too-large"
    issue_code = "too-costly"


class NotFound(MedcloudError):
    category = "not-found"
    issue_code = "not-found"


class Gone(NotFound):
    category = "gone"
    issue_code = "deleted"


class NotSupported(MedcloudError):
    category = "unsupported"
    issue_code = "not-supported"


class MethodNotAllowed(NotSupported):
    category = "method-not-allowed"


class NotAcceptable(NotSupported):
    category = "not-acceptable"


class UnsupportedMedia(NotSupported):
    category = "unsupported-media"


class Conflict(MedcloudError):
    category = "conflict"
    issue_code = "conflict"


class PreconditionFailed(Conflict):
    category = "precondition-failed"


class MultipleMatches(MedcloudError):
    category = "multiple-matches"
    issue_code = "multiple-matches"


class Forbidden(MedcloudError):
    category = "forbidden"
    issue_code = "forbidden"


class Unauthorized(MedcloudError):
    category = "unauthorized"
    issue_code = "login"


class Busy(MedcloudError):
    category = "busy"
    issue_code = "transient"
