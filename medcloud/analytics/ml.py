"""Tabular ML pipelines (issue 6): a table in, a checked ONNX model package out.

``prepare`` turns a table (CSV, or a ViewDefinition's rows) into features and a binary target;
``train`` fits a scikit-learn pipeline (impute, scale, one-hot -> logistic regression, random
forest or histogram gradient boosting, optionally calibrated), measures it by stratified k-fold
cross-validation on the training split and once on a held-out test split, exports it to ONNX
with skl2onnx and refuses the export unless ONNX Runtime's probabilities equal scikit-learn's
within ``PARITY_TOLERANCE`` on the test split. ``package`` adds the plots and the model card
(``ml_report.py``) and builds a model package (``ai/package.py``) for the registry.

Everything random takes the one ``seed``: the same table and options give the same metrics and
the same ONNX model. Numbers are rounded to float32 before training because the ONNX model
receives float32; scikit-learn then sees exactly the values the exported model will see (that is
also why tree models get no scaler: a threshold compared with a rescaled float32 can flip).
"""

from __future__ import annotations

import hashlib
import io
import re
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np

from medcloud.ai.package import Feature, ModelPackage
from medcloud.analytics.errors import SourceError
from medcloud.errors import Invalid, Unprocessable

if TYPE_CHECKING:
    import pandas as pd

ModelKind = Literal["logreg", "rf", "gbm"]
Calibration = Literal["none", "sigmoid"]  # isotonic: the ONNX export does not match (docs/analytics.md)
PARITY_TOLERANCE = 1e-5
_TRUE = {"true", "1", "yes", "y", "t"}
_FALSE = {"false", "0", "no", "n", "f"}


@dataclass(frozen=True)
class TrainOptions:
    target: str
    model: ModelKind = "logreg"
    seed: int = 0
    folds: int = 5
    test_size: float = 0.2
    calibration: Calibration = "none"
    positive: str | None = None  # the positive class (default: true/1/yes, else the second in sort order)
    exclude: tuple[str, ...] = ()


@dataclass(frozen=True)
class Dataset:
    """Features (columns renamed to their ONNX input names) and the 0/1 target."""

    frame: pd.DataFrame
    y: np.ndarray
    features: list[Feature]
    labels: list[str]  # [negative, positive]
    fingerprint: str  # SHA-256 of the rows used (features + target, original names), as CSV
    dropped: list[tuple[str, str]] = field(default_factory=list)  # (column, why)
    rows_without_target: int = 0


@dataclass
class TrainResult:
    options: TrainOptions
    data: Dataset
    pipeline: Any
    cv: dict[str, list[float]]  # metric -> one value per fold
    test: dict[str, float]
    y_test: np.ndarray
    p_test: np.ndarray  # scikit-learn's positive-class probabilities on the test split
    onnx_model: bytes
    parity: float  # max |ONNX - scikit-learn| probability on the test split
    calibration_bins: list[tuple[float, float, int]]  # (mean predicted, observed rate, count)

    def metrics(self) -> dict[str, float]:
        out: dict[str, float] = {}
        for name, values in self.cv.items():
            out[f"cv_{name}_mean"] = float(np.mean(values))
            out[f"cv_{name}_std"] = float(np.std(values))
        out.update({f"test_{k}": v for k, v in self.test.items()})
        return {k: round(v, 6) for k, v in out.items()}


# -- data ---------------------------------------------------------------------------------------------

def read_csv(path: Path) -> pd.DataFrame:
    import pandas as pd

    try:
        frame = pd.read_csv(path)
    except FileNotFoundError as e:
        raise SourceError(f"{path}: no such file") from e
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as e:
        raise SourceError(f"{path}: not a readable CSV table: {str(e).splitlines()[0]}") from e
    frame.columns = [str(c).strip() for c in frame.columns]
    return frame


