"""Running views on DuckDB: sources, outputs, bad input, and no partial files on failure."""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any

import duckdb
import pytest

from medcloud.analytics import (
    DuckDBEngine,
    EvaluationError,
    NdjsonSource,
    ParquetSource,
    SourceError,
    ndjson_to_parquet,
    source_from_path,
)

PATIENTS = [
    {
        "resourceType": "Patient",
        "id": "p1",
        "gender": "female",
        "birthDate": "1970-06",
        "active": True,
        "name": [{"use": "official", "family": "Doe", "given": ["Jane", "Q"]}],
        "address": [{"postalCode": "1000"}, {"postalCode": "2000"}],
    },
    {"resourceType": "Patient", "id": "p2", "gender": "male", "active": False, "name": [{"family": "Roe"}]},
]
OBSERVATIONS = [
    {
        "resourceType": "Observation",
        "id": "o1",
        "status": "final",
        "subject": {"reference": "Patient/p1"},
        "code": {"coding": [{"system": "http://loinc.org", "code": "8480-6"}]},
        "valueQuantity": {"value": 120.5, "unit": "mm[Hg]"},
        "effectiveDateTime": "2020-01-02T10:00:00Z",
    },
]
VIEW: dict[str, Any] = {
    "resource": "Patient",
    "select": [
        {
            "column": [
                {"name": "id", "path": "getResourceKey()", "type": "id"},
                {"name": "active", "path": "active", "type": "boolean"},
                {"name": "family", "path": "name.first().family", "type": "string"},
                {"name": "given", "path": "name.given", "collection": True},
                {
                    "name": "born",
                    "path": "birthDate.lowBoundary()",
                    "type": "date",
                    "tag": [{"name": "ansi/type", "value": "DATE"}],
                },
            ]
        },
        {
            "forEachOrNull": "address",
            "column": [
                {"name": "zip", "path": "postalCode"},
                {"name": "n", "path": "%rowIndex", "type": "integer"},
            ],
        },
    ],
}


def _ndjson(
    folder: Path, name: str, resources: list[dict[str, Any]], extra_lines: tuple[str, ...] = ()
) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    path.write_text(
        "".join(json.dumps(r) + "\n" for r in resources) + "".join(line + "\n" for line in extra_lines)
    )
    return path


@pytest.fixture
def engine() -> Any:
    with DuckDBEngine() as e:
        yield e


def test_run_over_dicts_returns_fhir_json_cells(engine: DuckDBEngine) -> None:
    result = engine.run(VIEW, PATIENTS + OBSERVATIONS)
    assert result.columns == ("id", "active", "family", "given", "born", "zip", "n")
    assert sorted(result.rows, key=lambda r: (r["id"], r["n"])) == [
        {
            "id": "p1",
            "active": True,
            "family": "Doe",
            "given": ["Jane", "Q"],
            "born": "1970-06-01",
            "zip": "1000",
            "n": 0,
        },
        {
            "id": "p1",
            "active": True,
            "family": "Doe",
            "given": ["Jane", "Q"],
            "born": "1970-06-01",
            "zip": "2000",
            "n": 1,
        },
        {"id": "p2", "active": False, "family": "Roe", "given": [], "born": None, "zip": None, "n": 0},
    ]


def test_engine_uses_the_connection_it_is_given() -> None:
    con = duckdb.connect(":memory:")
    engine = DuckDBEngine(con)
    assert engine.con is con
    assert engine.run(VIEW, PATIENTS).rows
    engine.close()


def test_ndjson_folder_in_bulk_layout_reads_only_the_view_type(engine: DuckDBEngine, tmp_path: Path) -> None:
    _ndjson(tmp_path, "Patient.ndjson", PATIENTS)
    _ndjson(tmp_path, "Observation.ndjson", OBSERVATIONS, extra_lines=("{broken",))
    assert NdjsonSource((tmp_path,)).files("Patient") == [tmp_path / "Patient.ndjson"]
    assert len(engine.run(VIEW, NdjsonSource((tmp_path,))).rows) == 3


