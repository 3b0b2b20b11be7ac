"""The shipped default image models: valid packages, registered at start, and what they score through
``medcloud ai evaluate`` on a small labelled folder made from the shared development data."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from medcloud.ai import package as packages
from medcloud.ai.defaults import DEFAULT_MODELS, shipped
from medcloud.ai.registry import Registry
from medcloud.ai.train.recipes import RECIPES
from medcloud.app import build_services
from medcloud.cli import app as cli
from medcloud.config import Settings

from ._models import image_package

# ../shared next to the project root; a clone elsewhere on this machine (e.g. /tmp/x) uses /work/shared
SHARED = next((p for p in (Path(__file__).resolve().parents[2].parent / "shared", Path("/work/shared")) if p.is_dir()),
              Path(__file__).resolve().parents[2].parent / "shared")
DATA = SHARED / "data"
BRAIN = DATA / "brain-mri"
PNEUMONIA = DATA / "pneumoniamnist" / "pneumoniamnist_dev.npz"
MAX_BYTES = 25 * 1024 * 1024


@pytest.mark.parametrize("name", sorted(DEFAULT_MODELS))
def test_shipped_package_is_valid_small_and_matches_its_recipe(name: str) -> None:
    path = shipped(name)
    assert path.stat().st_size <= MAX_BYTES
    pkg = packages.read(path)  # checksums of every file, manifest schema, ONNX graph vs manifest
    m = pkg.manifest
    recipe = RECIPES[name]
    assert (m.name, m.version, m.labels) == (name, recipe.version, recipe.labels)
    assert m.input == recipe.spec  # serving preprocesses exactly as training did
    assert m.training_data.fingerprint and m.licence == recipe.licence
    assert {"val_accuracy", "val_macro_auc", "val_ece", "train_seconds"} <= set(m.metrics)
    assert set(m.files) == {"MODEL_CARD.md", "roc.png", "confusion.png", "calibration.png"}
    assert "Validation figures" in pkg.card and "research" in pkg.card


def test_defaults_are_registered_and_active_at_first_start_only(backend: str, tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path / "data", db=backend, auth=False, ai_default_models=True)
    svc = build_services(settings)
    try:
        versions = Registry(svc.db).list()
        shipped = {n: f.removeprefix(f"{n}-").removesuffix(".zip") for n, f in DEFAULT_MODELS.items()}
        assert shipped == {"brain-mri": "1.1.0", "pneumonia": "1.1.0"}
        assert {(v.name, v.version, v.active) for v in versions} == {(n, shipped[n], True) for n in DEFAULT_MODELS}
        assert all(v.registered_by == "medcloud (default model)" for v in versions)
    finally:
        svc.close()
    again = build_services(settings)  # a restart adds nothing
    try:
        assert len(Registry(again.db).list()) == len(DEFAULT_MODELS)
    finally:
        again.close()


def test_a_registered_name_is_never_replaced_by_the_default(backend: str, tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path / "data", db=backend, auth=False, ai_default_models=False)
    svc = build_services(settings)
    Registry(svc.db).register(image_package(name="pneumonia", version="site-1"), activate=True)
    svc.close()
    svc = build_services(Settings(data_dir=tmp_path / "data", db=backend, auth=False, ai_default_models=True))
    try:
        reg = Registry(svc.db)
        assert [(v.version, v.active) for v in reg.list("pneumonia")] == [("site-1", True)]
        assert reg.get("brain-mri").version == "1.1.0"
    finally:
        svc.close()


@pytest.fixture(scope="module")
def brain_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    if not BRAIN.is_dir():
        pytest.skip("shared brain-mri data not present")
    root = tmp_path_factory.mktemp("brain")
    for label in RECIPES["brain-mri"].labels:
        (root / label).mkdir()
        for src in sorted((BRAIN / label).iterdir())[-8:]:
            (root / label / src.name).write_bytes(src.read_bytes())
    return root


@pytest.fixture(scope="module")
def pneumonia_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    if not PNEUMONIA.is_file():
        pytest.skip("shared PneumoniaMNIST data not present")
    root = tmp_path_factory.mktemp("pneumonia")
    with np.load(PNEUMONIA) as npz:
        images, labels = npz["val_images"], npz["val_labels"].reshape(-1)
    for c, label in enumerate(RECIPES["pneumonia"].labels):
        (root / label).mkdir()
        for i in np.flatnonzero(labels == c)[:15]:
            Image.fromarray(images[i]).save(root / label / f"{i}.png")
    return root


def evaluate(*args: str) -> tuple[int, str, str]:
    result = CliRunner().invoke(cli, ["ai", "evaluate", *args])
    return result.exit_code, result.stdout, result.stderr


@pytest.mark.parametrize(("name", "folder", "n", "chance"), [
    ("brain-mri", "brain_folder", 32, 0.25), ("pneumonia", "pneumonia_folder", 30, 0.5)])
def test_evaluate_prints_figures_well_above_chance(name: str, folder: str, n: int, chance: float,
                                                   request: pytest.FixtureRequest, tmp_path: Path) -> None:
    root = request.getfixturevalue(folder)
    code, stdout, stderr = evaluate("--model", str(shipped(name)), "--data", str(root), "--json",
                                    "--plots", str(tmp_path / "plots"))
    assert code == 0, stderr
    report = json.loads(stdout)
    labels = RECIPES[name].labels
    assert report["n"] == n and report["errors"] == []
    assert report["accuracy"] >= chance + (1 - chance) * 0.6
    assert report["macro_auc"] >= 0.85
    assert 0 <= report["ece"] < 0.5
    assert set(report["per_class"]) == set(labels)
    assert all({"precision", "recall", "f1", "support"} <= set(v) for v in report["per_class"].values())
    matrix = np.array(report["confusion_matrix"]["matrix"])
    assert matrix.shape == (len(labels), len(labels)) and matrix.sum() == n
    assert float(np.trace(matrix)) / n == pytest.approx(report["accuracy"])
    for png in ("roc.png", "confusion.png", "calibration.png"):
        assert (tmp_path / "plots" / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_evaluate_by_registered_name_after_start(pneumonia_folder: Path, tmp_path: Path) -> None:
    build_services(Settings(data_dir=tmp_path / "data", auth=False, ai_default_models=True)).close()
    code, stdout, stderr = evaluate("--model", "pneumonia", "--data", str(pneumonia_folder), "--json",
                                    "--data-dir", str(tmp_path / "data"))
    assert code == 0, stderr
    assert json.loads(stdout)["version"] == "1.1.0"


def test_evaluate_refuses_folders_that_are_not_labels_and_lists_unreadable_files(tmp_path: Path) -> None:
    (tmp_path / "cats").mkdir()
    code, _, stderr = evaluate("--model", str(shipped("pneumonia")), "--data", str(tmp_path), "--json")
    assert code == 1 and "cats" in stderr and "not labels of the model" in stderr
    (tmp_path / "cats").rmdir()
    (tmp_path / "normal").mkdir()
    Image.fromarray(np.zeros((28, 28), dtype=np.uint8)).save(tmp_path / "normal" / "ok.png")
    (tmp_path / "normal" / "broken.png").write_bytes(b"not a png")
    code, stdout, stderr = evaluate("--model", str(shipped("pneumonia")), "--data", str(tmp_path), "--json")
    assert code == 1 and "broken.png" in stderr
    report = json.loads(stdout)
    assert report["n"] == 1 and report["macro_auc"] is None and len(report["errors"]) == 1
