"""Run SQL-on-FHIR v2 conformance test files (https://github.com/FHIR/sql-on-fhir-v2/tree/master/tests,
schema: tests.schema.json) and produce the official test report:
``{"file.json": {"tests": [{"name": ..., "result": {"passed": true}}]}}``.

Rows compare as multisets (the spec gives no row order); ``expectColumns`` checks names and order;
``expectError`` passes only when the engine raises one of medcloud's errors, so an engine bug
(a crash) is never mistaken for a correctly rejected view.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from medcloud.analytics.engines._sources import ResourcesSource
from medcloud.errors import MedcloudError

__all__ = ["CaseResult", "load_cases", "report", "run_file", "run_suite"]


@dataclass(frozen=True, slots=True)
class CaseResult:
    file: str
    name: str
    passed: bool
    reason: str = ""


def _equal(a: Any, b: Any) -> bool:
    if isinstance(a, bool) or isinstance(b, bool):
        return a is b
    if isinstance(a, int | float) and isinstance(b, int | float):
        return abs(a - b) <= 1e-9 * max(1.0, abs(a), abs(b))
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(_equal(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(_equal(a[k], b[k]) for k in a)
    return bool(a == b)


def same_rows(expected: list[dict[str, Any]], actual: list[dict[str, Any]]) -> str:
    """'' when equal as multisets, else a short explanation."""
    if len(expected) != len(actual):
        return f"expected {len(expected)} rows, got {len(actual)}: {json.dumps(actual)[:500]}"
    remaining = list(actual)
    for row in expected:
        for i, candidate in enumerate(remaining):
            if _equal(row, candidate):
                del remaining[i]
                break
        else:
            return f"expected row {json.dumps(row)} not found in {json.dumps(actual)[:500]}"
    return ""


def _run_case(engine: Any, source: ResourcesSource, case: dict[str, Any]) -> str:
    try:
        result = engine.run(case["view"], source)
    except MedcloudError as exc:
        if case.get("expectError"):
            return ""
        return f"unexpected error: {exc}"
    if case.get("expectError"):
        return f"expected an error, got {len(result.rows)} rows"
    if "expectColumns" in case and list(result.columns) != case["expectColumns"]:
        return f"expected columns {case['expectColumns']}, got {list(result.columns)}"
    if "expectCount" in case:
        count = len(result.rows)
        return "" if count == case["expectCount"] else f"expected {case['expectCount']} rows, got {count}"
    return same_rows(case.get("expect", []), result.rows)


def load_cases(path: Path) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    suite = json.loads(path.read_text(encoding="utf-8"))
    return suite, list(suite.get("tests", []))


def run_file(path: Path, engine: Any) -> list[CaseResult]:
    suite, cases = load_cases(path)
    source = ResourcesSource(tuple(suite.get("resources", [])))
    results = []
    for case in cases:
        try:
            reason = _run_case(engine, source, case)
        except Exception as exc:  # an engine bug fails this case, not the whole suite
            reason = f"engine crashed: {type(exc).__name__}: {exc}"
        results.append(CaseResult(path.name, case.get("title", "?"), not reason, reason))
    return results


def suite_files(path: Path) -> list[Path]:
    if path.is_dir():
        return sorted(p for p in path.rglob("*.json") if p.name != "tests.schema.json")
    return [path]


def run_suite(path: Path, engine: Any) -> list[CaseResult]:
    return [r for f in suite_files(path) for r in run_file(f, engine)]


def report(results: Iterable[CaseResult]) -> dict[str, Any]:
    """The official report JSON for ``results``."""
    out: dict[str, Any] = {}
    for r in results:
        out.setdefault(r.file, {"tests": []})["tests"].append(
            {"name": r.name, "result": {"passed": r.passed}}
        )
    return out
