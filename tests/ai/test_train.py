"""A training smoke run (one epoch on a handful of images); needs the optional [train] extra."""

from __future__ import annotations

from pathlib import Path

import pytest

from medcloud.ai import package as packages

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
    from medcloud.errors import Invalid

    target = run(RECIPES["brain-mri"], BRAIN, tmp_path, epochs=1, limit=6, threads=1, log=lambda _: None)
    m = packages.read(target).manifest
    assert m.metrics["train_n"] + m.metrics["val_n"] == 24 and m.metrics["val_n"] >= 4
    (tmp_path / "only" / "glioma_tumor").mkdir(parents=True)
    with pytest.raises(Invalid, match="no class folder for meningioma_tumor"):
        run(RECIPES["brain-mri"], tmp_path / "only", tmp_path / "out", epochs=1, limit=2, log=lambda _: None)
