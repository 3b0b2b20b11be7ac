"""Serving image models: ONNX Runtime sessions on CPU, batched inference, occlusion-sensitivity maps.

A ``Runtime`` loads a model version from the registry (``Registry.load`` checks the package digest
again, so a package whose stored bytes changed is refused with ``ChecksumMismatch``) and keeps one
``InferenceSession`` per ``(name, version, package digest)``. The cache is only a cache: losing it
(a new process, ``clear()``) costs one load, and a new version or a re-registered package gets a
new key, so a stale session is never served. onnxruntime is imported when the first session is
built (STYLE.md §7).

Preprocessing is ``medcloud.ai.preprocess`` (the module training uses too); this module only
stacks its (C, H, W) inputs into batches, transposing for NHWC graphs.

Explanations are occlusion sensitivity (Zeiler & Fergus 2014, arXiv:1311.2901): the drop in the
explained class's probability when a square patch of the input is replaced by the image mean.
Grad-CAM needs the gradient of the class score with respect to a convolutional feature map;
ONNX Runtime's inference build computes no gradients and the exported graph does not expose its
feature maps, so Grad-CAM would need the training framework at serving time. Occlusion needs
only forward passes, works for any image model in a package, and its cost (one batch of
occluded copies per image) is bounded by ``patches``.
"""

from __future__ import annotations

import io
import threading
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from medcloud.ai.package import ImageInput, Manifest, ModelPackage, TabularInput
from medcloud.errors import Invalid, MedcloudError, NotSupported

if TYPE_CHECKING:
    from medcloud.ai.registry import Registry


class RuntimeUnavailable(NotSupported):
    """onnxruntime is not installed in this environment."""


