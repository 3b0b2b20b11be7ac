"""``medcloud ml train`` on real public data (WDBC, shipped with scikit-learn) and on bad input."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from medcloud.ai import package as packages
from medcloud.analytics import ml
from medcloud.cli import app


@pytest.fixture(scope="module")
def wdbc_csv(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Wisconsin Diagnostic Breast Cancer (569 rows, 30 features) as a CSV with a text target."""
    from sklearn.datasets import load_breast_cancer

    data = load_breast_cancer(as_frame=True)
    frame = data.frame.copy()
    frame["diagnosis"] = frame.pop("target").map({0: "malignant", 1: "benign"})
    path = tmp_path_factory.mktemp("wdbc") / "wdbc.csv"
    frame.to_csv(path, index=False)
    return path


def test_logistic_regression_on_wdbc_matches_the_published_performance(wdbc_csv: Path, tmp_path: Path) -> None:
    out = tmp_path / "wdbc-model"
    r = CliRunner().invoke(app, ["ml", "train", "--csv", str(wdbc_csv), "--target", "diagnosis",
                                 "--positive", "malignant", "--out", str(out), "--seed", "0"])
    assert r.exit_code == 0, r.output
    pkg = packages.read(out)  # a valid package: checksums, manifest and ONNX shapes all checked
    assert sorted(pkg.files) == ["MODEL_CARD.md", "calibration.png", "manifest.json", "model.onnx", "roc.png"]
    m = pkg.manifest.metrics
    assert m["cv_roc_auc_mean"] >= 0.99
    assert m["test_accuracy"] >= 0.95
    assert m["test_roc_auc"] >= 0.98
    assert 0 <= m["test_brier"] < 0.05
    assert pkg.manifest.labels == ["benign", "malignant"]
    assert len(pkg.manifest.input.features) == 30
    assert pkg.manifest.training_data.rows == 569
    assert pkg.files["roc.png"].startswith(b"\x89PNG")
    card = pkg.card
    for section in ("## Data", "## Features", "## Metrics", "## Intended use", "## Limits"):
        assert section in card
    assert f"{m['test_accuracy']:.4f}" in card


@pytest.mark.parametrize("model", ["logreg", "rf", "gbm"])
def test_same_seed_gives_the_same_metrics_and_onnx_predictions(wdbc_csv: Path, model: str) -> None:
    frame = ml.read_csv(wdbc_csv)
    options = ml.TrainOptions(target="diagnosis", model=model, folds=3, seed=7)
    first = ml.train(ml.prepare(frame, options), options)
    second = ml.train(ml.prepare(frame, options), options)
    assert first.metrics() == second.metrics()
    x = first.data.frame
    p1 = ml.predict_onnx(first.onnx_model, x, first.data.features)
    p2 = ml.predict_onnx(second.onnx_model, x, second.data.features)
    assert np.array_equal(p1, p2)
    # ONNX Runtime reproduces scikit-learn on every row, not only the test split
    assert np.max(np.abs(p1[:, 1] - first.pipeline.predict_proba(x)[:, 1])) <= ml.PARITY_TOLERANCE
    assert first.metrics()["test_roc_auc"] > 0.95
    other = ml.train(ml.prepare(frame, ml.TrainOptions(target="diagnosis", model=model, folds=3, seed=8)),
                     ml.TrainOptions(target="diagnosis", model=model, folds=3, seed=8))
    assert other.metrics() != first.metrics()  # the seed is really used


def test_mixed_columns_missing_values_and_categories_survive_the_onnx_export(tmp_path: Path) -> None:
    rng = np.random.default_rng(3)
    n = 300
    import pandas as pd

    age = rng.normal(55, 12, n)
    age[rng.random(n) < 0.1] = np.nan
    sex = rng.choice(["female", "male", None], n, p=[0.48, 0.48, 0.04])
    smoker = rng.choice(["true", "false"], n)
    logit = 0.05 * (np.nan_to_num(age, nan=55) - 55) + (smoker == "true") * 1.2 - 0.3 + rng.normal(0, 1, n)
    frame = pd.DataFrame({"patient_id": [f"p{i}" for i in range(n)], "age": age, "sex": sex, "smoker": smoker,
                          "outcome": logit > 0})
    options = ml.TrainOptions(target="outcome", model="rf", folds=3, calibration="sigmoid")
    data = ml.prepare(frame, options)
    assert [(f.name, f.type) for f in data.features] == [("age", "number"), ("sex", "category"),
                                                         ("smoker", "boolean")]
    assert data.dropped == [("patient_id", "identifier-like: every value is distinct")]
    assert data.labels == ["false", "true"]
    result = ml.train(data, options)
    assert result.parity <= ml.PARITY_TOLERANCE
    pkg = ml.package(result, name="mixed", version="1", licence="CC0-1.0", source="synthetic", intended_use="tests")
    assert packages.from_bytes(pkg.to_zip()).sha256 == pkg.sha256


def _invoke(args: list[str]):
    return CliRunner().invoke(app, ["ml", "train", *args])