def test_malformed_ndjson_refuses_the_run_with_line_numbers(engine: DuckDBEngine, tmp_path: Path) -> None:
    path = _ndjson(
        tmp_path, "data.ndjson", PATIENTS, extra_lines=("", '{"resourceType": "Patient",', "[1, 2]")
    )
    with pytest.raises(SourceError) as info:
        engine.run(VIEW, NdjsonSource((tmp_path,)))
    lines = [(b.file, b.line) for b in info.value.bad_lines]
    assert lines == [(str(path), 4), (str(path), 5)]
    assert f"{path}:4: malformed JSON" in str(info.value)


def test_malformed_ndjson_lines_can_be_skipped_and_are_reported(engine: DuckDBEngine, tmp_path: Path) -> None:
    _ndjson(tmp_path, "data.ndjson", PATIENTS[:1], extra_lines=("not json",))
    _ndjson(tmp_path, "more.ndjson", PATIENTS[1:])
    result = engine.run(VIEW, NdjsonSource((tmp_path,), on_error="skip"))
    assert {r["id"] for r in result.rows} == {"p1", "p2"}
    assert [(Path(b.file).name, b.line) for b in result.skipped] == [("data.ndjson", 2)]


def test_missing_source_is_a_source_error(engine: DuckDBEngine, tmp_path: Path) -> None:
    with pytest.raises(SourceError, match="no such file"):
        source_from_path(tmp_path / "nope")
    with pytest.raises(SourceError, match="no NDJSON files"):
        engine.run(VIEW, NdjsonSource((tmp_path,)))


def test_several_values_in_a_non_collection_column_is_an_evaluation_error(engine: DuckDBEngine) -> None:
    view = {"resource": "Patient", "select": [{"column": [{"name": "g", "path": "name.given"}]}]}
    with pytest.raises(EvaluationError, match=r"select\[0\]\.column\[0\]: column 'g' got several values"):
        engine.run(view, PATIENTS)


def test_non_boolean_where_is_an_evaluation_error(engine: DuckDBEngine) -> None:
    view = {
        "resource": "Patient",
        "select": [{"column": [{"name": "id", "path": "id"}]}],
        "where": [{"path": "gender"}],
    }
    with pytest.raises(EvaluationError, match=r"where\[0\]\.path"):
        engine.run(view, PATIENTS)


def test_repeat_deeper_than_the_unrolled_depth_fails_loudly() -> None:
    deep: dict[str, Any] = {"linkId": "x"}
    for i in range(5):
        deep = {"linkId": str(i), "item": [deep]}
    qr = {"resourceType": "QuestionnaireResponse", "id": "q", "item": [deep]}
    view = {
        "resource": "QuestionnaireResponse",
        "select": [{"repeat": ["item"], "column": [{"name": "l", "path": "linkId"}]}],
    }
    with DuckDBEngine(repeat_depth=3) as shallow, pytest.raises(EvaluationError, match="deeper than 3"):
        shallow.run(view, [qr])
    with DuckDBEngine() as engine:
        assert [r["l"] for r in engine.run(view, [qr]).rows] == ["4", "3", "2", "1", "0", "x"]


@pytest.mark.parametrize("fmt", ["csv", "parquet", "ndjson", "json"])
def test_write_formats(engine: DuckDBEngine, tmp_path: Path, fmt: str) -> None:
    _ndjson(tmp_path / "in", "Patient.ndjson", PATIENTS)
    out = tmp_path / "out" / f"view.{fmt}"
    result = engine.write(VIEW, NdjsonSource((tmp_path / "in",)), out, fmt)  # type: ignore[arg-type]
    assert result.rows == 3 and out.exists()
    assert [p.name for p in out.parent.iterdir()] == [out.name]
    if fmt == "csv":
        rows = list(csv.DictReader(out.open()))
        assert rows[0]["active"] == "true" and rows[0]["born"] == "1970-06-01"
    elif fmt == "parquet":
        types = dict(engine.con.execute(f"SELECT name, type FROM parquet_schema('{out}')").fetchall())
        assert types["active"] == "BOOLEAN" and types["born"] == "INT32" and types["n"] == "INT32"
    elif fmt == "ndjson":
        first = json.loads(out.read_text().splitlines()[0])
        assert first["given"] == ["Jane", "Q"]
    else:
        assert len(json.loads(out.read_text())) == 3


