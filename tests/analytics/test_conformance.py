"""The SQL-on-FHIR v2 conformance suite, one pytest case per test (tests/conformance/sql-on-fhir-v2).

Nothing is skipped or xfailed: every vendored case must pass on DuckDB. The pass count is the
number of cases pytest reports for this module.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from medcloud.analytics.conformance import CaseResult, report, run_file, run_suite, same_rows, suite_files
from medcloud.analytics.engines._sources import ResourcesSource
from medcloud.analytics.engines.duckdb import DuckDBEngine

SUITE = Path(__file__).parents[1] / "conformance" / "sql-on-fhir-v2"


def _cases() -> list[tuple[Path, int, str]]:
    out = []
    for f in suite_files(SUITE):
        for i, case in enumerate(json.loads(f.read_text(encoding="utf-8"))["tests"]):
            out.append((f, i, f"{f.relative_to(SUITE)}::{case['title']}"))
    return out


CASES = _cases()


@pytest.fixture(scope="module")
def engine() -> Iterator[DuckDBEngine]:
    with DuckDBEngine() as e:
        yield e


@pytest.fixture(scope="module")
def sources() -> dict[Path, ResourcesSource]:
    return {}


@pytest.mark.parametrize(("path", "index"), [(p, i) for p, i, _ in CASES], ids=[n for _, _, n in CASES])
def test_conformance_case(
    path: Path, index: int, engine: DuckDBEngine, sources: dict[Path, ResourcesSource]
) -> None:
    suite = json.loads(path.read_text(encoding="utf-8"))
    case = suite["tests"][index]
    source = sources.setdefault(path, ResourcesSource(tuple(suite["resources"])))
    if case.get("expectError"):
        from medcloud.errors import MedcloudError

        with pytest.raises(MedcloudError):
            engine.run(case["view"], source)
        return
    result = engine.run(case["view"], source)
    if "expectColumns" in case:
        assert list(result.columns) == case["expectColumns"]
    if "expectCount" in case:
        assert len(result.rows) == case["expectCount"]
    else:
        assert same_rows(case["expect"], result.rows) == ""


def test_vendored_suite_is_not_empty() -> None:
    assert len(CASES) >= 130
    assert {p.name for p, _, _ in CASES} >= {
        "basic.json",
        "foreach.json",
        "union.json",
        "row_index.json",
        "repeat.json",
    }


def test_report_has_the_official_shape(engine: DuckDBEngine) -> None:
    results = run_file(SUITE / "fn_first.json", engine)
    assert report(results) == {
        "fn_first.json": {"tests": [{"name": r.name, "result": {"passed": True}} for r in results]}
    }


def test_failing_case_is_reported_as_failed_not_raised(engine: DuckDBEngine, tmp_path: Path) -> None:
    suite = {
        "title": "t",
        "resources": [{"resourceType": "Patient", "id": "p1"}],
        "tests": [
            {
                "title": "wrong expectation",
                "view": {"resource": "Patient", "select": [{"column": [{"name": "id", "path": "id"}]}]},
                "expect": [{"id": "p2"}],
            },
            {
                "title": "error expected but none",
                "view": {"resource": "Patient", "select": [{"column": [{"name": "id", "path": "id"}]}]},
                "expectError": True,
            },
        ],
    }
    (tmp_path / "t.json").write_text(json.dumps(suite))
    results = run_suite(tmp_path, engine)
    assert [r.passed for r in results] == [False, False]
    assert all(isinstance(r, CaseResult) and r.reason for r in results)
