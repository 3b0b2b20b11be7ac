"""The breast-mass-malignancy model: WDBC (scikit-learn's bundled breast-cancer data) -> ONNX package.

Feature mapping (docs/cds.md): each of the 30 WDBC features is an Observation coded in the local
CodeSystem ``http://medcloud.dev/fhir/CodeSystem/wdbc`` with the feature name in kebab case
(``mean-radius``, ``worst-concave-points`` ...), value in ``valueQuantity`` in the unit of the
original data (unitless ``1`` for ratios; the data set's own units otherwise). The built-in
ViewDefinition ``VIEW`` turns them into (feature, value) rows.

Training goes through ``medcloud.analytics.ml`` (logistic regression on standardised features,
stratified CV, held-out test, ONNX parity check). The decision threshold is the largest one that
keeps sensitivity for malignancy at 0.95 or more on the held-out split (stored as the metric
``decision_threshold``); the package also ships ``background.json`` (the training means) for SHAP.
"""

from __future__ import annotations

import json
from typing import Any

import numpy as np

from medcloud.ai.package import ModelPackage
from medcloud.config import CdsModelService

SYSTEM = "http://medcloud.dev/fhir/CodeSystem/wdbc"
MODEL_NAME = "breast-mass-malignancy"
SENSITIVITY = 0.95
VIEW: dict[str, Any] = {
    "resourceType": "ViewDefinition", "name": "wdbc_features", "status": "active", "resource": "Observation",
    "select": [{"column": [
        {"name": "id", "path": "id"},
        {"name": "feature", "path": f"code.coding.where(system = '{SYSTEM}').code.first()"},
        {"name": "value", "path": "value.ofType(Quantity).value"},
        {"name": "effective", "path": "effective.ofType(dateTime)"},
    ]}],
    "where": [{"path": f"code.coding.where(system = '{SYSTEM}').exists()"}],
}


def code(feature_name: str) -> str:
    return feature_name.strip().replace(" ", "-")


def service_config() -> CdsModelService:
    return CdsModelService(
        id="breast-mass-malignancy", title="Breast mass malignancy (WDBC model)", model=MODEL_NAME, view=VIEW,
        description="Probability that a breast mass is malignant from the 30 WDBC fine-needle-aspirate features "
                    f"(Observations coded in {SYSTEM}), with SHAP top features.",
        outcome="malignant breast mass",
        prefetch={"patient": "Patient/{{context.patientId}}",
                  "features": f"Observation?patient={{{{context.patientId}}}}&code={SYSTEM}|&_count=1000"})


def frame() -> Any:
    import pandas as pd
    from sklearn.datasets import load_breast_cancer

    data = load_breast_cancer()
    df = pd.DataFrame(data.data, columns=[code(n) for n in data.feature_names])
    df["diagnosis"] = np.where(data.target == 0, "malignant", "benign")  # sklearn: 0 = malignant
    return df


def train(version: str = "1", seed: int = 0) -> ModelPackage:
    from medcloud.ai import package as packages
    from medcloud.analytics import ml

    options = ml.TrainOptions(target="diagnosis", model="logreg", seed=seed, positive="malignant")
    result = ml.train(ml.prepare(frame(), options), options)
    threshold = decision_threshold(result.y_test, result.p_test)
    pkg = ml.package(result, name=MODEL_NAME, version=version, licence="CC-BY-4.0",
                     source="scikit-learn load_breast_cancer (WDBC, UCI)",
                     intended_use="Research and demonstration of CDS Hooks explanations; not a diagnostic device.")
    scaler = result.pipeline.named_steps["preprocess"].named_transformers_["numeric"].named_steps["scale"]
    background = {"rows": [[float(v) for v in scaler.mean_]],
                  "note": "training means (the scaler's mean_): the SHAP reference point"}
    manifest = pkg.manifest.model_dump(mode="json", exclude={"sha256", "files"})
    manifest["metrics"] = {**manifest["metrics"], "decision_threshold": round(threshold, 6)}
    extra = {n: b for n, b in pkg.files.items() if n not in ("manifest.json", "model.onnx", manifest["model_card"])}
    extra["background.json"] = (json.dumps(background, indent=1) + "\n").encode()
    card = pkg.card + (f"\n\n## Decision threshold\n\n{threshold:.4f}: the largest threshold with sensitivity ≥ "
                       f"{SENSITIVITY} for malignancy on the held-out split.\n")
    return packages.build(manifest, pkg.model, card, extra)


def decision_threshold(y: np.ndarray, p: np.ndarray) -> float:
    """The largest threshold t with sensitivity(p >= t) >= SENSITIVITY."""
    positives = np.sort(p[y == 1])[::-1]
    need = int(np.ceil(SENSITIVITY * len(positives)))
    return float(positives[need - 1]) if need > 0 else 0.5


def observations(patient_id: str, values: dict[str, float], *, effective: str = "2025-01-01T00:00:00Z"
                 ) -> list[dict[str, Any]]:
    """Observations carrying WDBC features for a patient (tests, demos)."""
    return [{"resourceType": "Observation", "id": f"wdbc-{patient_id}-{code(k)}", "status": "final",
             "code": {"coding": [{"system": SYSTEM, "code": code(k)}]},
             "subject": {"reference": f"Patient/{patient_id}"}, "effectiveDateTime": effective,
             "valueQuantity": {"value": float(v)}} for k, v in values.items()]
