"""Small real models for the package and registry tests: a trained tabular package, an ONNX image model."""

from __future__ import annotations

from typing import Any

import numpy as np

from medcloud.ai import package as packages
from medcloud.ai.package import ModelPackage


def tabular_package(name: str = "toy-risk", version: str = "1", seed: int = 0) -> ModelPackage:
    """A logistic regression on 120 synthetic rows (two numbers, one category), trained by medcloud ml."""
    import pandas as pd

    from medcloud.analytics import ml

    rng = np.random.default_rng(seed)
    n = 120
    age = rng.normal(60, 10, n)
    bmi = rng.normal(27, 4, n)
    smoker = rng.choice(["yes", "no"], n)
    risk = 0.08 * (age - 60) + 0.2 * (bmi - 27) + (smoker == "yes") * 1.0 + rng.normal(0, 1, n)
    frame = pd.DataFrame({"age": age, "bmi": bmi, "smoker": smoker, "event": np.where(risk > 0.5, "yes", "no")})
    options = ml.TrainOptions(target="event", folds=2, seed=seed)
    result = ml.train(ml.prepare(frame, options), options)
    return ml.package(result, name=name, version=version, licence="CC0-1.0", source="synthetic test data",
                      intended_use="tests")


def image_model(size: tuple[int, int] = (8, 8), channels: int = 1, labels: int = 2) -> bytes:
    """ONNX: image [N, C, H, W] -> global average pool -> linear -> softmax ``probabilities`` [N, labels]."""
    from onnx import TensorProto, helper, numpy_helper

    weights = numpy_helper.from_array(np.ones((channels, labels), dtype=np.float32), "w")
    graph = helper.make_graph(
        [helper.make_node("GlobalAveragePool", ["image"], ["pooled"]),
         helper.make_node("Flatten", ["pooled"], ["flat"]),
         helper.make_node("MatMul", ["flat", "w"], ["logits"]),
         helper.make_node("Softmax", ["logits"], ["probabilities"], axis=1)],
        "tiny",
        [helper.make_tensor_value_info("image", TensorProto.FLOAT, ["N", channels, *size])],
        [helper.make_tensor_value_info("probabilities", TensorProto.FLOAT, ["N", labels])],
        [weights],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    data: bytes = model.SerializeToString()
    return data


def image_manifest(**overrides: Any) -> dict[str, Any]:
    doc: dict[str, Any] = {
        "name": "chest-xray-toy", "version": "1", "task": "classification", "labels": ["normal", "abnormal"],
        "input": {"kind": "image", "name": "image", "size": [8, 8], "channels": 1,
                  "normalisation": {"scale": 1 / 255, "mean": [0.5], "std": [0.25]},
                  "windowing": {"center": 40, "width": 400}},
        "applies_to": {"modalities": ["CR", "DX"], "body_parts": ["CHEST"], "sop_classes": ["1.2.840.10008.5.1.4.1.1.1"]},
        "metrics": {"auc": 0.5},
        "training_data": {"fingerprint": "0" * 64, "description": "none", "rows": 0},
        "licence": "Apache-2.0",
    }
    doc.update(overrides)
    return doc


def image_package(**overrides: Any) -> ModelPackage:
    return packages.build(image_manifest(**overrides), image_model(), "# toy image model\n")
