"""The ``sof`` CLI (mounted as ``medcloud sof``), driven through typer's CliRunner."""

from __future__ import annotations

import json
from pathlib import Path

from typer.testing import CliRunner

from medcloud.analytics.cli import app

SUITE = Path(__file__).parents[1] / "conformance" / "sql-on-fhir-v2"
VIEW = {
    "resource": "Patient",
    "select": [{"column": [{"name": "id", "path": "id"}, {"name": "gender", "path": "gender"}]}],
}
runner = CliRunner()


def _data(folder: Path, *extra: str) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    lines = [json.dumps({"resourceType": "Patient", "id": f"p{i}", "gender": "female"}) for i in range(3)]
    (folder / "Patient.ndjson").write_text("\n".join([*lines, *extra]) + "\n")
    return folder


def _view(tmp_path: Path, view: object = VIEW) -> Path:
    path = tmp_path / "view.json"
    path.write_text(json.dumps(view))
    return path


def test_test_command_writes_the_official_report(tmp_path: Path) -> None:
    report = tmp_path / "report.json"
    result = runner.invoke(app, ["test", str(SUITE / "fn_join.json"), "--report", str(report)])
    assert result.exit_code == 0, result.output
    assert "3/3 passed" in result.output
    assert json.loads(report.read_text()) == {
        "fn_join.json": {
            "tests": [
                {"name": n, "result": {"passed": True}}
                for n in (
                    "join with comma",
                    "join with empty value",
                    "join with no value - default to no separator",
                )
            ]
        }
    }


def test_test_command_exits_1_when_a_case_fails(tmp_path: Path) -> None:
    suite = {
        "title": "t",
        "resources": [{"resourceType": "Patient", "id": "p"}],
        "tests": [{"title": "bad", "view": VIEW, "expect": []}],
    }
    (tmp_path / "t.json").write_text(json.dumps(suite))
    result = runner.invoke(app, ["test", str(tmp_path)])
    assert result.exit_code == 1
    assert "FAIL t.json: bad" in result.output


def test_run_writes_csv(tmp_path: Path) -> None:
    out = tmp_path / "out.csv"
    result = runner.invoke(
        app,
        [
            "run",
            str(_view(tmp_path)),
            "--source",
            str(_data(tmp_path / "data")),
            "--format",
            "csv",
            "--out",
            str(out),
        ],
    )
    assert result.exit_code == 0, result.output
    assert out.read_text().splitlines() == ["id,gender", "p0,female", "p1,female", "p2,female"]


def test_run_with_invalid_view_exits_3_and_writes_nothing(tmp_path: Path) -> None:
    out = tmp_path / "out" / "x.parquet"
    bad = {
        "resource": "Patient",
        "select": [{"column": [{"name": "id", "path": "id"}, {"name": "x", "path": "name.("}]}],
    }
    result = runner.invoke(
        app,
        [
            "run",
            str(_view(tmp_path, bad)),
            "--source",
            str(_data(tmp_path / "data")),
            "--format",
            "parquet",
            "--out",
            str(out),
        ],
    )
    assert result.exit_code == 3
    assert "select[0].column[1].path" in result.output
    assert not out.exists()


def test_run_with_malformed_ndjson_reports_line_numbers_and_writes_nothing(tmp_path: Path) -> None:
    data = _data(tmp_path / "data", "{not json")
    out = tmp_path / "out.ndjson"
    result = runner.invoke(
        app, ["run", str(_view(tmp_path)), "--source", str(data), "--format", "ndjson", "--out", str(out)]
    )
    assert result.exit_code == 3
    assert "Patient.ndjson:4" in result.output
    assert not out.exists() and [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


def test_run_can_skip_malformed_lines(tmp_path: Path) -> None:
    data = _data(tmp_path / "data", "{not json")
    out = tmp_path / "out.json"
    result = runner.invoke(
        app,
        [
            "run",
            str(_view(tmp_path)),
            "--source",
            str(data),
            "--format",
            "json",
            "--out",
            str(out),
            "--on-error",
            "skip",
        ],
    )
    assert result.exit_code == 0, result.output
    assert "skipped" in result.output and "Patient.ndjson:4" in result.output
    assert len(json.loads(out.read_text())) == 3


def test_run_with_a_view_that_is_not_json_exits_3(tmp_path: Path) -> None:
    view = tmp_path / "view.json"
    view.write_text("{")
    result = runner.invoke(
        app, ["run", str(view), "--source", str(_data(tmp_path / "data")), "--out", str(tmp_path / "o.csv")]
    )
    assert result.exit_code == 3
