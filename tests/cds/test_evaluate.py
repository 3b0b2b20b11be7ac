"""``medcloud cds evaluate``: a cohort's score distribution and calibration, from FHIR files."""

from __future__ import annotations

import json
from pathlib import Path

from typer.testing import CliRunner

from medcloud.cli import app
from tests.cds.conftest import cv_record


def _cohort(tmp_path: Path) -> Path:
    folder = tmp_path / "cohort"
    folder.mkdir()
    for i in range(12):
        record = cv_record(f"c{i}", tc=(150 + 10 * i, "mg/dL"))
        if i == 11:
            record = record[:2]  # no HDL, BP, smoking: not computed
        bundle = {"resourceType": "Bundle", "type": "transaction", "entry": [{"resource": r} for r in record]}
        (folder / f"c{i}.json").write_text(json.dumps(bundle))
    (tmp_path / "outcomes.csv").write_text("patient_id,outcome\n" + "".join(f"c{i},{int(i > 6)}\n" for i in range(12)))
    return folder


def test_evaluate_reports_distribution_missing_reasons_and_calibration(tmp_path: Path) -> None:
    folder = _cohort(tmp_path)
    result = CliRunner().invoke(app, ["cds", "evaluate", "cardiovascular-risk", "--patients", str(folder),
                                      "--outcomes", str(tmp_path / "outcomes.csv"), "--at", "2026-11-27",
                                      "--data-dir", str(tmp_path / "data")])
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout[result.stdout.index("{"):])
    assert report["patients"] == 12 and report["status"] == {"ok": 11, "incomplete": 1}
    assert report["scores"]["n"] == 11 and report["scores"]["p5"] < report["scores"]["p95"]
    assert any("HDL" in k for k in report["not_computed_because"])
    assert report["with_outcome"] == 11 and sum(b["n"] for b in report["calibration"]) == 11


def test_evaluate_unknown_service_exits_1(tmp_path: Path) -> None:
    result = CliRunner().invoke(app, ["cds", "evaluate", "nope", "--patients", str(_cohort(tmp_path)),
                                      "--data-dir", str(tmp_path / "data")])
    assert result.exit_code == 1 and "no service" in result.output