def prepare(frame: pd.DataFrame, options: TrainOptions) -> Dataset:
    """Pick features and the binary target; raises Invalid with what is wrong with the table."""
    import pandas as pd

    target = options.target
    if target not in frame.columns:
        raise Invalid(f"target column {target!r} is not in the table; columns: {', '.join(map(str, frame.columns))}")
    if unknown := sorted(set(options.exclude) - set(frame.columns)):
        raise Invalid(f"--exclude names columns that are not in the table: {', '.join(unknown)}")
    has_target = frame[target].notna() & (frame[target].astype(str).str.strip() != "")
    rows_without_target = int((~has_target).sum())
    frame = frame[has_target].reset_index(drop=True)
    y_text = frame[target].map(_label_text)
    classes = sorted(set(y_text))
    if len(classes) != 2:
        raise Invalid(f"target {target!r} must have exactly two classes (binary classification); "
                      f"found {len(classes)}: {', '.join(classes[:10])}")
    positive = options.positive if options.positive is not None else _default_positive(classes)
    if positive not in classes:
        raise Invalid(f"positive class {positive!r} is not a value of {target!r} ({', '.join(classes)})")
    labels = [next(c for c in classes if c != positive), positive]
    y = (y_text == positive).to_numpy(dtype=np.int64)
    smallest = int(min(y.sum(), len(y) - y.sum()))
    if smallest < options.folds + 2:
        raise Invalid(f"too few rows: the smaller class has {smallest}; cross-validation with {options.folds} "
                      f"folds and a test split needs at least {options.folds + 2}")
    columns: dict[str, pd.Series] = {}
    features: list[Feature] = []
    dropped: list[tuple[str, str]] = []
    taken: set[str] = set()
    for col in frame.columns:
        if col == target or col in options.exclude:
            continue
        kind, values, why = _feature(frame[col])
        if kind is None:
            dropped.append((col, why))
            continue
        name = _input_name(col, taken)
        columns[name] = values
        features.append(Feature(name=col, input=name, type=kind))
    if not features:
        raise Invalid("no usable feature columns besides the target")
    used = pd.DataFrame({f.name: columns[f.input] for f in features}).assign(**{target: y_text.to_numpy()})
    fingerprint = hashlib.sha256(used.to_csv(index=False, lineterminator="\n").encode()).hexdigest()
    return Dataset(pd.DataFrame(columns), y, features, labels, fingerprint, dropped, rows_without_target)


def _label_text(value: Any) -> str:
    if isinstance(value, bool | np.bool_):
        return "true" if value else "false"
    if isinstance(value, float | np.floating) and float(value).is_integer():
        return str(int(value))
    return str(value).strip()


def _default_positive(classes: list[str]) -> str:
    for c in classes:
        if c.lower() in _TRUE:
            return c
    return classes[1]


def _feature(series: pd.Series) -> tuple[Literal["number", "boolean", "category"] | None, Any, str]:
    import pandas as pd

    present = series.dropna()
    if present.empty:
        return None, None, "no values"
    if pd.api.types.is_bool_dtype(series):
        return "boolean", series.astype("float64").astype("float32").astype("float64"), ""
    if pd.api.types.is_numeric_dtype(series):
        return "number", series.astype("float64").astype("float32").astype("float64"), ""
    text = present.astype(str).str.strip().str.lower()
    if set(text) <= _TRUE | _FALSE and set(text) & {"true", "false"}:
        mapped = series.map(lambda v: np.nan if pd.isna(v) else float(str(v).strip().lower() in _TRUE))
        return "boolean", mapped.astype("float64"), ""
    if len(series) > 20 and present.nunique() == len(series):
        return None, None, "identifier-like: every value is distinct"
    return "category", series.map(lambda v: "" if pd.isna(v) else str(v)).astype(object), ""


def _input_name(column: str, taken: set[str]) -> str:
    base = re.sub(r"\W", "_", column, flags=re.ASCII) or "feature"
    if not re.match(r"[A-Za-z_]", base):
        base = f"f_{base}"
    name, n = base, 2
    while name in taken:
        name, n = f"{base}_{n}", n + 1
    taken.add(name)
    return name


# -- training -----------------------------------------------------------------------------------------

