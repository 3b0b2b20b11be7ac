"""The Spark engine against DuckDB: every SQL-on-FHIR conformance case gives the same rows on both.

"Same" is the issue's byte-identical rule: each row is normalised to JSON (``json.dumps`` with sorted
keys, so 1 and 1.0 differ) and the two engines' rows must be equal as multisets; the rows must also
pass the test file's own expectation. One local SparkSession (local[2], no UI) serves the module;
it is marked slow and kept in one xdist worker.
"""

from __future__ import annotations

import csv
import json
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from medcloud.analytics.conformance import same_rows, suite_files
from medcloud.analytics.engines._sources import NdjsonSource, ResourcesSource
from medcloud.analytics.engines.duckdb import DuckDBEngine
from medcloud.analytics.engines.spark import SparkEngine, available
from medcloud.analytics.errors import EvaluationError, SourceError
from medcloud.errors import MedcloudError

pytestmark = [
    pytest.mark.slow,
    pytest.mark.xdist_group("spark"),
    pytest.mark.skipif(not available(), reason="pyspark is not installed (medcloud[spark])"),
    # pyspark 4.x warns about pandas 3 at session start; medcloud does not use pandas with Spark.
    pytest.mark.filterwarnings("ignore::FutureWarning"),
]

SUITE = Path(__file__).parents[1] / "conformance" / "sql-on-fhir-v2"


def _cases() -> list[tuple[Path, int, str]]:
    out = []
    for f in suite_files(SUITE):
        for i, case in enumerate(json.loads(f.read_text(encoding="utf-8"))["tests"]):
            out.append((f, i, f"{f.relative_to(SUITE)}::{case['title']}"))
    return out


CASES = _cases()


@pytest.fixture(scope="module")
def spark() -> Iterator[SparkEngine]:
    from medcloud.analytics.engines.spark import local_session

    # Conformance data is tiny: generating and compiling Java per query costs more than it saves.
    session = local_session(
        conf={"spark.sql.codegen.wholeStage": "false", "spark.sql.adaptive.enabled": "false"}
    )
    with SparkEngine(session) as engine:
        yield engine
    session.stop()


@pytest.fixture(scope="module")
def duck() -> Iterator[DuckDBEngine]:
    with DuckDBEngine() as engine:
        yield engine


@pytest.fixture(scope="module")
def sources() -> dict[Path, ResourcesSource]:
    return {}


def _normalised(rows: list[dict[str, Any]]) -> Counter[str]:
    return Counter(json.dumps(r, sort_keys=True) for r in rows)


@pytest.mark.parametrize(("path", "index"), [(p, i) for p, i, _ in CASES], ids=[n for _, _, n in CASES])
def test_conformance_case_gives_duckdb_rows_on_spark(
    path: Path, index: int, spark: SparkEngine, duck: DuckDBEngine, sources: dict[Path, ResourcesSource]
) -> None:
    suite = json.loads(path.read_text(encoding="utf-8"))
    case = suite["tests"][index]
    source = sources.setdefault(path, ResourcesSource(tuple(suite["resources"])))
    if case.get("expectError"):
        with pytest.raises(MedcloudError):
            spark.run(case["view"], source)
        return
    got = spark.run(case["view"], source)
    want = duck.run(case["view"], source)
    assert got.columns == want.columns
    assert _normalised(got.rows) == _normalised(want.rows)
    if "expectCount" in case:
        assert len(got.rows) == case["expectCount"]
    else:
        assert same_rows(case["expect"], got.rows) == ""


PATIENTS: list[dict[str, Any]] = [
    {
        "resourceType": "Patient",
        "id": "p1",
        "active": True,
        "birthDate": "1970-06",
        "name": [{"family": "A"}],
    },
    {"resourceType": "Patient", "id": "p2", "gender": "female", "name": [{"family": "B"}, {"family": "C"}]},
]
VIEW = {
    "resource": "Patient",
    "select": [
        {
            "column": [
                {"name": "id", "path": "getResourceKey()"},
                {"name": "active", "path": "active", "type": "boolean"},
            ]
        },
        {
            "forEachOrNull": "name",
            "column": [
                {"name": "family", "path": "family"},
                {"name": "i", "path": "%rowIndex", "type": "integer"},
            ],
        },
    ],
}


def _ndjson(folder: Path, lines: list[str]) -> NdjsonSource:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "Patient.ndjson").write_text("\n".join(lines) + "\n", encoding="utf-8")
    return NdjsonSource((folder,))


