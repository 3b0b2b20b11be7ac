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


def test_photometric_augmentation_is_seeded_and_stays_an_image() -> None:
    import torch

    from medcloud.ai.train import RECIPES
    from medcloud.ai.train.fit import FitConfig, _augment

    recipe = RECIPES["pneumonia"]
    fit = {**recipe.fit, "photometric": {"p": 0.5, "gamma": 0.4, "contrast": 0.25, "brightness": 0.1,
                                         "blur": (0.5, 1.0), "blur_p": 0.5, "noise": 0.04, "noise_p": 0.5},
           "pixel": (0.5, 0.25), "rotate": 0.0, "scale": 0.0, "shift": 0.0, "intensity": 0.0}
    cfg = FitConfig(**fit)
    x = (torch.rand(16, 1, 28, 28, generator=torch.Generator().manual_seed(1)) - 0.5) / 0.25
    a = _augment(x, cfg, torch.Generator().manual_seed(7))
    assert torch.equal(a, _augment(x, cfg, torch.Generator().manual_seed(7)))  # same seed, same batch
    assert not torch.equal(a, _augment(x, cfg, torch.Generator().manual_seed(8)))
    assert not torch.allclose(a, x, atol=1e-3)  # it changes the images...
    image = a * 0.25 + 0.5
    assert float(image.min()) >= -1e-6 and float(image.max()) <= 1 + 1e-6  # ...within [0, 1]
    plain = FitConfig(**{**fit, "photometric": None})
    assert torch.allclose(_augment(x, plain, torch.Generator().manual_seed(7)), x, atol=1e-5)  # off: identity here


def test_stratified_holdout_is_seeded_and_keeps_the_class_mix() -> None:
    from medcloud.ai.train.data import stratified_holdout

    y = np.array([0] * 40 + [1] * 360)
    idx = np.arange(10, 400)  # a training split: indices into y
    kept, held = stratified_holdout(y, idx, 0.1, seed=3)
    assert np.array_equal(np.sort(np.concatenate([kept, held])), idx) and not set(kept) & set(held)
    assert np.bincount(y[held]).tolist() == [3, 36]  # 10 % of 30 and of 360
    assert np.array_equal(held, stratified_holdout(y, idx, 0.1, seed=3)[1])
    assert not np.array_equal(held, stratified_holdout(y, idx, 0.1, seed=4)[1])


@pytest.mark.skipif(not PNEUMONIA.is_file(), reason="shared PneumoniaMNIST data not present")
def test_holdout_stops_on_train_and_leaves_validation_out(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from medcloud.ai.train import RECIPES, fit, run
    from medcloud.ai.train.data import npz_split

    recipe = replace(RECIPES["pneumonia"], holdout=0.25)
    seen: list[tuple[np.ndarray, np.ndarray]] = []
    original = fit.train_member

    def spy(x: np.ndarray, y: np.ndarray, xv: np.ndarray, *args: object, **kwargs: object) -> object:
        seen.append((x, xv))
        return original(x, y, xv, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(fit, "train_member", spy)
    pkg = packages.read(run(recipe, PNEUMONIA, tmp_path, epochs=1, limit=12, threads=1, log=lambda _: None))
    m = pkg.manifest.metrics
    assert (m["train_n"], m["holdout_n"], m["val_n"]) == (18, 6, 24)  # 3 of 12 per class held out
    val = {row.tobytes() for row in npz_split(PNEUMONIA, "val", recipe.spec).x}
    train = {row.tobytes() for row in npz_split(PNEUMONIA, "train", recipe.spec).x}
    assert len(seen) == recipe.fit["ensemble"]
    for x, xv in seen:
        trained, stopped = {r.tobytes() for r in x}, {r.tobytes() for r in xv}
        assert not trained & val and not stopped & val  # the validation split chose nothing
        assert stopped <= train and not trained & stopped