def test_a_csv_without_the_target_column_fails_cleanly_and_writes_nothing(wdbc_csv: Path, tmp_path: Path) -> None:
    out = tmp_path / "models" / "m"
    r = _invoke(["--csv", str(wdbc_csv), "--target", "outcome", "--out", str(out)])
    assert r.exit_code == 3
    assert "target column 'outcome' is not in the table" in r.output
    assert not out.exists()
    assert not out.parent.exists() or list(out.parent.iterdir()) == []


def test_other_bad_input_is_refused_with_exit_code_3(wdbc_csv: Path, tmp_path: Path) -> None:
    one_class = tmp_path / "one.csv"
    one_class.write_text("x,y\n" + "".join(f"{i},a\n" for i in range(30)))
    r = _invoke(["--csv", str(one_class), "--target", "y", "--out", str(tmp_path / "a")])
    assert r.exit_code == 3 and "exactly two classes" in r.output
    r = _invoke(["--csv", str(tmp_path / "missing.csv"), "--target", "y", "--out", str(tmp_path / "b")])
    assert r.exit_code == 3 and "no such file" in r.output
    taken = tmp_path / "taken"
    taken.mkdir()
    r = _invoke(["--csv", str(wdbc_csv), "--target", "diagnosis", "--out", str(taken)])
    assert r.exit_code == 3 and "exists" in r.output
    r = _invoke(["--target", "diagnosis", "--out", str(tmp_path / "c")])
    assert r.exit_code == 3 and "exactly one of --csv" in r.output
    r = _invoke(["--csv", str(wdbc_csv), "--target", "diagnosis", "--positive", "maybe", "--out", str(tmp_path / "d")])
    assert r.exit_code == 3 and "positive class 'maybe'" in r.output
    assert sorted(p.name for p in tmp_path.iterdir()) == ["one.csv", "taken"]


def test_register_puts_the_package_in_the_stores_registry(wdbc_csv: Path, tmp_path: Path) -> None:
    from medcloud.ai.cli import registry

    store = ["--data-dir", str(tmp_path / "data")]
    for n in (1, 2):
        r = _invoke(["--csv", str(wdbc_csv), "--target", "diagnosis", "--folds", "2", "--out",
                     str(tmp_path / f"m{n}"), "--register", "--activate", *store])
        assert r.exit_code == 0, r.output
    with registry(tmp_path / "data", None) as reg:
        versions = reg.list("wdbc-logreg")
        assert [(v.version, v.active) for v in versions] == [("2", True), ("1", False)]
        assert reg.load("wdbc-logreg").sha256 == packages.read(tmp_path / "m2").sha256
    manifest = json.loads((tmp_path / "m2" / "manifest.json").read_text())
    assert manifest["version"] == "2"


OBSERVATION_KIND = {
    "resourceType": "ViewDefinition", "name": "observation_kind", "status": "active", "resource": "Observation",
    "where": [{"path": "value.ofType(Quantity).exists()"},
              {"path": "category.coding.where(code = 'laboratory' or code = 'vital-signs').exists()"}],
    "select": [{"column": [
        {"name": "id", "path": "id"},
        {"name": "value", "path": "value.ofType(Quantity).value", "type": "decimal"},
        {"name": "unit", "path": "value.ofType(Quantity).code"},
        {"name": "kind", "path": "category.coding.where(code = 'laboratory' or code = 'vital-signs').code.first()"},
    ]}],
}


def test_a_view_over_synthea_observations_trains_a_model(synthea_dir: Path, tmp_path: Path) -> None:
    """Laboratory vs vital-sign Observations from their value and unit, through a ViewDefinition."""
    export = tmp_path / "export"
    export.mkdir()
    with (export / "Observation.ndjson").open("w") as fh:
        for bundle in sorted(synthea_dir.glob("*.json")):
            for entry in json.loads(bundle.read_text())["entry"]:
                if entry["resource"]["resourceType"] == "Observation":
                    fh.write(json.dumps(entry["resource"]) + "\n")
    view = tmp_path / "view.json"
    view.write_text(json.dumps(OBSERVATION_KIND))
    out = tmp_path / "model"
    r = _invoke(["--view", str(view), "--source", str(export), "--target", "kind", "--model", "gbm",
                 "--folds", "3", "--out", str(out)])
    assert r.exit_code == 0, r.output
    pkg = packages.read(out)
    assert pkg.manifest.name == "observation_kind-gbm"
    assert [(f.name, f.type) for f in pkg.manifest.input.features] == [("value", "number"), ("unit", "category")]
    assert sorted(pkg.manifest.labels) == ["laboratory", "vital-signs"]
    assert pkg.manifest.metrics["test_roc_auc"] > 0.9
    assert "ViewDefinition observation_kind" in pkg.card and "id | not used: identifier-like" in pkg.card
    r = _invoke(["--view", str(view), "--target", "kind", "--out", str(tmp_path / "x")])
    assert r.exit_code == 3 and "--view needs --source" in r.output
