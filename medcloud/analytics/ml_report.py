"""What a trained model shows a reader: ROC and calibration plots, and the model card.

Plots are drawn on a bare ``matplotlib.figure.Figure`` with the Agg canvas, never through
``pyplot``: no global figure state, no GUI backend picked up from the environment, safe in a
server thread. The card follows "Model Cards for Model Reporting" (Mitchell et al., 2019):
data, features, model, metrics, intended use, limits.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from medcloud.analytics.ml import TrainResult

_MODELS = {
    "logreg": "logistic regression (L2, lbfgs)",
    "rf": "random forest (100 trees, min 2 samples per leaf)",
    "gbm": "histogram gradient boosting (100 iterations)",
}


def _figure() -> Any:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(5, 5), dpi=100)
    FigureCanvasAgg(fig)
    return fig


def roc_png(result: TrainResult) -> bytes:
    from sklearn.metrics import roc_curve

    from medcloud.analytics.ml import png_bytes

    fpr, tpr, _ = roc_curve(result.y_test, result.p_test)
    fig = _figure()
    ax = fig.add_subplot()
    ax.plot(fpr, tpr, lw=2, label=f"test split, AUC {result.test['roc_auc']:.3f}")
    ax.plot([0, 1], [0, 1], ls="--", color="grey", lw=1, label="chance")
    cv = result.cv["roc_auc"]
    ax.set(xlim=(0, 1), ylim=(0, 1.01), xlabel="false positive rate (1 - specificity)",
           ylabel="true positive rate (sensitivity)",
           title=f"ROC ({len(cv)}-fold CV AUC {np.mean(cv):.3f} ± {np.std(cv):.3f})")
    ax.legend(loc="lower right")
    fig.tight_layout()
    return png_bytes(fig)


def calibration_png(result: TrainResult) -> bytes:
    from medcloud.analytics.ml import png_bytes

    fig = _figure()
    ax = fig.add_subplot()
    ax.plot([0, 1], [0, 1], ls="--", color="grey", lw=1, label="perfectly calibrated")
    predicted = [b[0] for b in result.calibration_bins]
    observed = [b[1] for b in result.calibration_bins]
    ax.plot(predicted, observed, marker="o", lw=2,
            label=f"test split, Brier {result.test['brier']:.3f}, ECE {result.test['ece']:.3f}")
    ax.set(xlim=(0, 1), ylim=(0, 1), xlabel=f"predicted probability of {result.data.labels[1]!r}",
           ylabel="observed fraction", title="Calibration (10 bins)")
    ax.legend(loc="upper left")
    fig.tight_layout()
    return png_bytes(fig)


def model_card(result: TrainResult, *, name: str, version: str, source: str, intended_use: str,
               licence: str) -> str:
    o, d = result.options, result.data
    positives = int(d.y.sum())
    cal = "" if o.calibration == "none" else f", probabilities calibrated ({o.calibration}, 3-fold)"
    lines = [
        f"# Model card: {name} {version}",
        "",
        f"Binary classifier of `{o.target}` (positive class `{d.labels[1]}`), trained by `medcloud ml train`.",
        "",
        "## Data",
        "",
        f"- source: {source}",
        f"- rows: {len(d.y)} ({positives} `{d.labels[1]}`, {len(d.y) - positives} `{d.labels[0]}`)"
        + (f"; {d.rows_without_target} rows without a target value left out" if d.rows_without_target else ""),
        f"- fingerprint (SHA-256 of the rows used, as CSV): `{d.fingerprint}`",
        f"- split: {1 - o.test_size:.0%} training ({o.folds}-fold stratified cross-validation), "
        f"{o.test_size:.0%} held-out test, stratified; seed {o.seed}",
        "",
        "## Features",
        "",
        "| feature | type | ONNX input | missing in data |",
        "| --- | --- | --- | --- |",
    ]
    for f in d.features:
        column = d.frame[f.input]
        missing = int((column == "").sum()) if f.type == "category" else int(column.isna().sum())
        lines.append(f"| {_cell(f.name)} | {f.type} | `{f.input}` | {missing} |")
    for column, why in d.dropped:
        lines.append(f"| {_cell(column)} | not used: {why} | | |")
    if o.exclude:
        lines.append(f"\nExcluded on request: {', '.join(o.exclude)}.")
    lines += [
        "",
        "## Model",
        "",
        f"- {_MODELS[o.model]}{cal}",
        "- preprocessing: numbers and booleans median-imputed"
        + (" and standardised" if o.model == "logreg" else "")
        + "; categories one-hot encoded (unknown categories ignored, missing = empty string)",
        f"- ONNX (skl2onnx), outputs `label` and `probabilities` (columns: {', '.join(d.labels)}); "
        f"ONNX Runtime reproduces scikit-learn's probabilities on the test split within {result.parity:.1e}",
        "",
        "## Metrics",
        "",
        f"| metric | cross-validation (mean ± sd, {o.folds} folds) | held-out test |",
        "| --- | --- | --- |",
    ]
    for key, label in (("roc_auc", "ROC AUC"), ("accuracy", "accuracy (threshold 0.5)"),
                       ("f1", "F1 (threshold 0.5)"), ("brier", "Brier score")):
        cv = result.cv[key]
        lines.append(f"| {label} | {np.mean(cv):.4f} ± {np.std(cv):.4f} | {result.test[key]:.4f} |")
    lines += [
        f"| expected calibration error | | {result.test['ece']:.4f} |",
        "",
        "![ROC curve on the test split](roc.png)",
        "",
        "![Calibration on the test split](calibration.png)",
        "",
        "## Intended use",
        "",
        intended_use,
        "",
        "## Limits",
        "",
        "- Measured only on data from the source above, split at random: no external or prospective "
        "validation, no check for drift over time or across sites.",
        f"- The test split has {len(result.y_test)} rows; small test sets give wide confidence intervals.",
        "- Accuracy and F1 use a 0.5 threshold; a clinical use needs its own operating point.",
        "- No subgroup (fairness) analysis was run.",
        "",
        f"Licence: {licence}",
        "",
    ]
    return "\n".join(lines)


def _cell(text: str) -> str:
    return text.replace("|", "\\|")
