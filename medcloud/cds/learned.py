"""Services backed by a registered tabular model: a ViewDefinition gives the features, ONNX Runtime the
probability, shap the explanation. ``breast-mass-malignancy`` is one of them with a built-in view;
a site adds its own in ``Settings.cds_model_services`` without code.

Features: the view runs (DuckDB engine of analytics) over the patient's resources of its type. A
*long* view (columns ``feature`` and ``value``, optional ``effective`` and ``id``) gives one row per
observation; the latest row per feature wins. A *wide* view gives one row whose columns are named
after the model's features (manifest ``name`` or ``input``). A feature with no value is named in the
card; the model's own imputation is used only up to ``max_missing`` features (default 0).

Explanation: Kernel SHAP (``shap.KernelExplainer``) on the model's log-odds, with the background
rows the package ships in ``background.json`` (else the feature means of the patient row: then every
contribution is 0 and the card says so). For a pipeline that is linear in log-odds (standard scaling
+ logistic regression, what ``breast-mass-malignancy`` is) and a one-row background at the training
means, Kernel SHAP is exact and equals shap's LinearExplainer (interventional): coefficient ×
(scaled value − scaled mean) per feature; tests/cds check that against scikit-learn's coefficients.
"""

from __future__ import annotations

import json
import threading
from dataclasses import dataclass
from typing import Any

import numpy as np

from medcloud.ai.package import ModelPackage
from medcloud.ai.runtime import LoadedModel, Runtime
from medcloud.cds.assessment import Assessment, Contribution
from medcloud.cds.record import PatientRecord
from medcloud.config import CdsModelService

BACKGROUND = "background.json"
TOP_FEATURES = 8


def predict_probabilities(pkg: ModelPackage, rows: np.ndarray) -> np.ndarray:
    """Positive-class probabilities for ``rows`` (float features in manifest order), run by the
    AI runtime (medcloud/ai/runtime.py: one ONNX Runtime session per package digest, shared)."""
    return _RUNTIME.session(pkg).predict_table(rows)[:, 1]


class _Sessions:
    """ONNX Runtime sessions of CDS models by package digest (safe to lose: rebuilt on demand)."""

    def __init__(self) -> None:
        self._runtime = Runtime(None, threads=1)
        self._loaded: dict[str, LoadedModel] = {}
        self._lock = threading.Lock()

    def session(self, pkg: ModelPackage) -> LoadedModel:
        key = pkg.manifest.sha256
        with self._lock:
            found = self._loaded.get(key)
        if found is None:
            found = self._runtime.session_for(pkg, pkg.sha256)
            with self._lock:
                self._loaded[key] = found
        return found


_RUNTIME = _Sessions()


def shap_values(pkg: ModelPackage, row: np.ndarray, background: np.ndarray) -> np.ndarray:
    """Kernel SHAP contributions (log-odds) of each feature for one row."""
    import warnings

    with warnings.catch_warnings():  # shap's import touches a matplotlib API that warns of its deprecation
        warnings.simplefilter("ignore", PendingDeprecationWarning)
        import shap

    def logit(x: np.ndarray) -> np.ndarray:
        p = np.clip(predict_probabilities(pkg, np.asarray(x, dtype=np.float64)), 1e-12, 1 - 1e-12)
        return np.log(p / (1 - p))

    explainer = shap.KernelExplainer(logit, background)
    # No L1 feature selection: the model is additive in log-odds, so plain least squares is exact.
    values = explainer.shap_values(row.reshape(1, -1), nsamples=2 * row.size + 2048, l1_reg=False, silent=True)
    return np.asarray(values, dtype=np.float64).reshape(-1)


@dataclass(frozen=True)
class Features:
    values: dict[str, float]
    refs: tuple[str, ...]


def view_features(view: dict[str, Any], record: PatientRecord) -> Features:
    """Run the ViewDefinition over the record; long or wide rows -> feature values (see module doc)."""
    from medcloud.analytics.engines.duckdb import DuckDBEngine

    resources = record.of_type(str(view.get("resource", "")))
    if not resources:
        return Features({}, ())
    with DuckDBEngine() as engine:
        result = engine.run(view, resources)
    if {"feature", "value"} <= set(result.columns):
        latest: dict[str, tuple[str, float, str | None]] = {}
        for row in result.rows:
            name, value = row.get("feature"), row.get("value")
            if not isinstance(name, str) or not isinstance(value, int | float) or isinstance(value, bool):
                continue
            when = str(row.get("effective") or "")
            if name not in latest or when >= latest[name][0]:
                rid = row.get("id")
                latest[name] = (when, float(value), f"{view['resource']}/{rid}" if rid else None)
        return Features({k: v[1] for k, v in latest.items()}, tuple(v[2] for v in latest.values() if v[2]))
    values: dict[str, float] = {}
    for row in result.rows[:1]:
        for k, v in row.items():
            if isinstance(v, int | float):  # bool too: True -> 1.0
                values[k] = float(v)
    return Features(values, ())


