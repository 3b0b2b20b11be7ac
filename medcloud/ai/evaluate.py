"""``medcloud ai evaluate``: a model's figures on a labelled image folder (``DIR/<label>/*.png|jpg|dcm``).

Images go through the serving path (``runtime.predict_files``: ``preprocess`` then ONNX Runtime),
so what is measured is what a site gets. Figures are those of ``metrics.classification_report``,
the code that wrote the model card's validation figures.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from medcloud.ai.metrics import classification_report, write_plots
from medcloud.ai.runtime import LoadedModel, predict_files
from medcloud.errors import Invalid

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp", ".dcm"}


def labelled_files(root: Path, labels: list[str]) -> list[tuple[Path, int]]:
    """Files under ``root/<label>/`` (sorted); a folder that is not one of ``labels`` is refused,
    a label without a folder is allowed (its AUC is then undefined)."""
    if not root.is_dir():
        raise Invalid(f"{root}: not a folder (expected {root}/<label>/*.png|jpg|dcm)")
    folders = sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    unknown = [f for f in folders if f not in labels]
    if unknown:
        raise Invalid(f"{root}: folders {', '.join(unknown)} are not labels of the model ({', '.join(labels)})")
    found = [(p, c) for c, label in enumerate(labels) if (root / label).is_dir()
             for p in sorted((root / label).iterdir()) if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES]
    if not found:
        raise Invalid(f"{root}: no images in folders named after the labels ({', '.join(labels)})")
    return found


def evaluate(model: LoadedModel, root: Path, *, batch: int = 32, plots: Path | None = None) -> dict[str, Any]:
    """``classification_report`` + ``{model, version, errors: [{file, error}]}`` (unreadable files are
    listed, not counted)."""
    files = labelled_files(root, model.labels)
    results = predict_files(model, [p for p, _ in files], batch=batch)
    ok = [(r, c) for r, (_, c) in zip(results, files, strict=True) if "error" not in r]
    y = np.array([c for _, c in ok], dtype=np.int64)
    probs = np.array([[r["probabilities"][lab] for lab in model.labels] for r, _ in ok], dtype=np.float64)
    probs = probs.reshape(len(ok), len(model.labels))
    report = {"model": model.name, "version": model.version, **classification_report(y, probs, model.labels),
              "errors": [{"file": r["file"], "error": r["error"]} for r in results if "error" in r]}
    if plots is not None and len(ok):
        report["plots"] = [str(p) for p in write_plots(y, probs, model.labels, plots)]
    return report
