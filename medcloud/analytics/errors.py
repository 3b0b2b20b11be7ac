"""Analytics errors, placed in medcloud's one exception tree (medcloud/errors.py).

Invalid
├── ViewDefinitionError   the view itself is wrong; ``location`` is e.g. "select[0].column[2].path"
├── FhirPathSyntaxError   a path does not parse; carries the 0-based ``position``
└── SourceError           input data is malformed (NDJSON lines, reported with file and line)
Unprocessable
└── EvaluationError       the view is valid but the data breaks it (several values, no collection)
NotSupported
└── EngineUnavailable     e.g. the Spark engine is not installed or not built yet
"""

from __future__ import annotations

from dataclasses import dataclass

from medcloud.errors import Invalid, NotSupported, Unprocessable


class ViewDefinitionError(Invalid):
    def __init__(self, location: str, message: str):
        super().__init__(f"{location}: {message}" if location else message, expression=location or None)
        self.location = location


class FhirPathSyntaxError(Invalid):
    def __init__(self, expression: str, position: int, message: str):
        super().__init__(f"FHIRPath syntax error at {position + 1}: {message} in {expression!r}")
        self.fhirpath = expression
        self.position = position


@dataclass(frozen=True, slots=True)
class BadLine:
    file: str
    line: int  # 1-based
    message: str

    def __str__(self) -> str:
        return f"{self.file}:{self.line}: {self.message}"


class SourceError(Invalid):
    def __init__(self, message: str, bad_lines: tuple[BadLine, ...] = ()):
        detail = "; ".join(str(b) for b in bad_lines[:10])
        more = f" (and {len(bad_lines) - 10} more)" if len(bad_lines) > 10 else ""
        super().__init__(f"{message}: {detail}{more}" if detail else message)
        self.bad_lines = bad_lines


class EvaluationError(Unprocessable):
    pass


class EngineUnavailable(NotSupported):
    pass
