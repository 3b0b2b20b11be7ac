"""Classification figures for image models: the same code writes the model card and answers
``medcloud ai evaluate``, so a card's validation figures and a site's own evaluation are comparable.

ECE is the expected calibration error over 15 equal-width bins of the top-class confidence
(Guo et al., "On Calibration of Modern Neural Networks", ICML 2017). Macro AUC is the unweighted
mean of one-vs-rest ROC AUCs; for two classes it is the plain AUC of the second label.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

ECE_BINS = 15


def expected_calibration_error(y: np.ndarray, probs: np.ndarray, bins: int = ECE_BINS) -> float:
    conf = probs.max(axis=1)
    correct = probs.argmax(axis=1) == y
    edges = np.linspace(0.0, 1.0, bins + 1)
    ece = 0.0
    for lo, hi in zip(edges[:-1], edges[1:], strict=True):
        inside = (conf > lo) & (conf <= hi) if lo > 0 else (conf >= lo) & (conf <= hi)
        if inside.any():
            ece += inside.mean() * abs(correct[inside].mean() - conf[inside].mean())
    return float(ece)


def macro_auc(y: np.ndarray, probs: np.ndarray) -> float | None:
    """None when a class is absent from ``y`` (its AUC is undefined)."""
    from sklearn.metrics import roc_auc_score

    k = probs.shape[1]
    if len(np.unique(y)) < k:
        return None
    if k == 2:
        return float(roc_auc_score(y, probs[:, 1]))
    return float(np.mean([roc_auc_score(y == c, probs[:, c]) for c in range(k)]))


def classification_report(y: np.ndarray, probs: np.ndarray, labels: list[str]) -> dict[str, Any]:
    """``{n, accuracy, macro_auc, ece, per_class: {label: {precision, recall, f1, support}},
    confusion_matrix: {labels, matrix (rows = truth, columns = prediction)}}``."""
    from sklearn.metrics import confusion_matrix, precision_recall_fscore_support

    y = np.asarray(y, dtype=np.int64)
    pred = probs.argmax(axis=1)
    k = len(labels)
    p, r, f, s = precision_recall_fscore_support(y, pred, labels=list(range(k)), zero_division=0)
    return {
        "n": int(len(y)),
        "accuracy": float((pred == y).mean()) if len(y) else 0.0,
        "macro_auc": macro_auc(y, probs),
        "ece": expected_calibration_error(y, probs) if len(y) else 0.0,
        "per_class": {labels[c]: {"precision": float(p[c]), "recall": float(r[c]), "f1": float(f[c]),
                                  "support": int(s[c])} for c in range(k)},
        "confusion_matrix": {"labels": labels,
                             "matrix": confusion_matrix(y, pred, labels=list(range(k))).tolist()},
    }


def write_plots(y: np.ndarray, probs: np.ndarray, labels: list[str], out: Path, prefix: str = "") -> list[Path]:
    """ROC curves, confusion matrix and reliability diagram as PNGs in ``out``; returns the paths."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from sklearn.metrics import roc_curve

    out.mkdir(parents=True, exist_ok=True)
    y = np.asarray(y, dtype=np.int64)
    paths = [out / f"{prefix}roc.png", out / f"{prefix}confusion.png", out / f"{prefix}calibration.png"]

    fig, ax = plt.subplots(figsize=(4.5, 4.5), dpi=80)
    classes = [1] if len(labels) == 2 else range(len(labels))
    for c in classes:
        if 0 < (y == c).sum() < len(y):
            fpr, tpr, _ = roc_curve(y == c, probs[:, c])
            ax.plot(fpr, tpr, label=labels[c])
    ax.plot([0, 1], [0, 1], "k:", lw=0.8)
    ax.set(xlabel="false positive rate", ylabel="true positive rate", title="ROC (one vs rest)")
    ax.legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    fig.savefig(paths[0], metadata={"Software": None})
    plt.close(fig)

    report = classification_report(y, probs, labels)
    matrix = np.array(report["confusion_matrix"]["matrix"])
    fig, ax = plt.subplots(figsize=(4.5, 4.5), dpi=80)
    ax.imshow(matrix, cmap="Blues")
    for (i, j), v in np.ndenumerate(matrix):
        ax.text(j, i, str(v), ha="center", va="center", fontsize=9,
                color="white" if v > matrix.max() / 2 else "black")
    ax.set_xticks(range(len(labels)), labels, rotation=30, ha="right", fontsize=7)
    ax.set_yticks(range(len(labels)), labels, fontsize=7)
    ax.set(xlabel="predicted", ylabel="true", title="confusion matrix")
    fig.tight_layout()
    fig.savefig(paths[1], metadata={"Software": None})
    plt.close(fig)

    conf, correct = probs.max(axis=1), probs.argmax(axis=1) == y
    edges = np.linspace(0, 1, ECE_BINS + 1)
    idx = np.clip(np.digitize(conf, edges[1:-1]), 0, ECE_BINS - 1)
    centres, accs = [], []
    for b in range(ECE_BINS):
        if (idx == b).any():
            centres.append(conf[idx == b].mean())
            accs.append(correct[idx == b].mean())
    fig, ax = plt.subplots(figsize=(4.5, 4.5), dpi=80)
    ax.plot([0, 1], [0, 1], "k:", lw=0.8)
    ax.plot(centres, accs, "o-")
    ax.set(xlabel="confidence (top class)", ylabel="accuracy",
           title=f"reliability (ECE {report['ece']:.3f})", xlim=(0, 1), ylim=(0, 1))
    fig.tight_layout()
    fig.savefig(paths[2], metadata={"Software": None})
    plt.close(fig)
    return paths
