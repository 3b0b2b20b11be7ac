"""AI inference benchmark: per-image latency, batched throughput, and STOW-RS -> DiagnosticReport latency.

    .venv/bin/python bench/ai.py                          # the shipped brain-mri package if present
    .venv/bin/python bench/ai.py --package path/to/model.zip -n 200 --batch 32 --threads 2
    .venv/bin/python bench/ai.py --e2e-studies 3 --e2e-images 8

Without a shipped brain-mri package a stand-in CNN is generated (``--size`` grey, default 96 x 96;
three 3 x 3 convolutions of 16, 32 and 64 channels, global pooling, 4 classes) and the result
says so: its numbers are not the brain model's. Inference runs through ``medcloud.ai.runtime``
exactly as serving does (preprocessed inputs, one ONNX Runtime session, ``ai_threads`` threads).

End to end: a fresh SQLite store and the real app (its in-process worker thread running), one
study per round STOWed over the ASGI test client; the clock stops when its DiagnosticReport can
be read. The archive's quiet period (``--quiet``, default 0.5 s) is part of that latency by design
(a study is read once it is complete); it is reported next to it. Results go to
bench/results/<utc>-ai.json.
"""

from __future__ import annotations

import argparse
import datetime as dt
import io
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"
sys.path.insert(0, str(ROOT))


