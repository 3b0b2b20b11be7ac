"""Image preprocessing: ONE module for training and serving, so the two cannot drift.

Two steps, each a pure function of its input:

``load_frames(source)``
    any image the archive or a user hands us -> float32 frames in [0, 1] (H x W grey, H x W x 3 RGB).
    DICOM goes through the standard's pixel pipeline in its own order (PS3.3 C.11 / PS3.4 N.2):
    Modality LUT (rescale slope/intercept) -> VOI LUT or window (C.11.2.1.2, else min-max of the
    frame) -> presentation (MONOCHROME1 inverted so that bright is always dense/high signal). YBR
    colour is converted to RGB. PNG/JPEG/TIFF are read by Pillow, 8- and 16-bit alike.
``to_model_input(frame, spec)``
    a frame -> float32 (C, H, W) for one model: channels converted (RGB -> grey by ITU-R BT.601
    luma, grey -> RGB by repetition), resized to ``spec.size`` with Pillow bilinear (antialiased when
    shrinking), normalised per the manifest. ``spec.resize`` says whether the aspect ratio is kept:
    ``stretch`` (default) scales each axis on its own, ``letterbox`` keeps the aspect and pads with 0.

A model trained on JPEG files and served on DICOM sees the same numbers because both paths end in
the same [0, 1] frame. ``ImageInput.windowing`` is in modality units (e.g. HU), which only exist
before the VOI step, so it is applied by ``load_frames(source, window=...)`` (``prepare`` does both
steps with the manifest's spec); on a non-DICOM source there are no modality units and it is
refused rather than silently ignored.

Training (``medcloud/ai/train``) calls ``prepare`` on every file, so the preprocessing that produced
the training tensors is the one that serves the model.
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
import pydicom.multival
from pydicom.errors import InvalidDicomError

from medcloud.ai.package import ImageInput, Windowing
from medcloud.errors import Invalid, Unprocessable

MAX_PIXELS = 64 * 1024 * 1024  # per frame; a decompression bomb is refused before it is decoded
_MONO = {"MONOCHROME1", "MONOCHROME2"}
_COLOUR = {"RGB", "YBR_FULL", "YBR_FULL_422", "YBR_RCT", "YBR_ICT", "YBR_PARTIAL_420"}
_LUMA = np.array([0.299, 0.587, 0.114], dtype=np.float32)  # ITU-R BT.601


def prepare(source: Path | bytes | pydicom.Dataset, spec: ImageInput) -> list[np.ndarray]:
    """Every frame of ``source`` as a model input (C, H, W) for ``spec``; what serving and training call."""
    return [to_model_input(f, spec) for f in load_frames(source, window=spec.windowing)]


def load_frames(source: Path | bytes | pydicom.Dataset, *, window: Windowing | None = None) -> list[np.ndarray]:
    """Decode an image into float32 frames in [0, 1] (H x W grey, H x W x 3 colour).

    ``window`` (modality units) replaces the file's own VOI window; DICOM only. Raises Invalid for
    what is not an image or is corrupt, Unprocessable for an image we cannot turn into pixels
    (photometric interpretation, missing codec)."""
    if isinstance(source, pydicom.Dataset):
        return _dicom_frames(source, window)
    if isinstance(source, Path):
        try:
            data = source.read_bytes()
        except OSError as e:
            raise Invalid(f"cannot read image {source}: {e.strerror or e}") from e
    elif isinstance(source, bytes | bytearray | memoryview):
        data = bytes(source)
    else:
        raise TypeError(f"load_frames takes a Path, bytes or pydicom Dataset, not {type(source).__name__}")
    if not data:
        raise Invalid("empty image: no bytes")
    if _looks_like_dicom(data):
        try:
            ds = pydicom.dcmread(io.BytesIO(data), force=data[128:132] != b"DICM")
        except (InvalidDicomError, EOFError, ValueError, OSError, KeyError) as e:
            raise Invalid(f"corrupt DICOM file: {e}") from e
        return _dicom_frames(ds, window)
    if window is not None:
        raise Unprocessable("this model expects DICOM pixel values (a window in modality units); "
                            "a PNG/JPEG image has none")
    return _pillow_frames(data)


def to_model_input(frame: np.ndarray, spec: ImageInput) -> np.ndarray:
    """A [0, 1] frame from ``load_frames`` -> float32 (C, H, W) per the manifest (``spec.layout`` is
    the ONNX graph's; batching code transposes for NHWC)."""
    if frame.ndim not in (2, 3) or (frame.ndim == 3 and frame.shape[2] != 3):
        raise Invalid(f"a frame must be H x W or H x W x 3, not {frame.shape}")
    x = frame.astype(np.float32, copy=False)
    if spec.channels == 1 and x.ndim == 3:
        x = x @ _LUMA
    planes = [x] if x.ndim == 2 else [x[..., c] for c in range(3)]
    if spec.channels == 3 and len(planes) == 1:
        planes = planes * 3
    out = np.stack([_resize(p, spec.size, spec.resize) for p in planes])
    if spec.normalisation is not None:
        n = spec.normalisation
        mean = np.asarray(n.mean, dtype=np.float32)[:, None, None]
        std = np.asarray(n.std, dtype=np.float32)[:, None, None]
        out = (out * np.float32(n.scale) - mean) / std
    return np.ascontiguousarray(out, dtype=np.float32)


# -- resizing -------------------------------------------------------------------------------------------

def _resize(plane: np.ndarray, size: tuple[int, int], mode: str) -> np.ndarray:
    from PIL import Image

    h, w = size
    if plane.shape == (h, w):
        return plane
    img = Image.fromarray(np.ascontiguousarray(plane, dtype=np.float32), mode="F")
    if mode == "stretch":
        return np.asarray(img.resize((w, h), Image.Resampling.BILINEAR), dtype=np.float32)
    ph, pw = plane.shape
    s = min(h / ph, w / pw)
    nh, nw = max(1, round(ph * s)), max(1, round(pw * s))
    inner = np.asarray(img.resize((nw, nh), Image.Resampling.BILINEAR), dtype=np.float32)
    out = np.zeros((h, w), dtype=np.float32)
    top, left = (h - nh) // 2, (w - nw) // 2
    out[top:top + nh, left:left + nw] = inner
    return out


# -- DICOM ----------------------------------------------------------------------------------------------

def _looks_like_dicom(data: bytes) -> bool:
    if data[128:132] == b"DICM":
        return True
    # a preamble-less (implicit VR) dataset starts with a group 0008 element; image formats never do
    return len(data) > 8 and data[:2] == b"\x08\x00" and data[3:4] == b"\x00"


def _dicom_frames(ds: pydicom.Dataset, window: Windowing | None) -> list[np.ndarray]:
    from pydicom.pixels import apply_modality_lut

    if "PixelData" not in ds and "FloatPixelData" not in ds and "DoubleFloatPixelData" not in ds:
        raise Invalid("the DICOM object has no pixel data (not an image)")
    photometric = str(ds.get("PhotometricInterpretation", "")).upper()
    if photometric not in _MONO | _COLOUR:
        raise Unprocessable(f"unsupported photometric interpretation {photometric or '(missing)'}: "
                            "only MONOCHROME1/2, RGB and YBR images can be read")
    rows, cols = int(ds.get("Rows", 0)), int(ds.get("Columns", 0))
    if rows * cols > MAX_PIXELS:
        raise Unprocessable(f"image of {rows} x {cols} pixels is larger than {MAX_PIXELS} pixels per frame")
    try:
        # pydicom 3 converts YBR to RGB here (as_rgb defaults to True), whatever the transfer syntax
        arr: np.ndarray = ds.pixel_array
    except (NotImplementedError, RuntimeError) as e:  # no codec for the transfer syntax
        raise Unprocessable(f"cannot decode the pixel data ({_syntax(ds)}): {_first_line(e)}") from e
    except (ValueError, AttributeError, KeyError, EOFError, OSError, TypeError) as e:
        raise Invalid(f"corrupt DICOM pixel data ({_syntax(ds)}): {_first_line(e)}") from e
    frames = int(ds.get("NumberOfFrames", 1) or 1)
    colour = photometric in _COLOUR
    if frames == 1:
        arr = arr[None]
    expected_ndim = 4 if colour else 3
    if arr.ndim != expected_ndim:
        raise Invalid(f"pixel data of shape {arr.shape} does not fit {frames} frame(s) of {photometric}")
    if colour:
        return [_unit(a.astype(np.float32), _bits_max(ds)) for a in arr]
    return [_grey(apply_modality_lut(a, ds).astype(np.float64), ds, window, photometric) for a in arr]


def _grey(values: np.ndarray, ds: pydicom.Dataset, window: Windowing | None, photometric: str) -> np.ndarray:
    """Modality values -> [0, 1] through the manifest's window, the file's VOI, or min-max."""
    if window is not None:
        y = _window(values, window.center, window.width)
    elif "VOILUTSequence" in ds and len(ds.VOILUTSequence):
        from pydicom.pixels import apply_voi_lut

        bits = int(ds.VOILUTSequence[0].LUTDescriptor[2]) or 16
        y = np.clip(apply_voi_lut(values, ds, index=0, prefer_lut=True) / float(2**bits - 1), 0.0, 1.0)
    elif "WindowCenter" in ds and "WindowWidth" in ds:
        center, width = _first(ds.WindowCenter), _first(ds.WindowWidth)
        function = str(ds.get("VOILUTFunction", "LINEAR")).upper()
        if width <= 0:
            y = _minmax(values)
        elif function == "SIGMOID":  # C.11.2.1.3.1
            y = 1.0 / (1.0 + np.exp(-4.0 * (values - center) / width))
        elif function == "LINEAR_EXACT":  # C.11.2.1.3.2
            y = np.clip((values - (center - width / 2)) / width, 0.0, 1.0)
        else:
            y = _window(values, center, width)
    else:
        y = _minmax(values)
    if photometric == "MONOCHROME1":  # PS3.3 C.7.6.3.1.2: minimum is white; serve as MONOCHROME2
        y = 1.0 - y
    return np.ascontiguousarray(y, dtype=np.float32)


def _first(value: Any) -> float:
    """WindowCenter/Width may be multi-valued (several windows): the first is the default one."""
    return float(value[0]) if isinstance(value, pydicom.multival.MultiValue) else float(value)


def _window(x: np.ndarray, center: float, width: float) -> np.ndarray:
    """The linear VOI function of PS3.3 C.11.2.1.2.1, to [0, 1]."""
    lo = center - 0.5 - (width - 1) / 2
    return np.clip((x - lo) / max(width - 1, 1e-6), 0.0, 1.0)


def _minmax(x: np.ndarray) -> np.ndarray:
    """To [0, 1] over the values' range; a constant image becomes all 0."""
    x = x.astype(np.float64)
    lo, hi = float(np.min(x)), float(np.max(x))
    return (x - lo) / (hi - lo) if hi > lo else np.zeros_like(x)


def _unit(x: np.ndarray, top: float) -> np.ndarray:
    return np.ascontiguousarray(np.clip(x / top, 0.0, 1.0), dtype=np.float32)


def _bits_max(ds: pydicom.Dataset) -> float:
    return float(2 ** int(ds.get("BitsStored", ds.get("BitsAllocated", 8))) - 1)


def _syntax(ds: pydicom.Dataset) -> str:
    meta = getattr(ds, "file_meta", None)
    uid = getattr(meta, "TransferSyntaxUID", None) if meta is not None else None
    return f"transfer syntax {uid.name if uid is not None else 'unknown'}"


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__


# -- PNG, JPEG, TIFF ------------------------------------------------------------------------------------

def _pillow_frames(data: bytes) -> list[np.ndarray]:
    from PIL import Image, ImageSequence, UnidentifiedImageError

    try:
        with Image.open(io.BytesIO(data)) as img:
            if img.width * img.height > MAX_PIXELS:
                raise Unprocessable(f"image of {img.width} x {img.height} pixels is larger than "
                                    f"{MAX_PIXELS} pixels per frame")
            return [_pillow_frame(f) for f in ImageSequence.Iterator(img)]
    except UnidentifiedImageError as e:
        raise Invalid("not an image: neither DICOM nor a format Pillow reads (PNG, JPEG, TIFF, ...)") from e
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as e:
        raise Invalid(f"corrupt image file: {_first_line(e)}") from e


def _pillow_frame(img: Any) -> np.ndarray:
    mode = img.mode
    if mode in ("L", "RGB"):
        return np.asarray(img, dtype=np.float32) / 255.0
    if mode in ("I;16", "I;16B", "I;16L"):
        return np.asarray(img, dtype=np.float32) / 65535.0
    if mode in ("I", "F"):  # 32-bit integers or floats: no fixed range, so the frame's own
        return _minmax(np.asarray(img)).astype(np.float32)
    if mode in ("1", "LA", "La"):
        return np.asarray(img.convert("L"), dtype=np.float32) / 255.0
    return np.asarray(img.convert("RGB"), dtype=np.float32) / 255.0  # P, RGBA, CMYK, YCbCr, LAB, HSV