def pipeline(data: Dataset, options: TrainOptions) -> Any:
    """The unfitted scikit-learn pipeline for ``data``."""
    from sklearn.calibration import CalibratedClassifierCV
    from sklearn.compose import ColumnTransformer
    from sklearn.ensemble import HistGradientBoostingClassifier, RandomForestClassifier
    from sklearn.impute import SimpleImputer
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import Pipeline
    from sklearn.preprocessing import OneHotEncoder, StandardScaler

    numeric = [f.input for f in data.features if f.type != "category"]
    categories = [f.input for f in data.features if f.type == "category"]
    impute = SimpleImputer(strategy="median")
    num: Any = Pipeline([("impute", impute), ("scale", StandardScaler())]) if options.model == "logreg" else impute
    parts: list[tuple[str, Any, list[str]]] = []
    if numeric:
        parts.append(("numeric", num, numeric))
    if categories:
        parts.append(("categories", OneHotEncoder(handle_unknown="ignore", sparse_output=False), categories))
    classifier: Any = {
        "logreg": lambda: LogisticRegression(max_iter=5000, random_state=options.seed),
        "rf": lambda: RandomForestClassifier(n_estimators=100, min_samples_leaf=2, random_state=options.seed,
                                             n_jobs=1),
        "gbm": lambda: HistGradientBoostingClassifier(max_iter=100, random_state=options.seed),
    }[options.model]()
    if options.calibration != "none":
        classifier = CalibratedClassifierCV(classifier, method=options.calibration, cv=3)
    return Pipeline([("preprocess", ColumnTransformer(parts)), ("classifier", classifier)])


def train(data: Dataset, options: TrainOptions) -> TrainResult:
    """Cross-validate, fit on the training split, test, export to ONNX and check parity."""
    from sklearn.base import clone
    from sklearn.model_selection import StratifiedKFold, train_test_split

    idx = np.arange(len(data.y))
    train_idx, test_idx = train_test_split(idx, test_size=options.test_size, stratify=data.y,
                                           random_state=options.seed)
    x_train, y_train = data.frame.iloc[train_idx], data.y[train_idx]
    x_test, y_test = data.frame.iloc[test_idx], data.y[test_idx]
    unfitted = pipeline(data, options)
    cv: dict[str, list[float]] = {"roc_auc": [], "accuracy": [], "f1": [], "brier": []}
    folds = StratifiedKFold(n_splits=options.folds, shuffle=True, random_state=options.seed)
    for fit_idx, val_idx in folds.split(x_train, y_train):
        model = clone(unfitted).fit(x_train.iloc[fit_idx], y_train[fit_idx])
        scores = _scores(y_train[val_idx], model.predict_proba(x_train.iloc[val_idx])[:, 1])
        for k in cv:
            cv[k].append(scores[k])
    fitted = clone(unfitted).fit(x_train, y_train)
    p_test = fitted.predict_proba(x_test)[:, 1]
    test = _scores(y_test, p_test)
    bins = calibration_bins(y_test, p_test)
    test["ece"] = float(sum(c * abs(p - o) for p, o, c in bins) / len(y_test))  # expected calibration error
    onnx_model = export_onnx(fitted, data.features)
    onnx_p = predict_onnx(onnx_model, x_test, data.features)[:, 1]
    parity = float(np.max(np.abs(onnx_p - p_test)))
    if parity > PARITY_TOLERANCE:
        raise Unprocessable(f"the ONNX export does not reproduce the model: probabilities differ by up to "
                            f"{parity:.2g} on the test split (allowed {PARITY_TOLERANCE:g})")
    return TrainResult(options, data, fitted, cv, test, y_test, p_test, onnx_model, parity, bins)


def calibration_bins(y: np.ndarray, p: np.ndarray, n_bins: int = 10) -> list[tuple[float, float, int]]:
    """Reliability diagram: per non-empty probability bin, (mean predicted, observed rate, count).

    The binning is scikit-learn's ``calibration_curve(strategy="uniform")``; the counts come along.
    """
    ids = np.searchsorted(np.linspace(0.0, 1.0, n_bins + 1)[1:-1], p)
    out = []
    for b in range(n_bins):
        mask = ids == b
        if mask.any():
            out.append((float(p[mask].mean()), float(y[mask].mean()), int(mask.sum())))
    return out


