"""breast-mass-malignancy and a service made by configuration: registered ONNX model + ViewDefinition."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Any

import numpy as np
import pytest

from medcloud.ai.registry import Registry
from medcloud.cds import wdbc
from medcloud.cds.learned import LearnedService, shap_values
from medcloud.cds.record import PatientRecord
from medcloud.config import CdsModelService

NOW = datetime(2026, 11, 27, tzinfo=UTC)


@pytest.fixture(scope="module")
def trained() -> Any:
    return wdbc.train()


def _case(i: int) -> dict[str, float]:
    from sklearn.datasets import load_breast_cancer

    d = load_breast_cancer()
    return dict(zip(d.feature_names, d.data[i], strict=True))


def _loader(pkg: Any) -> Any:
    return lambda name, version: (pkg, pkg.manifest.version)


def test_breast_mass_probability_threshold_and_shap_top_features(trained: Any) -> None:
    service = LearnedService(wdbc.service_config(), _loader(trained), "doc")
    malignant = PatientRecord([{"resourceType": "Patient", "id": "p"}, *wdbc.observations("p", _case(0))], NOW)
    benign = PatientRecord([{"resourceType": "Patient", "id": "p"}, *wdbc.observations("p", _case(19))], NOW)
    a, b = service.evaluate(malignant), service.evaluate(benign)  # sklearn rows 0 malignant, 19 benign
    assert a.status == b.status == "ok"
    assert a.probability is not None and b.probability is not None
    assert a.probability > a.extra["threshold"] > b.probability
    assert len(a.explanation) == 8 and len(a.basis) == 30
    assert abs(a.explanation[0].contribution) >= abs(a.explanation[-1].contribution)


def test_kernel_shap_equals_the_exact_linear_contributions_of_the_logreg(trained: Any) -> None:
    from medcloud.analytics import ml

    options = ml.TrainOptions(target="diagnosis", model="logreg", seed=0, positive="malignant")
    result = ml.train(ml.prepare(wdbc.frame(), options), options)
    scaler = result.pipeline.named_steps["preprocess"].named_transformers_["numeric"].named_steps["scale"]
    coef = result.pipeline.named_steps["classifier"].coef_[0]
    x = np.asarray(list(_case(5).values()), dtype=np.float32).astype(np.float64)
    exact = coef * (x - scaler.mean_) / scaler.scale_
    background = np.asarray([scaler.mean_])
    assert shap_values(trained, x, background) == pytest.approx(exact, abs=2e-3)


def test_missing_features_are_named_not_imputed(trained: Any) -> None:
    values = _case(0)
    values.pop("worst radius")
    a = LearnedService(wdbc.service_config(), _loader(trained), "doc").evaluate(
        PatientRecord(wdbc.observations("p", values), NOW))
    assert a.status == "incomplete" and a.probability is None and "worst-radius" in a.detail


def test_config_driven_service_over_http_writes_a_risk_assessment(settings: Any, trained: Any, tmp_path: Any) -> None:
    from starlette.testclient import TestClient

    from medcloud.app import build_services, create_app

    config = CdsModelService(id="site-mass-model", title="Site mass model", model="site-model", view=wdbc.VIEW,
                             outcome="malignancy", threshold=0.3)
    s = settings.with_overrides(cds_model_services=[config.model_dump()])
    svc = build_services(s)
    try:
        pkg = wdbc.train(version="7")
        from medcloud.ai import package as packages

        doc = pkg.manifest.model_dump(mode="json", exclude={"sha256", "files"})
        doc["name"] = "site-model"
        extra = {n: b for n, b in pkg.files.items() if n not in ("manifest.json", "model.onnx", "MODEL_CARD.md")}
        Registry(svc.db).register(packages.build(doc, pkg.model, pkg.card, extra), activate=True)
        with TestClient(create_app(s, svc)) as client:
            assert "site-mass-model" in {x["id"] for x in client.get("/cds-services").json()["services"]}
            for r in [{"resourceType": "Patient", "id": "q1"}, *wdbc.observations("q1", _case(0))]:
                assert client.put(f"/fhir/{r['resourceType']}/{r['id']}", json=r).status_code in (200, 201)
            body = {"hook": "patient-view", "hookInstance": str(uuid.uuid4()),
                    "context": {"userId": "Practitioner/u", "patientId": "q1"}, "fhirServer": "http://testserver/fhir"}
            r = client.post("/cds-services/site-mass-model", json=body)
            assert r.status_code == 200, r.text
            card = r.json()["cards"][0]
            assert "site-model 7" in card["detail"] and "threshold 0.30" in card["summary"]
            ras = client.get("/fhir/RiskAssessment?subject=Patient/q1").json()
            ra = ras["entry"][0]["resource"]
            assert len(ra["basis"]) == 30 and 0 <= ra["prediction"][0]["probabilityDecimal"] <= 1
    finally:
        svc.close()


def test_a_broken_view_is_refused_when_the_service_is_built() -> None:
    from medcloud.analytics.errors import ViewDefinitionError

    bad = CdsModelService(id="bad", title="bad", model="m", view={"resourceType": "ViewDefinition",
                                                                  "resource": "Observation", "select": []})
    with pytest.raises(ViewDefinitionError):
        LearnedService(bad, lambda n, v: None, "doc")