@dataclass
class LoadedModel:
    """One model ready to run: its manifest, identity and ONNX Runtime session (thread-safe for ``run``)."""

    manifest: Manifest
    package_sha256: str
    session: Any = field(repr=False)

    @property
    def name(self) -> str:
        return self.manifest.name

    @property
    def version(self) -> str:
        return self.manifest.version

    @property
    def labels(self) -> list[str]:
        return list(self.manifest.labels)

    @property
    def spec(self) -> ImageInput:
        spec = self.manifest.input
        if not isinstance(spec, ImageInput):
            raise Invalid(f"model {self.name} {self.version} is not an image model (input kind {spec.kind})")
        return spec

    def predict(self, inputs: np.ndarray | Sequence[np.ndarray], *, batch: int = 16) -> np.ndarray:
        """Probabilities ``[N, len(labels)]`` for model inputs ``(N, C, H, W)`` (or a list of (C, H, W)),
        run ``batch`` at a time."""
        spec = self.spec
        x = np.asarray(np.stack(list(inputs)) if not isinstance(inputs, np.ndarray) else inputs, dtype=np.float32)
        want = (spec.channels, *spec.size)
        if x.ndim != 4 or tuple(x.shape[1:]) != want:
            raise Invalid(f"model {self.name} takes inputs of shape (N, {', '.join(map(str, want))}), "
                          f"not {tuple(x.shape)}")
        if spec.layout == "NHWC":
            x = x.transpose(0, 2, 3, 1)
        out = self.manifest.outputs.probabilities
        chunks = [self.session.run([out], {spec.name: np.ascontiguousarray(x[i:i + batch])})[0]
                  for i in range(0, len(x), max(1, batch))]
        if not chunks:
            return np.zeros((0, len(self.labels)), dtype=np.float32)
        return np.asarray(np.concatenate(chunks), dtype=np.float32)

    def predict_table(self, rows: np.ndarray) -> np.ndarray:
        """Probabilities ``[N, len(labels)]`` of a tabular model for ``rows`` ``(N, features)``, the
        columns in the manifest's feature order (one ONNX input per feature, as skl2onnx exports)."""
        spec = self.manifest.input
        if not isinstance(spec, TabularInput):
            raise Invalid(f"model {self.name} {self.version} is not a tabular model (input kind {spec.kind})")
        x = np.asarray(rows, dtype=np.float32)
        if x.ndim != 2 or x.shape[1] != len(spec.features):
            raise Invalid(f"model {self.name} takes rows of {len(spec.features)} features, not shape {x.shape}")
        feeds = {f.input: np.ascontiguousarray(x[:, i:i + 1]) for i, f in enumerate(spec.features)}
        out = self.session.run([self.manifest.outputs.probabilities], feeds)[0]
        return np.asarray(out, dtype=np.float64)

    def explain(self, model_input: np.ndarray, *, target: int | None = None, patches: int = 8,
                batch: int = 32) -> Explanation:
        """Occlusion sensitivity of one input (C, H, W): a heatmap (H, W) in [0, 1] for class ``target``
        (default: the predicted class). ``patches`` squares per side, half-overlapping."""
        c, h, w = model_input.shape
        base = self.predict(model_input[None])[0]
        k = int(np.argmax(base)) if target is None else target
        ph, pw = max(1, -(-h // patches)), max(1, -(-w // patches))
        sh, sw = max(1, ph // 2), max(1, pw // 2)
        fill = model_input.mean(axis=(1, 2), keepdims=True)
        boxes = [(y, x) for y in range(0, max(1, h - ph + 1), sh) for x in range(0, max(1, w - pw + 1), sw)]
        occluded = np.repeat(model_input[None], len(boxes), axis=0)
        for n, (y, x) in enumerate(boxes):
            occluded[n, :, y:y + ph, x:x + pw] = np.broadcast_to(fill, (c, min(ph, h - y), min(pw, w - x)))
        probs = self.predict(occluded, batch=batch)[:, k]
        drop = np.zeros((h, w), dtype=np.float64)
        cover = np.zeros((h, w), dtype=np.float64)
        for (y, x), p in zip(boxes, probs, strict=True):
            drop[y:y + ph, x:x + pw] += max(0.0, float(base[k] - p))
            cover[y:y + ph, x:x + pw] += 1.0
        heat = np.divide(drop, cover, out=np.zeros_like(drop), where=cover > 0)
        top = float(heat.max())
        heat = heat / top if top > 0 else heat
        return Explanation(self.labels[k], base, heat.astype(np.float32))


@dataclass(frozen=True)
class Explanation:
    label: str  # the class explained
    probabilities: np.ndarray
    heatmap: np.ndarray  # (H, W) of the model input, [0, 1]; 1 = occluding here lowered the class most


class Runtime:
    """Sessions for registry models, cached per (name, version, package digest); ``threads`` = intra-op."""

    def __init__(self, registry: Registry | None, *, threads: int = 0):
        self.registry = registry
        self.threads = threads
        self._cache: dict[tuple[str, str, str], LoadedModel] = {}
        self._lock = threading.Lock()

    def model(self, name: str, version: str | None = None) -> LoadedModel:
        """The active (or given) version of ``name``; raises NotFound, ChecksumMismatch (corrupt package)."""
        if self.registry is None:
            raise Invalid("no model registry: give a package file instead of a model name")
        info = self.registry.get(name, version)
        key = (info.name, info.version, info.package_sha256)
        with self._lock:
            cached = self._cache.get(key)
        if cached is not None:
            return cached
        loaded = self.session_for(self.registry.load(info.name, info.version), info.package_sha256)
        with self._lock:
            self._cache[key] = loaded
        return loaded

    def package(self, path: Path) -> LoadedModel:
        """A model straight from a package file or folder (checked like a registration)."""
        from medcloud.ai import package as packages

        pkg = packages.read(path)
        return self.session_for(pkg, pkg.sha256)

    def session_for(self, pkg: ModelPackage, digest: str) -> LoadedModel:
        try:
            import onnxruntime
        except ImportError as e:
            raise RuntimeUnavailable("onnxruntime is not installed: pip install 'onnxruntime>=1.18,<2'") from e
        options = onnxruntime.SessionOptions()
        if self.threads > 0:
            options.intra_op_num_threads = self.threads
        options.inter_op_num_threads = 1
        try:
            session = onnxruntime.InferenceSession(pkg.model, options, providers=["CPUExecutionProvider"])
        except Exception as e:  # onnxruntime's own Fail/InvalidGraph types
            raise MedcloudError(f"ONNX Runtime cannot load {pkg.manifest.name} {pkg.manifest.version}: "
                                f"{str(e).splitlines()[0]}") from e
        return LoadedModel(pkg.manifest, digest, session)

    def clear(self) -> None:
        with self._lock:
            self._cache.clear()


# -- pictures ---------------------------------------------------------------------------------------

def overlay(frame: np.ndarray, heatmap: np.ndarray, *, alpha: float = 0.45) -> np.ndarray:
    """An RGB uint8 picture: the [0, 1] frame in grey with the heatmap (resized to it) in a
    blue-to-red colour scale on top, transparent where the heatmap is 0."""
    from PIL import Image

    grey = frame if frame.ndim == 2 else frame @ np.array([0.299, 0.587, 0.114], dtype=np.float32)
    h, w = grey.shape
    heat = np.asarray(Image.fromarray(heatmap.astype(np.float32), mode="F")
                      .resize((w, h), Image.Resampling.BILINEAR), dtype=np.float32).clip(0, 1)
    base = np.repeat(np.clip(grey, 0, 1)[..., None], 3, axis=2)
    colour = np.stack([np.clip(1.5 - abs(4 * heat - 3), 0, 1), np.clip(1.5 - abs(4 * heat - 2), 0, 1),
                       np.clip(1.5 - abs(4 * heat - 1), 0, 1)], axis=2)  # the "jet" scale
    a = (alpha * heat)[..., None]
    return np.asarray(np.round(((1 - a) * base + a * colour) * 255), dtype=np.uint8)


def png(rgb: np.ndarray) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(rgb, mode="RGB").save(buf, format="PNG")
    return buf.getvalue()


# -- files in, JSON out (``medcloud ai predict``) ------------------------------------------------------

def predict_files(model: LoadedModel, files: Sequence[Path], *, batch: int = 16,
                  explain_dir: Path | None = None) -> list[dict[str, Any]]:
    """One result per file, in order: ``{file, probabilities: {label: p}, label, frames}`` or
    ``{file, error}``. A file's frames are averaged (``aggregate``); a bad file fails alone."""
    from medcloud.ai import preprocess

    spec = model.spec
    results: list[dict[str, Any]] = [{"file": str(f)} for f in files]
    frames: dict[int, list[np.ndarray]] = {}
    inputs: list[np.ndarray] = []
    owner: list[int] = []
    for i, f in enumerate(files):
        try:
            data = Path(f).read_bytes()
            refusal = not_applicable(model.manifest, data)
            if refusal:
                results[i]["error"] = refusal
                continue
            fr = preprocess.load_frames(data, window=spec.windowing)
            xs = [preprocess.to_model_input(x, spec) for x in fr]
        except MedcloudError as e:
            results[i]["error"] = e.message
            continue
        except OSError as e:
            results[i]["error"] = f"cannot read {f}: {e.strerror or e}"
            continue
        except Exception as e:  # noqa: BLE001 - a decoder's own exception: this file fails, not the batch
            results[i]["error"] = f"cannot read the image: {type(e).__name__}: {e}"
            continue
        if not xs:
            results[i]["error"] = "the file holds no image frames"
            continue
        frames[i] = fr
        inputs.extend(xs)
        owner.extend([i] * len(xs))
    probs = model.predict(inputs, batch=batch) if inputs else np.zeros((0, len(model.labels)))
    per_file: dict[int, list[int]] = {}
    for row, i in enumerate(owner):
        per_file.setdefault(i, []).append(row)
    for i, rows in per_file.items():
        p = aggregate(probs[rows])
        results[i].update(probabilities=dict(zip(model.labels, map(float, p), strict=True)),
                          label=model.labels[int(np.argmax(p))], frames=len(rows))
        if explain_dir is not None:
            best = rows[int(np.argmax(probs[rows].max(axis=1)))]
            ex = model.explain(inputs[best], target=int(np.argmax(p)))
            explain_dir.mkdir(parents=True, exist_ok=True)
            out = explain_dir / f"{Path(files[i]).name}.{ex.label}.png"
            out.write_bytes(png(overlay(frames[i][best - rows[0]], ex.heatmap)))
            results[i]["explanation"] = str(out)
    return results


def aggregate(probabilities: np.ndarray) -> np.ndarray:
    """Many frames/slices -> one distribution: the mean (still sums to 1, every slice counts once).

    The mean suits the shipped models (whole-image classifiers shown one finding per series); a
    finding visible on a few slices of a long series is diluted by it, which the per-slice heatmap
    of the most confident slice (stored with every read) makes visible to the reader.
    """
    return np.asarray(probabilities, dtype=np.float64).mean(axis=0)


def not_applicable(manifest: Manifest, data: bytes) -> str | None:
    """Why a DICOM file is outside the model's ``applies_to`` (modality, body part, SOP class), or None.
    Other formats carry no such attributes and are taken as they are."""
    if data[128:132] != b"DICM":
        return None
    import pydicom

    try:
        ds = pydicom.dcmread(io.BytesIO(data), stop_before_pixels=True)
    except Exception:  # noqa: BLE001 - preprocessing reports the corrupt file with its own message
        return None
    rule = manifest.applies_to
    checks = (("modality", str(ds.get("Modality", "")), rule.modalities),
              ("body part", str(ds.get("BodyPartExamined", "")), rule.body_parts),
              ("SOP class", str(ds.get("SOPClassUID", "")), rule.sop_classes))
    for what, value, allowed in checks:
        if allowed and value.upper() not in {a.upper() for a in allowed}:
            return (f"no applicable model: {manifest.name} {manifest.version} applies to {what} "
                    f"{', '.join(allowed)}, this image has {value or '(none)'}")
    return None