class LearnedService:
    """A CDS service from a registered tabular model and a ViewDefinition (``CdsModelService``)."""

    def __init__(self, config: CdsModelService, load: Any, doc_url: str):
        from medcloud.analytics.viewdef import parse_view

        parse_view(config.view)  # a broken view stops the start with the parser's location, not a request later
        self.config = config
        self.id = config.id
        self.title = config.title
        self.description = config.description or f"Probability from the registered model {config.model}."
        self.hook = config.hook
        resource = str(config.view.get("resource", "Observation"))
        self.prefetch = dict(config.prefetch) or {
            "patient": "Patient/{{context.patientId}}",
            "features": f"{resource}?patient={{{{context.patientId}}}}&_sort=-_lastUpdated&_count=1000"
            if resource != "Patient" else "Patient/{{context.patientId}}"}
        self.outcome = config.outcome or config.model
        self._load = load  # (name, version) -> (ModelPackage, version string)
        self.doc = doc_url

    def evaluate(self, record: PatientRecord, context: dict[str, Any] | None = None) -> Assessment:
        cfg = self.config
        try:
            pkg, version = self._load(cfg.model, cfg.version)
        except Exception as e:  # noqa: BLE001 - NotFound, a refused package: the card says which
            return Assessment(self.id, "not-applicable", f"Model {cfg.model} is not available",
                              detail=f"The model could not be loaded: {e}", indicator="warning")
        spec = pkg.manifest.input
        if spec.kind != "tabular" or any(f.type == "category" for f in spec.features):
            return Assessment(self.id, "not-applicable", f"Model {cfg.model} is not a numeric tabular model",
                              indicator="warning")
        try:
            found = view_features(cfg.view, record)
        except Exception as e:  # noqa: BLE001 - the view failed on this record's data: say so on the card
            return Assessment(self.id, "not-applicable", f"{self.title}: the feature view failed on this record",
                              detail=f"ViewDefinition error: {e}", indicator="warning", model=cfg.model)
        names = [f.name for f in spec.features]
        row, missing = [], []
        for f in spec.features:
            v = found.values.get(f.name, found.values.get(f.input))
            if v is None:
                missing.append(f.name)
                row.append(np.nan)
            else:
                row.append(v)
        method = f"{cfg.model} {version} (ONNX)"
        if len(missing) > cfg.max_missing:
            shown = ", ".join(missing[:10]) + (f" and {len(missing) - 10} more" if len(missing) > 10 else "")
            return Assessment(self.id, "incomplete", f"{self.title}: not computed, {len(missing)} of {len(names)} "
                              "features missing", detail="**Missing features**: " + shown +
                              "\n\nNo value is guessed.", basis=found.refs, method=method,
                              model=cfg.model, model_version=version)
        x = np.asarray(row, dtype=np.float64)
        p = float(predict_probabilities(pkg, x.reshape(1, -1))[0])
        threshold = cfg.threshold if cfg.threshold is not None else pkg.manifest.metrics.get("decision_threshold", 0.5)
        background = _background(pkg)
        contributions = shap_values(pkg, np.nan_to_num(x, nan=0.0), background) if background is not None and \
            not missing else np.zeros(len(names))
        order = np.argsort(-np.abs(contributions))[:TOP_FEATURES]
        explanation = tuple(Contribution(names[i], f"{x[i]:.4g}", float(contributions[i])) for i in order)
        positive = pkg.manifest.labels[1]
        high = p >= threshold
        detail = (f"**{p:.1%}** probability of *{positive}* (model {cfg.model} {version}); decision threshold "
                  f"{threshold:.2f} → **{'above' if high else 'below'}**.\n\n"
                  + ("Top features by |SHAP value| (Kernel SHAP on the log-odds, against the training means)."
                     if background is not None and not missing else "No SHAP background in the package: "
                     "no explanation."))
        return Assessment(
            self.id, "ok", f"{self.title}: {p:.1%} ({'above' if high else 'below'} threshold {threshold:.2f})",
            detail=detail, indicator="warning" if high else "info", probability=round(p, 4),
            qualitative="high" if high else "low", outcome=self.outcome, basis=found.refs, explanation=explanation,
            explanation_unit="log-odds (SHAP)", problems=tuple(f"{m}: missing, imputed by the model" for m in missing),
            method=method, model=cfg.model, model_version=version, extra={"threshold": threshold})


def _background(pkg: ModelPackage) -> np.ndarray | None:
    raw = pkg.files.get(BACKGROUND)
    if raw is None:
        return None
    doc = json.loads(raw)
    return np.asarray(doc["rows"], dtype=np.float64)
