"""A tiny spatially-sensitive ONNX image classifier in a valid package (fast; independent of shipped models).

logit(abnormal) = 40 * mean(image * mask) - 2, logit(normal) = 0, where ``mask`` is 1 in the top-left
quadrant: bright pixels there make "abnormal" likely, and occluding that quadrant is what changes
the answer, so an occlusion map must light up there.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from medcloud.ai import package as packages
from medcloud.ai.package import ModelPackage

SIZE = 16
CT_IMAGE = "1.2.840.10008.5.1.4.1.1.2"


def tiny_model(size: int = SIZE) -> bytes:
    from onnx import TensorProto, helper, numpy_helper

    mask = np.zeros((1, 1, size, size), dtype=np.float32)
    mask[..., : size // 2, : size // 2] = 1.0
    w = np.array([[0.0, 40.0]], dtype=np.float32)  # [C=1, labels=2]
    b = np.array([0.0, -2.0], dtype=np.float32)
    graph = helper.make_graph(
        [helper.make_node("Mul", ["image", "mask"], ["masked"]),
         helper.make_node("GlobalAveragePool", ["masked"], ["pooled"]),
         helper.make_node("Flatten", ["pooled"], ["flat"]),
         helper.make_node("Gemm", ["flat", "w", "b"], ["logits"]),
         helper.make_node("Softmax", ["logits"], ["probabilities"], axis=1)],
        "tiny-spatial",
        [helper.make_tensor_value_info("image", TensorProto.FLOAT, ["N", 1, size, size])],
        [helper.make_tensor_value_info("probabilities", TensorProto.FLOAT, ["N", 2])],
        [numpy_helper.from_array(mask, "mask"), numpy_helper.from_array(w, "w"), numpy_helper.from_array(b, "b")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    data: bytes = model.SerializeToString()
    return data


def tiny_package(name: str = "tiny-ct", version: str = "1", **overrides: Any) -> ModelPackage:
    manifest: dict[str, Any] = {
        "name": name, "version": version, "task": "classification", "labels": ["normal", "abnormal"],
        "input": {"kind": "image", "name": "image", "size": [SIZE, SIZE], "channels": 1},
        "applies_to": {"modalities": ["CT"], "sop_classes": [CT_IMAGE]},
        "training_data": {"fingerprint": "0" * 64, "description": "none (test model)", "rows": 0},
        "licence": "CC0-1.0",
    }
    manifest.update(overrides)
    return packages.build(manifest, tiny_model(), "# tiny test model\n")


def png_bytes(bright_top_left: bool, size: int = 32) -> bytes:
    import io

    from PIL import Image

    arr = np.full((size, size), 20, dtype=np.uint8)
    if bright_top_left:
        arr[: size // 2, : size // 2] = 255
    buf = io.BytesIO()
    Image.fromarray(arr, mode="L").save(buf, format="PNG")
    return buf.getvalue()