def _scores(y: np.ndarray, p: np.ndarray) -> dict[str, float]:
    from sklearn.metrics import accuracy_score, brier_score_loss, f1_score, roc_auc_score

    predicted = (p >= 0.5).astype(int)
    return {"roc_auc": float(roc_auc_score(y, p)), "accuracy": float(accuracy_score(y, predicted)),
            "f1": float(f1_score(y, predicted, zero_division=0)), "brier": float(brier_score_loss(y, p))}


# -- ONNX ---------------------------------------------------------------------------------------------

def export_onnx(fitted: Any, features: list[Feature]) -> bytes:
    """skl2onnx export: one ``[N, 1]`` input per feature, outputs ``label`` and ``probabilities``."""
    from skl2onnx import convert_sklearn
    from skl2onnx.common.data_types import FloatTensorType, StringTensorType

    inputs = [(f.input, StringTensorType([None, 1]) if f.type == "category" else FloatTensorType([None, 1]))
              for f in features]
    classifier = fitted.steps[-1][1]
    try:
        with warnings.catch_warnings():
            # skl2onnx writes HistGradientBoosting's missing-value flags as Python bools into an int
            # attribute; protobuf 6 warns (7 refuses, hence the pin in pyproject.toml). Values are right.
            warnings.filterwarnings("ignore", message=r"Field onnx\.AttributeProto\.ints: Expected an int, got a boolean",
                                    category=DeprecationWarning)
            proto = convert_sklearn(fitted, initial_types=inputs, options={id(classifier): {"zipmap": False}})
    except Exception as e:  # skl2onnx raises RuntimeError/TypeError/NotImplementedError for unsupported parts
        raise Unprocessable(f"cannot export the pipeline to ONNX: {str(e).splitlines()[0]}") from e
    data: bytes = proto.SerializeToString()
    return data


def onnx_feeds(frame: pd.DataFrame, features: list[Feature]) -> dict[str, np.ndarray]:
    """ONNX Runtime inputs for rows whose columns are the features' input names."""
    feeds = {}
    for f in features:
        column = frame[f.input]
        if f.type == "category":
            feeds[f.input] = column.astype(str).to_numpy(dtype=object).reshape(-1, 1)
        else:
            feeds[f.input] = column.to_numpy(dtype=np.float32).reshape(-1, 1)
    return feeds


def predict_onnx(model: bytes, frame: pd.DataFrame, features: list[Feature]) -> np.ndarray:
    """Class probabilities ``[N, 2]`` from the exported model, run by ONNX Runtime."""
    import onnxruntime

    session = onnxruntime.InferenceSession(model, providers=["CPUExecutionProvider"])
    probabilities = session.run(["probabilities"], onnx_feeds(frame, features))[0]
    return np.asarray(probabilities, dtype=np.float64)


# -- the package --------------------------------------------------------------------------------------

def package(result: TrainResult, *, name: str, version: str, licence: str, source: str,
            intended_use: str) -> ModelPackage:
    """The model package: model.onnx, manifest.json, MODEL_CARD.md, roc.png, calibration.png."""
    from medcloud.ai import package as packages
    from medcloud.analytics import ml_report

    plots = {"roc.png": ml_report.roc_png(result), "calibration.png": ml_report.calibration_png(result)}
    manifest = {
        "name": name, "version": version, "task": "classification", "labels": result.data.labels,
        "input": {"kind": "tabular", "features": [f.model_dump(exclude_none=True) for f in result.data.features]},
        "outputs": {"probabilities": "probabilities", "label": "label"},
        "metrics": result.metrics(),
        "training_data": {"fingerprint": result.data.fingerprint, "description": source,
                          "rows": len(result.data.y)},
        "licence": licence,
    }
    card = ml_report.model_card(result, name=name, version=version, source=source, intended_use=intended_use,
                                licence=licence)
    return packages.build(manifest, result.onnx_model, card, plots)


def png_bytes(figure: Any) -> bytes:
    buf = io.BytesIO()
    figure.savefig(buf, format="png", metadata={"Software": None})
    return buf.getvalue()
