"""DuckDB and Spark write the same files for realistic views over a Synthea export (issue 6).

The views are the benchmark's (bench/views/*.json: demographics, observations with forEach,
conditions, medications, encounters), run over 2 seeded Synthea patients converted to Bulk-export
NDJSON. CSV files must be byte-identical (same header, quoting, number and date text, row order);
Parquet files must have the same column names and types and the same rows. One local SparkSession
serves the module; marked slow and kept in one xdist worker.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import duckdb
import pytest

from medcloud.analytics.bundles import bundles_to_ndjson
from medcloud.analytics.engines._sources import NdjsonSource, ResourcesSource
from medcloud.analytics.engines.duckdb import DuckDBEngine
from medcloud.analytics.engines.spark import SparkEngine, available
from medcloud.errors import Invalid

pytestmark = [
    pytest.mark.slow,
    pytest.mark.xdist_group("spark"),
    pytest.mark.skipif(not available(), reason="pyspark is not installed (medcloud[spark])"),
    pytest.mark.filterwarnings("ignore::FutureWarning"),
]

VIEWS = sorted((Path(__file__).parents[2] / "bench" / "views").glob("*.json"))


@pytest.fixture(scope="module")
def spark() -> Iterator[SparkEngine]:
    from medcloud.analytics.engines.spark import local_session

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
def synthea_ndjson(synthea_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> NdjsonSource:
    out = tmp_path_factory.mktemp("synthea-ndjson")
    counts = bundles_to_ndjson(sorted(synthea_dir.glob("*.json")), out)
    assert counts["Patient"] == 2 and counts["Observation"] > 100
    return NdjsonSource((out,))


def _parquet(path: Path) -> tuple[list[tuple[str, str]], list[tuple[Any, ...]]]:
    con = duckdb.connect()
    schema = [(r[0], r[1]) for r in con.execute("DESCRIBE SELECT * FROM read_parquet(?)", [str(path)]).fetchall()]
    return schema, con.execute("SELECT * FROM read_parquet(?)", [str(path)]).fetchall()


def test_the_benchmark_views_are_all_here() -> None:
    assert {p.stem for p in VIEWS} == {
        "patient_demographics", "observations", "conditions", "medications", "encounters"
    }


@pytest.mark.parametrize("view_file", VIEWS, ids=[p.stem for p in VIEWS])
def test_synthea_view_gives_byte_identical_csv_and_equal_parquet(
    view_file: Path, spark: SparkEngine, duck: DuckDBEngine, synthea_ndjson: NdjsonSource, tmp_path: Path
) -> None:
    view = json.loads(view_file.read_text())
    a = spark.write(view, synthea_ndjson, tmp_path / "spark.csv", "csv")
    b = duck.write(view, synthea_ndjson, tmp_path / "duck.csv", "csv")
    assert a.rows == b.rows > 0
    assert a.path.read_bytes() == b.path.read_bytes()

    a = spark.write(view, synthea_ndjson, tmp_path / "spark.parquet", "parquet")
    b = duck.write(view, synthea_ndjson, tmp_path / "duck.parquet", "parquet")
    (schema_a, rows_a), (schema_b, rows_b) = _parquet(a.path), _parquet(b.path)
    assert schema_a == schema_b
    assert rows_a == rows_b
    assert len(rows_a) == a.rows == b.rows


AWKWARD = [
    {
        "resourceType": "Patient",
        "id": "q1",
        "name": [{"use": "official", "family": 'O"Brien, Jr', "given": [" lead", "trail "]}],
        "address": [{"city": "Line\nbreak", "state": "#1"}],
        "birthDate": "2001-02",
    },
    {"resourceType": "Patient", "id": "q2", "name": [{"use": "official", "family": "Zoë ☃"}]},
    {"resourceType": "Patient", "id": "q3", "deceasedDateTime": "2020-01-01T10:00:00+02:00"},
]


def test_csv_quoting_whitespace_and_empty_values_match(
    spark: SparkEngine, duck: DuckDBEngine, tmp_path: Path
) -> None:
    """Quotes, commas, newlines, edge whitespace, '#', non-ASCII, empty string vs NULL."""
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "Patient.ndjson").write_text(
        "".join(json.dumps(r) + "\n" for r in AWKWARD), encoding="utf-8"
    )
    source = NdjsonSource((tmp_path / "in",))
    view = json.loads(next(p for p in VIEWS if p.stem == "patient_demographics").read_text())
    a = spark.write(view, source, tmp_path / "spark.csv", "csv")
    b = duck.write(view, source, tmp_path / "duck.csv", "csv")
    text = b.path.read_text(encoding="utf-8")
    assert '"O""Brien, Jr", lead trail ,' in text and '"Line\nbreak",#1,' in text
    assert "q3,,,,\"\"," in text  # join() of nothing is '' (quoted), a missing value is NULL (empty)
    assert a.path.read_bytes() == b.path.read_bytes()


def test_empty_result_writes_the_same_header_only_csv_and_empty_parquet(
    spark: SparkEngine, duck: DuckDBEngine, tmp_path: Path
) -> None:
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "Patient.ndjson").write_text(json.dumps(AWKWARD[0]) + "\n", encoding="utf-8")
    source = NdjsonSource((tmp_path / "in",))
    view = json.loads(next(p for p in VIEWS if p.stem == "conditions").read_text())
    a = spark.write(view, source, tmp_path / "spark.csv", "csv")
    b = duck.write(view, source, tmp_path / "duck.csv", "csv")
    assert a.rows == b.rows == 0
    assert a.path.read_bytes() == b.path.read_bytes()
    assert a.path.read_text().startswith("id,patient_id,")
    a = spark.write(view, source, tmp_path / "spark.parquet", "parquet")
    b = duck.write(view, source, tmp_path / "duck.parquet", "parquet")
    assert a.rows == b.rows == 0
    assert _parquet(a.path) == _parquet(b.path)


def test_a_new_in_memory_source_is_never_served_an_old_ones_table(spark: SparkEngine) -> None:
    """Sources made one after another (as the conformance runner does per file) see their own data."""
    view = {"resource": "Patient", "select": [{"column": [{"name": "id", "path": "id"}]}]}
    for i in range(3):
        rows = spark.run(view, ResourcesSource(({"resourceType": "Patient", "id": f"p{i}"},))).rows
        assert rows == [{"id": f"p{i}"}]


def test_a_file_that_is_not_a_bundle_is_refused(tmp_path: Path) -> None:
    (tmp_path / "x.json").write_text('{"resourceType": "Patient"}')
    with pytest.raises(Invalid, match="not a FHIR Bundle"):
        bundles_to_ndjson([tmp_path / "x.json"], tmp_path / "out")
