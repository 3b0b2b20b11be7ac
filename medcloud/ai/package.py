"""Model packages: ``model.onnx`` + ``manifest.json`` + a model card, checked before anything uses them.

A package is a directory, a ``.zip`` or a ``.tar.gz`` holding (flat, or under one top folder)::

    manifest.json     what the model is and how to feed it (``Manifest`` below)
    model.onnx        the network; its SHA-256 is ``manifest.sha256``
    MODEL_CARD.md     the model card (``manifest.model_card``), Markdown
    *.png ...         anything else the card shows; each listed in ``manifest.files`` with its SHA-256

Every byte is covered: the manifest names the hash of the model and of every other file, and a
file the manifest does not list is refused, so a package cannot carry content nobody vouched for.
The package as a whole has its own digest, ``ModelPackage.sha256``: the SHA-256 of its canonical
zip (sorted names, fixed timestamps), the same whichever layout it came in. The registry stores
that zip and checks the digest again each time it loads it.

The ONNX graph must agree with the manifest: one input per tabular feature (``[N, 1]``, float
for numbers and booleans, string for categories), or one image tensor of the declared size and
channels; a probabilities output with one column per label. onnx and onnxruntime are imported
only when a package is checked (STYLE.md §7).
"""

from __future__ import annotations

import hashlib
import io
import json
import re
import tarfile
import zipfile
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from medcloud.errors import Invalid, TooLarge

MANIFEST = "manifest.json"
MODEL = "model.onnx"
FORMAT = 1
MAX_PACKAGE_BYTES = 512 * 1024 * 1024  # uncompressed; packages live in one database row
MAX_FILES = 64
_SHA256 = r"^[0-9a-f]{64}$"
_ZIP_TIME = (1980, 1, 1, 0, 0, 0)  # the zip epoch: canonical archives carry no real timestamps


class PackageError(Invalid):
    """The package is malformed, its manifest is wrong, or the model does not match it."""

    def __init__(self, problems: list[str]):
        super().__init__("model package refused: " + "; ".join(problems))
        self.problems = problems


