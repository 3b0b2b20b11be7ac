"""A training smoke run (one epoch on a handful of images); needs the optional [train] extra."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from medcloud.ai import package as packages
from medcloud.errors import Invalid

# ../shared next to the project root; a clone elsewhere on this machine (e.g. /tmp/x) uses /work/shared
SHARED = next((p for p in (Path(__file__).resolve().parents[2].parent / "shared", Path("/work/shared")) if p.is_dir()),
              Path(__file__).resolve().parents[2].parent / "shared")
PNEUMONIA = SHARED / "data/pneumoniamnist/pneumoniamnist_dev.npz"
BRAIN = SHARED / "data/brain-mri"


@pytest.fixture(autouse=True)
def _torch() -> None:
    pytest.importorskip("torch", reason="PyTorch is the optional [train] extra: pip install 'medcloud[train]'")


@pytest.mark.skipif(not PNEUMONIA.is_file(), reason="shared PneumoniaMNIST data not present")
def test_one_epoch_gives_a_valid_package_and_is_reproducible(tmp_path: Path) -> None:
    from medcloud.ai.train import RECIPES, run

    recipe = RECIPES["pneumonia"]
    first = run(recipe, PNEUMONIA, tmp_path / "a", epochs=1, limit=12, threads=1, log=lambda _: None)
    pkg = packages.read(first)
    assert pkg.manifest.name == "pneumonia" and pkg.manifest.input == recipe.spec
    assert pkg.manifest.metrics["train_n"] == 24 and pkg.manifest.metrics["val_n"] == 24
    again = packages.read(run(recipe, PNEUMONIA, tmp_path / "b", epochs=1, limit=12, threads=1,
                              log=lambda _: None))
    assert again.model == pkg.model  # same seed, same data -> the same network, byte for byte


@pytest.mark.skipif(not BRAIN.is_dir(), reason="shared brain-mri data not present")
def test_folder_recipe_splits_by_group_and_refuses_a_missing_class(tmp_path: Path) -> None:
    from medcloud.ai.train import RECIPES, run

    target = run(RECIPES["brain-mri"], BRAIN, tmp_path, epochs=1, limit=6, threads=1, log=lambda _: None)
    m = packages.read(target).manifest
    assert m.metrics["train_n"] + m.metrics["val_n"] == 24 and m.metrics["val_n"] >= 4
    (tmp_path / "only" / "glioma_tumor").mkdir(parents=True)
    with pytest.raises(Invalid, match="no class folder for meningioma_tumor"):
        run(RECIPES["brain-mri"], tmp_path / "only", tmp_path / "out", epochs=1, limit=2, log=lambda _: None)


@pytest.mark.skipif(not BRAIN.is_dir(), reason="shared brain-mri data not present")
def test_hog_and_cnn_members_share_one_graph_and_are_reproducible(tmp_path: Path) -> None:
    import onnxruntime

    from medcloud.ai.train import RECIPES, run
    from medcloud.ai.train.recipes import BRAIN_MRI_CNN

    base = RECIPES["brain-mri"]
    recipe = replace(base, fit={"model": "hog+cnn", "hog": base.fit, "cnn": {**BRAIN_MRI_CNN, "widths": (8, 16)}})
    pkg = packages.read(run(recipe, BRAIN, tmp_path / "a", epochs=1, limit=6, threads=1, log=lambda _: None))
    # each member reported alone in the card, then the ensemble's figures
    assert "HOG + MLP alone: accuracy" in pkg.card and "CNN (seed 0) alone: accuracy" in pkg.card
    session = onnxruntime.InferenceSession(pkg.model, providers=["CPUExecutionProvider"])
    probs = session.run(["probabilities"], {"image": np.zeros((3, 1, 128, 128), dtype=np.float32)})[0]
    assert probs.shape == (3, 4) and np.allclose(probs.sum(axis=1), 1, atol=1e-5)
    again = packages.read(run(recipe, BRAIN, tmp_path / "b", epochs=1, limit=6, threads=1, log=lambda _: None))
    assert again.model == pkg.model  # same seed, same data -> the same two-member graph, byte for byte
    with pytest.raises(Invalid, match="agree on hflip"):
        run(replace(recipe, fit={**recipe.fit, "cnn": {**recipe.fit["cnn"], "hflip": False}}), BRAIN,
            tmp_path / "c", epochs=1, limit=2, log=lambda _: None)
