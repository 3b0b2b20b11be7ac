"""A model package's figures on the PneumoniaMNIST validation split, plain and under a fixed suite of
global image shifts: our proxy for the acquisition shift of the official test split (which is not in
the project, and must not be used to tune).

The suite is declared here once and is not tuned: each shift is applied to the 28x28 images in
[0, 1] (uint8 / 255, as ``medcloud ai train`` and serving a PNG read them), the result is clipped to
[0, 1], then the model's own preprocessing (``preprocess.to_model_input`` with the manifest's spec)
and ONNX Runtime (``runtime.Runtime.package``) run, and ``metrics.classification_report`` scores it
(the code of the model card and ``medcloud ai evaluate``).

    .venv/bin/python tools/pneumonia_shift.py --model medcloud/ai/models/pneumonia-1.1.0.zip

Prints one JSON object: ``model``, ``version``, ``n``, ``conditions`` ({name: {accuracy, auc, ece,
recall: {label: r}}}, ``plain`` first) and ``shifted`` (mean and worst accuracy, and mean and worst
recall of each class, over the shifted conditions, i.e. all but ``plain``).
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from medcloud.ai.metrics import classification_report  # noqa: E402
from medcloud.ai.preprocess import to_model_input  # noqa: E402
from medcloud.ai.runtime import Runtime  # noqa: E402

DATA = ROOT.parent / "shared" / "data" / "pneumoniamnist" / "pneumoniamnist_dev.npz"
NOISE_SEED = 0

Shift = Callable[[np.ndarray], np.ndarray]  # (N, H, W) float32 in [0, 1] -> the same shape, any range


def _gamma(g: float) -> Shift:
    return lambda x: x ** g


def _contrast(c: float) -> Shift:  # about each image's own mean
    return lambda x: (x - x.mean(axis=(1, 2), keepdims=True)) * c + x.mean(axis=(1, 2), keepdims=True)


def _brightness(b: float) -> Shift:
    return lambda x: x + b


def _blur(sigma: float) -> Shift:
    from scipy.ndimage import gaussian_filter

    return lambda x: np.stack([gaussian_filter(im, sigma, mode="nearest") for im in x])


def _noise(sigma: float) -> Shift:
    return lambda x: x + np.random.default_rng(NOISE_SEED).normal(0.0, sigma, x.shape).astype(np.float32)


def _down_up(side: int) -> Shift:
    from PIL import Image

    def shift(x: np.ndarray) -> np.ndarray:
        h, w = x.shape[1:]
        out = []
        for im in x:
            small = Image.fromarray(im, mode="F").resize((side, side), Image.Resampling.BILINEAR)
            out.append(np.asarray(small.resize((w, h), Image.Resampling.BILINEAR)))
        return np.stack(out)

    return shift


# The pre-declared suite (fixed before any model was measured with it; do not tune it).
SUITE: dict[str, Shift] = {
    "gamma_0.6": _gamma(0.6), "gamma_1.6": _gamma(1.6),
    "contrast_0.7": _contrast(0.7), "contrast_1.3": _contrast(1.3),
    "brightness_-0.1": _brightness(-0.1), "brightness_+0.1": _brightness(0.1),
    "blur_0.7": _blur(0.7), "noise_0.03": _noise(0.03), "downup_14": _down_up(14),
}


def evaluate(model_path: Path, data: Path, split: str = "val", threads: int = 1) -> dict[str, Any]:
    model = Runtime(None, threads=threads).package(model_path)
    spec = model.spec
    with np.load(data) as npz:
        images = npz[f"{split}_images"].astype(np.float32) / 255.0
        y = npz[f"{split}_labels"].reshape(-1).astype(np.int64)
    conditions: dict[str, Any] = {}
    for name, shift in {"plain": lambda x: x, **SUITE}.items():
        shifted = np.clip(shift(images.copy()), 0.0, 1.0).astype(np.float32)
        probs = model.predict(np.stack([to_model_input(im, spec) for im in shifted]), batch=256)
        r = classification_report(y, probs.astype(np.float64), model.labels)
        conditions[name] = {"accuracy": round(r["accuracy"], 4), "auc": round(r["macro_auc"] or 0.0, 4),
                            "ece": round(r["ece"], 4),
                            "recall": {lab: round(v["recall"], 4) for lab, v in r["per_class"].items()}}
    names = list(SUITE)
    acc = [conditions[n]["accuracy"] for n in names]
    summary: dict[str, Any] = {"mean_accuracy": round(float(np.mean(acc)), 4), "worst_accuracy": min(acc),
                               "worst_condition": names[int(np.argmin(acc))]}
    for lab in model.labels:
        rec = [conditions[n]["recall"][lab] for n in names]
        summary[f"mean_recall_{lab}"] = round(float(np.mean(rec)), 4)
        summary[f"worst_recall_{lab}"] = min(rec)
    return {"model": model.name, "version": model.version, "package": str(model_path), "split": split,
            "n": int(len(y)), "conditions": conditions, "shifted": summary}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", type=Path, required=True, nargs="+", help="Package file(s) (.zip).")
    parser.add_argument("--data", type=Path, default=DATA, help="The PneumoniaMNIST .npz (default: %(default)s).")
    parser.add_argument("--split", default="val", help="Split of the .npz (default: val).")
    parser.add_argument("--threads", type=int, default=1, help="ONNX Runtime threads (default: 1).")
    args = parser.parse_args(argv)
    results = [evaluate(m, args.data, args.split, args.threads) for m in args.model]
    print(json.dumps(results[0] if len(results) == 1 else results, indent=1))


if __name__ == "__main__":
    main()