class ChecksumMismatch(PackageError):
    """A file's SHA-256 is not the one the manifest (or the caller) expects."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Feature(_Strict):
    """One tabular feature, in the order the model was trained on."""

    name: str = Field(min_length=1)  # the column name in the source data
    input: str = Field(pattern=r"^[A-Za-z_][A-Za-z0-9_]*$")  # the ONNX input that receives it
    type: Literal["number", "boolean", "category"]
    unit: str | None = None  # UCUM where known


class TabularInput(_Strict):
    kind: Literal["tabular"] = "tabular"
    features: list[Feature] = Field(min_length=1)

    @model_validator(mode="after")
    def _unique(self) -> TabularInput:
        for attr in ("name", "input"):
            values = [getattr(f, attr) for f in self.features]
            if len(set(values)) != len(values):
                raise ValueError(f"feature {attr}s must be unique")
        return self


class Normalisation(_Strict):
    """``(pixel * scale - mean[c]) / std[c]`` per channel, after windowing."""

    scale: float = 1.0
    mean: list[float]
    std: list[float]

    @field_validator("std")
    @classmethod
    def _positive(cls, v: list[float]) -> list[float]:
        if any(s <= 0 for s in v):
            raise ValueError("std values must be > 0")
        return v


class Windowing(_Strict):
    """A VOI window (PS3.3 C.11.2.1.2): centre and width in output units (e.g. HU)."""

    center: float
    width: float = Field(gt=0)


class ImageInput(_Strict):
    kind: Literal["image"] = "image"
    name: str = Field(min_length=1)  # the ONNX input
    size: tuple[int, int]  # (height, width)
    resize: Literal["stretch", "letterbox"] = "stretch"  # letterbox keeps the aspect ratio (pads with 0)
    channels: Literal[1, 3]
    layout: Literal["NCHW", "NHWC"] = "NCHW"
    normalisation: Normalisation | None = None
    windowing: Windowing | None = None

    @model_validator(mode="after")
    def _consistent(self) -> ImageInput:
        if min(self.size) <= 0:
            raise ValueError("size must be positive (height, width)")
        n = self.normalisation
        if n is not None and not (len(n.mean) == len(n.std) == self.channels):
            raise ValueError("normalisation mean and std need one value per channel")
        return self


class Outputs(_Strict):
    probabilities: str = "probabilities"  # [N, len(labels)], column i is labels[i]
    label: str | None = None


class AppliesTo(_Strict):
    """Which studies an image model is for (empty: not restricted, e.g. tabular models)."""

    modalities: list[str] = []  # DICOM (0008,0060), e.g. "CR", "DX"
    body_parts: list[str] = []  # (0018,0015), e.g. "CHEST"
    sop_classes: list[Annotated[str, Field(pattern=r"^[0-9]+(\.[0-9]+)*$", max_length=64)]] = []


class TrainingData(_Strict):
    fingerprint: str = Field(pattern=_SHA256)  # SHA-256 of the training table (or data manifest)
    description: str = ""
    rows: int | None = Field(default=None, ge=0)


class Manifest(_Strict):
    format: Literal[1] = 1  # FORMAT
    name: str = Field(pattern=r"^[a-z0-9][a-z0-9._-]{0,127}$")
    version: str = Field(pattern=r"^[0-9A-Za-z][0-9A-Za-z.+_-]{0,63}$")
    task: Literal["classification"]
    labels: list[str] = Field(min_length=2)
    input: Annotated[TabularInput | ImageInput, Field(discriminator="kind")]
    outputs: Outputs = Outputs()
    applies_to: AppliesTo = AppliesTo()
    metrics: dict[str, float] = {}
    training_data: TrainingData
    licence: str = Field(min_length=1)  # SPDX identifier where there is one
    sha256: str = Field(pattern=_SHA256)  # of model.onnx
    model_card: str = "MODEL_CARD.md"
    files: dict[str, Annotated[str, Field(pattern=_SHA256)]] = {}  # every other file -> SHA-256

    @field_validator("labels")
    @classmethod
    def _distinct(cls, v: list[str]) -> list[str]:
        if len(set(v)) != len(v):
            raise ValueError("labels must be distinct")
        return v

    @model_validator(mode="after")
    def _card_listed(self) -> Manifest:
        if self.model_card not in self.files:
            raise ValueError(f"model_card {self.model_card!r} must be listed in files")
        if MANIFEST in self.files or MODEL in self.files:
            raise ValueError(f"files lists the other files, not {MANIFEST} or {MODEL}")
        return self


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@dataclass(frozen=True)
class ModelPackage:
    """A checked package: its manifest and the bytes of every file (manifest.json included)."""

    manifest: Manifest
    files: dict[str, bytes]

    @property
    def model(self) -> bytes:
        return self.files[MODEL]

    @property
    def card(self) -> str:
        return self.files[self.manifest.model_card].decode("utf-8")

    def to_zip(self) -> bytes:
        """The canonical archive: same files -> same bytes, whatever the package was read from."""
        buf = io.BytesIO()
        with zipfile.ZipFile(buf, "w", compression=zipfile.ZIP_DEFLATED) as zf:
            for name in sorted(self.files):
                info = zipfile.ZipInfo(name, _ZIP_TIME)
                info.compress_type = zipfile.ZIP_DEFLATED
                info.external_attr = 0o644 << 16
                zf.writestr(info, self.files[name])
        return buf.getvalue()

    @property
    def sha256(self) -> str:
        """The package digest (SHA-256 of ``to_zip()``)."""
        return sha256(self.to_zip())

    def write_dir(self, path: Path) -> None:
        path.mkdir(parents=True, exist_ok=True)
        for name, data in self.files.items():
            (path / name).write_bytes(data)


def build(manifest: dict[str, Any], model: bytes, card: str, extra: dict[str, bytes] | None = None) -> ModelPackage:
    """A package from its parts: fills in ``sha256`` and ``files``, then checks it like any other."""
    card_name = str(manifest.get("model_card", "MODEL_CARD.md"))
    others = {card_name: card.encode("utf-8"), **(extra or {})}
    doc = {**manifest, "sha256": sha256(model), "files": {n: sha256(b) for n, b in sorted(others.items())}}
    files = {MANIFEST: (json.dumps(doc, indent=2, sort_keys=True) + "\n").encode(), MODEL: model, **others}
    return from_files(files)


def read(path: Path, *, expected_sha256: str | None = None) -> ModelPackage:
    """Read and check a package directory, ``.zip`` or ``.tar.gz``; raises PackageError."""
    if path.is_dir():
        files: dict[str, bytes] = {}
        for p in sorted(path.rglob("*")):
            if p.is_symlink():
                raise PackageError([f"{p.relative_to(path)}: symbolic links are not allowed in a package"])
            if p.is_file():
                files[p.relative_to(path).as_posix()] = p.read_bytes()
                _check_limits(files)
        return _verified(from_files(files), expected_sha256)
    if not path.is_file():
        raise PackageError([f"{path}: no such file or directory"])
    return from_bytes(path.read_bytes(), expected_sha256=expected_sha256)


def from_bytes(data: bytes, *, expected_sha256: str | None = None) -> ModelPackage:
    """A package from archive bytes (zip or gzip'd tar, told apart by their magic numbers)."""
    if data[:4] == b"PK\x03\x04":
        files = _unzip(data)
    elif data[:2] == b"\x1f\x8b":
        files = _untar(data)
    else:
        raise PackageError(["not a model package: expected a .zip or .tar.gz archive"])
    return _verified(from_files(files), expected_sha256)


def from_files(files: dict[str, bytes]) -> ModelPackage:
    """Check a package given as ``{relative path: bytes}``; raises PackageError naming every problem."""
    files = _strip_top_folder(files)
    if MANIFEST not in files:
        raise PackageError([f"{MANIFEST} is missing"])
    try:
        doc = json.loads(files[MANIFEST])
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise PackageError([f"{MANIFEST} is not JSON: {e}"]) from e
    try:
        manifest = Manifest.model_validate(doc)
    except ValidationError as e:
        raise PackageError([f"{MANIFEST}: {'.'.join(str(x) for x in err['loc']) or '(root)'}: {err['msg']}"
                            for err in e.errors()]) from e
    if MODEL not in files:
        raise PackageError([f"{MODEL} is missing"])
    problems: list[str] = []
    digests = {MODEL: manifest.sha256, **manifest.files}
    for name, expected in digests.items():
        if name not in files:
            problems.append(f"{name} is listed in the manifest but missing")
        elif sha256(files[name]) != expected:
            problems.append(f"{name}: SHA-256 {sha256(files[name])} does not match the manifest's {expected}")
    unlisted = sorted(set(files) - set(digests) - {MANIFEST})
    if unlisted:
        problems.append(f"files not listed in the manifest: {', '.join(unlisted)}")
    if problems:
        cls = ChecksumMismatch if any("SHA-256" in p for p in problems) else PackageError
        raise cls(problems)
    try:
        files[manifest.model_card].decode("utf-8")
    except UnicodeDecodeError as e:
        raise PackageError([f"{manifest.model_card}: the model card must be UTF-8 Markdown"]) from e
    check_model(manifest, files[MODEL])
    return ModelPackage(manifest, dict(files))


def _verified(pkg: ModelPackage, expected: str | None) -> ModelPackage:
    if expected is not None and pkg.sha256 != expected.lower():
        raise ChecksumMismatch([f"package SHA-256 {pkg.sha256} is not the expected {expected}"])
    return pkg


# -- the ONNX graph against the manifest -------------------------------------------------------------

_FLOATS = {1: "float", 11: "double"}  # onnx.TensorProto.FLOAT, DOUBLE
_STRING = 8  # onnx.TensorProto.STRING


def check_model(manifest: Manifest, model: bytes) -> None:
    """Refuse a model whose inputs/outputs differ from the manifest, or that ONNX Runtime cannot load."""
    import onnx
    from google.protobuf.message import DecodeError

    try:
        proto = onnx.load_from_string(model)
        onnx.checker.check_model(proto)
    except (DecodeError, onnx.checker.ValidationError, ValueError) as e:
        raise PackageError([f"{MODEL} is not a valid ONNX model: {str(e).splitlines()[0]}"]) from e
    initializers = {i.name for i in proto.graph.initializer}
    inputs = {i.name: _tensor(i) for i in proto.graph.input if i.name not in initializers}
    outputs = {o.name: _tensor(o) for o in proto.graph.output}
    problems = (_check_tabular(manifest.input, inputs) if isinstance(manifest.input, TabularInput)
                else _check_image(manifest.input, inputs))
    problems += _check_outputs(manifest, outputs)
    if problems:
        raise PackageError(problems)
    _runtime_loads(model)


def _tensor(value: Any) -> tuple[int, list[int | None]] | None:
    t = value.type
    if not t.HasField("tensor_type"):
        return None  # a sequence or map (e.g. skl2onnx's ZipMap): not a tensor
    dims = [d.dim_value if d.HasField("dim_value") else None for d in t.tensor_type.shape.dim]
    return t.tensor_type.elem_type, dims


def _check_tabular(spec: TabularInput, inputs: dict[str, Any]) -> list[str]:
    problems = []
    wanted = {f.input for f in spec.features}
    if extra := sorted(set(inputs) - wanted):
        problems.append(f"{MODEL} has inputs the manifest does not describe: {', '.join(extra)}")
    for f in spec.features:
        got = inputs.get(f.input)
        if got is None:
            problems.append(f"feature {f.name!r}: {MODEL} has no input {f.input!r}")
            continue
        elem, dims = got
        ok_type = elem == _STRING if f.type == "category" else elem in _FLOATS
        if not ok_type:
            problems.append(f"feature {f.name!r} is {f.type} but input {f.input!r} has ONNX element type {elem}")
        if len(dims) != 2 or dims[1] not in (1, None):
            problems.append(f"input {f.input!r} must have shape [N, 1], not {dims}")
    return problems


def _check_image(spec: ImageInput, inputs: dict[str, Any]) -> list[str]:
    if set(inputs) != {spec.name}:
        return [f"{MODEL} inputs {sorted(inputs)} are not the one image input {spec.name!r}"]
    elem, dims = inputs[spec.name]
    problems = []
    if elem not in _FLOATS:
        problems.append(f"image input {spec.name!r} must be float or double, not ONNX element type {elem}")
    if len(dims) != 4:
        return [*problems, f"image input {spec.name!r} must have 4 dimensions ({spec.layout}), not {dims}"]
    h, w = spec.size
    want = [None, spec.channels, h, w] if spec.layout == "NCHW" else [None, h, w, spec.channels]
    for axis, (got, expected) in enumerate(zip(dims, want, strict=True)):
        if expected is not None and got is not None and got != expected:
            problems.append(f"image input {spec.name!r} has shape {dims}; the manifest says "
                            f"{spec.layout} with {spec.channels} channel(s) of {h}x{w} (axis {axis}: {got} != {expected})")
            break
    return problems


def _check_outputs(manifest: Manifest, outputs: dict[str, Any]) -> list[str]:
    names = manifest.outputs
    problems = []
    probs = outputs.get(names.probabilities, "absent")
    if probs == "absent":
        problems.append(f"{MODEL} has no output {names.probabilities!r} (outputs: {', '.join(outputs)})")
    elif probs is None:
        problems.append(f"output {names.probabilities!r} must be a tensor [N, {len(manifest.labels)}], "
                        "not a sequence of maps (export without ZipMap)")
    else:
        elem, dims = probs
        if elem not in _FLOATS:
            problems.append(f"output {names.probabilities!r} must be float or double, not ONNX element type {elem}")
        if len(dims) != 2 or dims[1] not in (None, len(manifest.labels)):
            problems.append(f"output {names.probabilities!r} has shape {dims}; the manifest has "
                            f"{len(manifest.labels)} labels")
    if names.label is not None and names.label not in outputs:
        problems.append(f"{MODEL} has no output {names.label!r}")
    return problems


def _runtime_loads(model: bytes) -> None:
    try:
        import onnxruntime
    except ImportError:  # the graph was checked; serving will say that the runtime is missing
        return
    try:
        onnxruntime.InferenceSession(model, providers=["CPUExecutionProvider"])
    except Exception as e:  # onnxruntime raises its own Fail/InvalidGraph/NotImplemented types
        raise PackageError([f"ONNX Runtime cannot load {MODEL}: {str(e).splitlines()[0]}"]) from e


# -- archives ------------------------------------------------------------------------------------------

def _safe_name(name: str) -> str:
    p = PurePosixPath(name)
    if p.is_absolute() or ".." in p.parts or "\\" in name or not p.parts:
        raise PackageError([f"unsafe path in archive: {name!r}"])
    return p.as_posix()


def _check_limits(files: dict[str, bytes], declared: int = 0) -> None:
    if len(files) > MAX_FILES:
        raise PackageError([f"a package holds at most {MAX_FILES} files"])
    if declared + sum(len(b) for b in files.values()) > MAX_PACKAGE_BYTES:
        raise TooLarge(f"model package is larger than {MAX_PACKAGE_BYTES // 2**20} MiB uncompressed")


def _unzip(data: bytes) -> dict[str, bytes]:
    try:
        with zipfile.ZipFile(io.BytesIO(data)) as zf:
            infos = [i for i in zf.infolist() if not i.is_dir()]
            _check_limits({}, sum(i.file_size for i in infos))  # declared sizes, before inflating
            if len(infos) > MAX_FILES:
                raise PackageError([f"a package holds at most {MAX_FILES} files"])
            files = {}
            for info in infos:
                with zf.open(info) as fh:
                    files[_safe_name(info.filename)] = fh.read(info.file_size + 1)
                _check_limits(files)
            return files
    except (zipfile.BadZipFile, EOFError) as e:
        raise PackageError([f"not a readable zip archive: {e}"]) from e


def _untar(data: bytes) -> dict[str, bytes]:
    files: dict[str, bytes] = {}
    try:
        with tarfile.open(fileobj=io.BytesIO(data), mode="r:gz") as tf:
            for member in tf:
                if member.isdir():
                    continue
                if not member.isfile():
                    raise PackageError([f"{member.name}: only regular files are allowed in a package"])
                _check_limits(files, member.size)
                fh = tf.extractfile(member)
                files[_safe_name(member.name)] = fh.read() if fh is not None else b""
    except (tarfile.TarError, EOFError, OSError) as e:
        raise PackageError([f"not a readable .tar.gz archive: {e}"]) from e
    return files


def _strip_top_folder(files: dict[str, bytes]) -> dict[str, bytes]:
    """``pkg/manifest.json`` ... -> ``manifest.json`` when everything sits in one folder."""
    files = {re.sub(r"^\./", "", k): v for k, v in files.items()}
    if MANIFEST in files or not files:
        return files
    tops = {k.split("/", 1)[0] for k in files}
    if len(tops) == 1 and all("/" in k for k in files):
        return {k.split("/", 1)[1]: v for k, v in files.items()}
    return files