@pytest.mark.parametrize("fmt", ["csv", "ndjson", "json", "parquet"])
def test_write_gives_the_same_file_contents_as_duckdb(
    fmt: str, spark: SparkEngine, duck: DuckDBEngine, tmp_path: Path
) -> None:
    source = _ndjson(tmp_path / "in", [json.dumps(p) for p in PATIENTS])
    a = spark.write(VIEW, source, tmp_path / f"spark.{fmt}", fmt)  # type: ignore[arg-type]
    b = duck.write(VIEW, source, tmp_path / f"duck.{fmt}", fmt)  # type: ignore[arg-type]
    assert a.rows == b.rows == 3

    def load(p: Path) -> list[Any]:
        if fmt == "csv":
            with p.open(newline="") as fh:
                return sorted(map(str, csv.DictReader(fh)))
        if fmt == "ndjson":
            return sorted(json.dumps(json.loads(line), sort_keys=True) for line in p.read_text().splitlines())
        if fmt == "json":
            return sorted(json.dumps(r, sort_keys=True) for r in json.loads(p.read_text()))
        import duckdb

        rows = duckdb.connect().execute(f"SELECT * FROM read_parquet('{p}')").fetchall()
        return sorted(map(str, rows))

    assert load(a.path) == load(b.path)
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".partial")]


def test_malformed_ndjson_line_refuses_the_run_with_its_line_number(
    spark: SparkEngine, tmp_path: Path
) -> None:
    source = _ndjson(tmp_path, [json.dumps(PATIENTS[0]), "{not json"])
    with pytest.raises(SourceError, match=r"Patient.ndjson:2"):
        spark.run(VIEW, source)


def test_malformed_ndjson_line_is_skipped_and_reported_on_request(spark: SparkEngine, tmp_path: Path) -> None:
    _ndjson(tmp_path, [json.dumps(PATIENTS[0]), "{not json"])
    result = spark.run(VIEW, NdjsonSource((tmp_path,), on_error="skip"))
    assert [r["id"] for r in result.rows] == ["p1"]
    assert [b.line for b in result.skipped] == [2]


def test_several_values_in_a_plain_column_is_an_evaluation_error(spark: SparkEngine) -> None:
    view = {"resource": "Patient", "select": [{"column": [{"name": "f", "path": "name.family"}]}]}
    with pytest.raises(EvaluationError, match="several values"):
        spark.run(view, PATIENTS)


def test_sof_test_cli_runs_the_suite_on_spark(spark: SparkEngine, tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from medcloud.analytics.cli import app

    out = tmp_path / "report.json"
    result = CliRunner().invoke(
        app, ["test", str(SUITE / "fn_first.json"), "--engine", "spark", "--report", str(out)]
    )
    assert result.exit_code == 0, result.output
    assert "(spark)" in result.output
    report = json.loads(out.read_text())
    assert all(t["result"]["passed"] for t in report["fn_first.json"]["tests"])
    # the CLI reused the running session and did not stop it
    assert spark.spark.sql("SELECT 1 AS x").collect()[0]["x"] == 1


def test_sof_test_cli_exits_2_without_pyspark(monkeypatch: pytest.MonkeyPatch) -> None:
    from typer.testing import CliRunner

    from medcloud.analytics.cli import app

    monkeypatch.setattr("medcloud.analytics.engines.spark.available", lambda: False)
    result = CliRunner().invoke(app, ["test", str(SUITE / "fn_first.json"), "--engine", "spark"])
    assert result.exit_code == 2
    assert "pyspark" in result.output


def test_store_and_warehouse_sources_give_the_same_rows_as_duckdb(
    spark: SparkEngine, services: Any, tmp_path: Path
) -> None:
    """``sof run --engine spark --source DATA_DIR`` (and a ``sof sync`` folder): the store is read in
    keyset batches, spooled once to Parquet for Spark, and the spool is gone after the run."""
    from medcloud.analytics.server.store import StoreQuery, StoreSource
    from medcloud.analytics.server.warehouse import WarehouseSource, sync
    from medcloud.fhir import router
    from medcloud.fhir.exchange import FhirRequest

    view = {"resourceType": "ViewDefinition", "resource": "Patient", "status": "active",
            "select": [{"column": [{"name": "id", "path": "getResourceKey()"},
                                   {"name": "family", "path": "name.family.first()"}]}]}
    ids = []
    for family in ("Ames", "Baker", "Cole"):
        resp = router.handle(services.fhir, FhirRequest("POST", "Patient", [], body={
            "resourceType": "Patient", "name": [{"family": family}]}))
        ids.append(json.loads(resp.raw)["id"])
    router.handle(services.fhir, FhirRequest("DELETE", f"Patient/{ids[2]}", []))
    wanted = {(ids[0], "Ames"), (ids[1], "Baker")}
    store = StoreSource(services.db, StoreQuery("Patient"))
    with DuckDBEngine() as duck:
        assert {(r["id"], r["family"]) for r in duck.run(view, store).rows} == wanted
    assert {(r["id"], r["family"]) for r in spark.run(view, store).rows} == wanted
    out = spark.write(view, store, tmp_path / "p.csv", "csv")
    assert out.rows == 2 and not spark._spools  # the spool is removed with the run

    sync(services.db, tmp_path / "wh")
    assert {(r["id"], r["family"]) for r in spark.run(view, WarehouseSource(tmp_path / "wh")).rows} == wanted