def test_failed_write_leaves_no_output_file(engine: DuckDBEngine, tmp_path: Path) -> None:
    _ndjson(tmp_path / "in", "Patient.ndjson", PATIENTS, extra_lines=("{oops",))
    out = tmp_path / "out" / "view.csv"
    with pytest.raises(SourceError):
        engine.write(VIEW, NdjsonSource((tmp_path / "in",)), out, "csv")
    assert list((tmp_path / "out").iterdir()) == []
    bad_view = {"resource": "Patient", "select": [{"column": [{"name": "g", "path": "name.given"}]}]}
    with pytest.raises(EvaluationError):
        engine.write(bad_view, NdjsonSource((tmp_path / "in",), on_error="skip"), out, "parquet")
    assert list((tmp_path / "out").iterdir()) == []


def test_parquet_source_matches_ndjson_source(engine: DuckDBEngine, tmp_path: Path) -> None:
    _ndjson(tmp_path / "in", "Patient.ndjson", PATIENTS)
    _ndjson(tmp_path / "in", "Observation.ndjson", OBSERVATIONS)
    written = ndjson_to_parquet(tmp_path / "in", tmp_path / "pq")
    assert sorted(p.name for p in written) == ["Observation.parquet", "Patient.parquet"]
    assert isinstance(source_from_path(tmp_path / "pq"), ParquetSource)
    from_ndjson = engine.run(VIEW, NdjsonSource((tmp_path / "in",))).rows
    from_parquet = engine.run(VIEW, ParquetSource((tmp_path / "pq",))).rows
    key = lambda r: (r["id"], r["n"])  # noqa: E731
    assert sorted(from_ndjson, key=key) == sorted(from_parquet, key=key)


@pytest.mark.parametrize(
    ("path", "expected"),
    [
        ("subject.getReferenceKey(Patient)", "p1"),
        ("subject.getReferenceKey(Group)", None),
        ("value.ofType(Quantity).value * 2", 241.0),
        ("value.ofType(Quantity).value.highBoundary()", 120.55),
        ("effective.ofType(dateTime).lowBoundary()", "2020-01-02T10:00:00.000Z"),
        ("code.coding.code.join('|') & '!'", "8480-6!"),
        ("code.coding.where(system = 'http://loinc.org').code.first().substring(0, 4)", "8480"),
        ("iif(status = 'final', 'F', 'P')", "F"),
        ("code.coding.count()", 1),
        ("(1 | 2 | 2).count()", 2),
        ("status.upper().startsWith('FIN')", True),
        ("code.coding.exists(code = '8480-6')", True),
        ("code.coding.all(system.endsWith('loinc.org'))", True),
        ("(3 div 2) + (3 mod 2)", 2),
        ("value.ofType(Quantity).value > 100 implies status = 'final'", True),
    ],
)
def test_fhirpath_functions_compile_to_sql(engine: DuckDBEngine, path: str, expected: Any) -> None:
    view = {"resource": "Observation", "select": [{"column": [{"name": "v", "path": path}]}]}
    assert engine.run(view, OBSERVATIONS).rows == [{"v": expected}]


def test_value_that_does_not_fit_the_declared_type_fails_the_typed_write(
    engine: DuckDBEngine, tmp_path: Path
) -> None:
    _ndjson(tmp_path / "in", "Patient.ndjson", PATIENTS)
    view = {
        "resource": "Patient",
        "select": [{"column": [{"name": "g", "path": "gender", "type": "integer"}]}],
    }
    out = tmp_path / "out" / "g.parquet"
    with pytest.raises(EvaluationError):
        engine.write(view, NdjsonSource((tmp_path / "in",)), out, "parquet")
    assert list((tmp_path / "out").iterdir()) == []