def stand_in_package(size: int = 96) -> Any:
    from onnx import TensorProto, helper, numpy_helper

    from medcloud.ai import package as packages

    rng = np.random.default_rng(0)

    def init(name: str, *shape: int) -> Any:
        return numpy_helper.from_array((rng.standard_normal(shape) * 0.1).astype(np.float32), name)

    nodes = [
        helper.make_node("Conv", ["image", "c1w", "c1b"], ["c1"], pads=[1, 1, 1, 1], strides=[2, 2]),
        helper.make_node("Relu", ["c1"], ["r1"]),
        helper.make_node("MaxPool", ["r1"], ["p1"], kernel_shape=[2, 2], strides=[2, 2]),
        helper.make_node("Conv", ["p1", "c2w", "c2b"], ["c2"], pads=[1, 1, 1, 1], strides=[2, 2]),
        helper.make_node("Relu", ["c2"], ["r2"]),
        helper.make_node("Conv", ["r2", "c3w", "c3b"], ["c3"], pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c3"], ["r3"]),
        helper.make_node("GlobalAveragePool", ["r3"], ["g"]),
        helper.make_node("Flatten", ["g"], ["f"]),
        helper.make_node("Gemm", ["f", "fw", "fb"], ["logits"]),
        helper.make_node("Softmax", ["logits"], ["probabilities"], axis=1),
    ]
    graph = helper.make_graph(
        nodes, "stand-in",
        [helper.make_tensor_value_info("image", TensorProto.FLOAT, ["N", 1, size, size])],
        [helper.make_tensor_value_info("probabilities", TensorProto.FLOAT, ["N", 4])],
        [init("c1w", 16, 1, 3, 3), init("c1b", 16), init("c2w", 32, 16, 3, 3), init("c2b", 32),
         init("c3w", 64, 32, 3, 3), init("c3b", 64), init("fw", 64, 4), init("fb", 4)],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    manifest = {
        "name": "bench-stand-in", "version": "1", "task": "classification",
        "labels": ["glioma", "meningioma", "pituitary", "no-tumor"],
        "input": {"kind": "image", "name": "image", "size": [size, size], "channels": 1,
                  "normalisation": {"scale": 1.0, "mean": [0.5], "std": [0.25]}},
        "applies_to": {"modalities": ["MR"]},
        "training_data": {"fingerprint": "0" * 64, "description": "random weights", "rows": 0},
        "licence": "CC0-1.0",
    }
    return packages.build(manifest, model.SerializeToString(), "# benchmark stand-in (random weights)\n")


_SOP_CLASSES = {"MR": "1.2.840.10008.5.1.4.1.1.4", "CT": "1.2.840.10008.5.1.4.1.1.2",
                "CR": "1.2.840.10008.5.1.4.1.1.1", "DX": "1.2.840.10008.5.1.4.1.1.1.1"}


def mr_instance(study: str, series: str, n: int, size: int = 256, modality: str = "MR",
                body_part: str = "BRAIN") -> bytes:
    """One 12-bit grey image (MR by default; the model's first modality for the end-to-end run)."""
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    ds = Dataset()
    ds.SOPClassUID, ds.SOPInstanceUID = _SOP_CLASSES.get(modality, _SOP_CLASSES["MR"]), generate_uid()
    ds.StudyInstanceUID, ds.SeriesInstanceUID = study, series
    ds.PatientID, ds.PatientName, ds.StudyDate, ds.StudyTime = "BENCH-AI", "Bench^AI", "20250101", "120000"
    ds.Modality, ds.SeriesNumber, ds.InstanceNumber, ds.BodyPartExamined = modality, 1, n, body_part
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.Rows = ds.Columns = size
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
    rng = np.random.default_rng(n)
    ds.PixelData = (rng.random((size, size)) * 4000).astype(np.uint16).tobytes()
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID = ds.SOPClassUID, ds.SOPInstanceUID
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta = meta
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return buf.getvalue()


def inference(pkg: Any, n: int, batch: int, threads: int) -> dict[str, Any]:
    from medcloud.ai import preprocess
    from medcloud.ai.runtime import Runtime

    model = Runtime(None, threads=threads).session_for(pkg, pkg.sha256)
    spec = model.spec
    frames = [preprocess.load_frames(mr_instance("1.2.3", "1.2.3.1", i + 1))[0] for i in range(min(n, 32))]
    inputs = [preprocess.to_model_input(frames[i % len(frames)], spec) for i in range(n)]
    model.predict(inputs[:2], batch=1)  # warm-up (session allocations)
    single = []
    for x in inputs:
        t0 = time.perf_counter()
        model.predict(x[None], batch=1)
        single.append((time.perf_counter() - t0) * 1000)
    t0 = time.perf_counter()
    model.predict(inputs, batch=batch)
    batched = time.perf_counter() - t0
    t0 = time.perf_counter()
    for f in frames:
        preprocess.to_model_input(f, spec)
    pre_ms = (time.perf_counter() - t0) * 1000 / len(frames)
    q = statistics.quantiles(single, n=100, method="inclusive")
    return {"images": n, "p50_ms": round(statistics.median(single), 2), "p99_ms": round(q[98], 2),
            "batch": batch, "batched_images_per_s": round(n / batched, 1),
            "preprocess_ms_per_image": round(pre_ms, 2)}


def end_to_end(pkg: Any, studies: int, images: int, quiet: float, threads: int) -> dict[str, Any]:
    from pydicom.uid import generate_uid
    from starlette.testclient import TestClient

    from medcloud.ai.registry import Registry
    from medcloud.app import build_services, create_app
    from medcloud.config import Settings
    from medcloud.imaging.archive import ArchiveConfig

    rule = pkg.manifest.applies_to
    modality = rule.modalities[0] if rule.modalities else "MR"
    body_part = rule.body_parts[0] if rule.body_parts else "BRAIN"
    latencies = []
    with tempfile.TemporaryDirectory() as tmp:
        settings = Settings(data_dir=Path(tmp), auth=False, ai_threads=threads, dicom_port=0)
        svc = build_services(settings)
        assert svc.imaging is not None
        svc.imaging.config = ArchiveConfig(stable_after_seconds=quiet)
        reg = Registry(svc.db)
        for v in reg.list():
            if v.active and v.name != pkg.manifest.name:
                reg.remove(v.name, v.version, force=True)
        reg.register(pkg, activate=True)
        with TestClient(create_app(settings, svc)) as client:
            for _ in range(studies):
                study, series = str(generate_uid()), str(generate_uid())
                boundary = "bench-ai"
                body = b"".join(f"--{boundary}\r\nContent-Type: application/dicom\r\n\r\n".encode()
                                + mr_instance(study, series, i + 1, modality=modality, body_part=body_part)
                                + b"\r\n" for i in range(images))
                body += f"--{boundary}--\r\n".encode()
                t0 = time.perf_counter()
                r = client.post("/dicomweb/studies", content=body, headers={
                    "Content-Type": f'multipart/related; type="application/dicom"; boundary={boundary}'})
                assert r.status_code == 200, r.text
                while True:
                    found = client.get("/fhir/DiagnosticReport", params={"_count": "100"}).json()
                    if any(e["resource"].get("imagingStudy", [{}])[0].get("reference", "").endswith(study)
                           for e in found.get("entry", [])):
                        break
                    if time.perf_counter() - t0 > 120:
                        raise RuntimeError("no DiagnosticReport after 120 s")
                    time.sleep(0.05)
                latencies.append(time.perf_counter() - t0)
        svc.close()
    return {"studies": studies, "images_per_study": images, "modality": modality, "quiet_period_s": quiet,
            "stow_to_report_s": [round(x, 3) for x in latencies],
            "median_s": round(statistics.median(latencies), 3),
            "median_minus_quiet_s": round(statistics.median(latencies) - quiet, 3)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--package", type=Path, help="model package (default: shipped brain-mri, else a stand-in)")
    ap.add_argument("-n", type=int, default=200, help="images for the latency/throughput runs")
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--threads", type=int, default=0, help="ONNX Runtime intra-op threads (0 = all cores)")
    ap.add_argument("--e2e-studies", type=int, default=3)
    ap.add_argument("--e2e-images", type=int, default=8)
    ap.add_argument("--size", type=int, default=96, help="stand-in model input size (no shipped package)")
    ap.add_argument("--quiet", type=float, default=0.5, help="archive quiet period before a study is stable, s")
    args = ap.parse_args()

    from medcloud.ai import package as packages

    note = None
    path = args.package or next(iter(sorted((ROOT / "medcloud" / "ai" / "models").glob("brain-mri*.zip"))), None)
    if path is not None and path.exists():
        pkg = packages.read(path)
    else:
        pkg, note = stand_in_package(args.size), "no shipped brain-mri package: a generated stand-in CNN (random weights)"
    result = {"benchmark": "ai", "utc": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
              "model": f"{pkg.manifest.name} {pkg.manifest.version}", "model_bytes": len(pkg.model),
              "input": pkg.manifest.input.model_dump(mode="json"), "note": note, "threads": args.threads,
              "inference": inference(pkg, args.n, args.batch, args.threads)}
    print(json.dumps(result["inference"]), flush=True)
    result["end_to_end"] = end_to_end(pkg, args.e2e_studies, args.e2e_images, args.quiet, args.threads)
    RESULTS.mkdir(parents=True, exist_ok=True)
    out = RESULTS / f"{dt.datetime.now(dt.UTC).strftime('%Y%m%dT%H%M%SZ')}-ai.json"
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))
    print(f"-> {out}")


if __name__ == "__main__":
    main()
