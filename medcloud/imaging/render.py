"""Pixel data out of stored instances: uncompressed frames and rendered images (PS3.18 §9.5, §9.6 / §8.3.5).

numpy, pillow and the pylibjpeg codecs are imported when a frame is decoded, never at module
import, so the archive runs without them until someone asks for pixels. Native (uncompressed)
frames are sliced from the Pixel Data bytes without decoding; encapsulated ones are decoded
through pydicom's decoder plugins (pylibjpeg for JPEG / JPEG-LS / JPEG 2000, RLE built in).
"""

from __future__ import annotations

import io
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import pydicom
from pydicom.dataset import Dataset

from medcloud.errors import Invalid, NotFound, NotSupported, Unprocessable

PIXEL_DATA = 0x7FE00010


@dataclass(frozen=True, slots=True)
class Window:
    center: float
    width: float
    function: str = "linear"  # linear | sigmoid (PS3.3 C.11.2.1.2)


def _read(data: bytes) -> Dataset:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return pydicom.dcmread(io.BytesIO(data))


def frame_count(ds: Dataset) -> int:
    try:
        return int(ds.get("NumberOfFrames", 1) or 1)
    except (TypeError, ValueError):
        return 1


def frames(data: bytes, numbers: Sequence[int]) -> list[bytes]:
    """Uncompressed frames (1-based numbers) as little-endian bytes, for ``application/octet-stream``.

    Raises NotFound for a frame number out of range and NotSupported when no installed decoder
    handles the transfer syntax.
    """
    ds = _read(data)
    if PIXEL_DATA not in ds:
        raise NotFound("the instance has no Pixel Data")
    n = frame_count(ds)
    for f in numbers:
        if f < 1 or f > n:
            raise NotFound(f"frame {f} does not exist (the instance has {n})")
    ts = ds.file_meta.TransferSyntaxUID
    if not ts.is_compressed and ts.is_little_endian and int(ds.BitsAllocated) % 8 == 0:
        size = int(ds.Rows) * int(ds.Columns) * int(ds.get("SamplesPerPixel", 1)) * int(ds.BitsAllocated) // 8
        raw = ds.PixelData
        return [bytes(raw[(f - 1) * size: f * size]) for f in numbers]
    out = []
    for f in numbers:
        arr = _decode(ds, f - 1)
        out.append(arr.astype(arr.dtype.newbyteorder("<")).tobytes())
    return out


def _decode(ds: Dataset, index: int) -> Any:
    from pydicom.pixels import pixel_array

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return pixel_array(ds, index=index)
    except (NotImplementedError, RuntimeError) as e:
        raise NotSupported(f"cannot decode transfer syntax {ds.file_meta.TransferSyntaxUID}: {e}") from e
    except Exception as e:  # noqa: BLE001 - corrupt pixel data
        raise Unprocessable(f"cannot decode the pixel data: {type(e).__name__}: {e}") from e


def parse_window(value: str | None) -> Window | None:
    """``window=center,width[,function]`` (PS3.18 §8.3.5.1.4)."""
    if not value:
        return None
    parts = value.split(",")
    try:
        center, width = float(parts[0]), float(parts[1])
    except (IndexError, ValueError) as e:
        raise Invalid(f"window must be center,width[,function], got {value!r}") from e
    fn = parts[2].strip().lower() if len(parts) > 2 else "linear"
    if fn not in ("linear", "sigmoid") or width <= 0:
        raise Invalid(f"unsupported window {value!r}")
    return Window(center, width, fn)


def parse_viewport(value: str | None) -> tuple[int, int] | None:
    """``viewport=vw,vh`` (the source-region part of PS3.18 §8.3.5.1.3 is not supported)."""
    if not value:
        return None
    parts = value.split(",")
    try:
        w, h = int(parts[0]), int(parts[1])
    except (IndexError, ValueError) as e:
        raise Invalid(f"viewport must be width,height, got {value!r}") from e
    if not (0 < w <= 4096 and 0 < h <= 4096):
        raise Invalid(f"viewport out of range: {value!r}")
    return w, h


def render(data: bytes, *, frame: int = 1, window: Window | None = None,
           viewport: tuple[int, int] | None = None, media_type: str = "image/jpeg", quality: int = 90) -> bytes:
    """One frame as JPEG or PNG: modality LUT, then the ``window`` or the instance's own VOI LUT/window."""
    ds = _read(data)
    _check_frame(ds, frame)
    return _render(ds, frame, window, viewport, media_type, quality)


def render_frames(data: bytes, *, window: Window | None = None, viewport: tuple[int, int] | None = None,
                  media_type: str = "image/jpeg", quality: int = 90) -> Iterator[tuple[int, bytes]]:
    """Every frame of one instance, rendered (study/series ``rendered``): (frame number, image) pairs.

    The instance is parsed once. Raises NotFound (before the first image) when it has no Pixel Data.
    """
    ds = _read(data)
    _check_frame(ds, 1)
    for f in range(1, frame_count(ds) + 1):
        yield f, _render(ds, f, window, viewport, media_type, quality)


def _check_frame(ds: Dataset, frame: int) -> None:
    if PIXEL_DATA not in ds:
        raise NotFound("the instance has no Pixel Data")
    n = frame_count(ds)
    if frame < 1 or frame > n:
        raise NotFound(f"frame {frame} does not exist (the instance has {n})")


def _render(ds: Dataset, frame: int, window: Window | None, viewport: tuple[int, int] | None, media_type: str,
            quality: int) -> bytes:
    import numpy as np
    from PIL import Image
    from pydicom.pixels import apply_modality_lut, apply_voi_lut

    arr = _decode(ds, frame - 1)
    spp = int(ds.get("SamplesPerPixel", 1) or 1)
    if spp == 1:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            pixels = apply_modality_lut(arr, ds).astype(np.float64)
            if window is None and ("WindowCenter" in ds or "VOILUTSequence" in ds):
                try:
                    pixels = apply_voi_lut(pixels, ds).astype(np.float64)
                    lo, hi = float(pixels.min()), float(pixels.max())
                    pixels = _scale(pixels, lo, hi)
                except Exception:  # noqa: BLE001 - malformed VOI attributes: fall back to min/max
                    pixels = _scale(pixels, float(pixels.min()), float(pixels.max()))
            elif window is not None:
                pixels = _window(pixels, window)
            else:
                pixels = _scale(pixels, float(pixels.min()), float(pixels.max()))
        if str(ds.get("PhotometricInterpretation", "")).strip() == "MONOCHROME1":
            pixels = 255.0 - pixels
        img = Image.fromarray(pixels.clip(0, 255).astype(np.uint8), mode="L")
    else:
        if arr.dtype != np.uint8:
            arr = _scale(arr.astype(np.float64), float(arr.min()), float(arr.max())).astype(np.uint8)
        img = Image.fromarray(arr, mode="RGB")
    if viewport is not None:
        img.thumbnail(viewport)
    buf = io.BytesIO()
    if media_type == "image/png":
        img.save(buf, format="PNG")
    elif media_type == "image/gif":  # required single-frame rendered type (PS3.18 Table 8.7.4-1)
        img.save(buf, format="GIF")
    else:
        img.save(buf, format="JPEG", quality=quality)
    return buf.getvalue()


def _scale(pixels: Any, lo: float, hi: float) -> Any:
    if hi <= lo:
        return pixels * 0.0
    return (pixels - lo) * (255.0 / (hi - lo))


def _window(pixels: Any, w: Window) -> Any:
    import numpy as np

    if w.function == "sigmoid":
        return 255.0 / (1.0 + np.exp(-4.0 * (pixels - w.center) / w.width))
    # PS3.3 C.11.2.1.2.1 linear function
    c, width = w.center - 0.5, w.width - 1.0
    out = ((pixels - c) / max(width, 1e-9) + 0.5) * 255.0
    return out.clip(0, 255)


UNCOMPRESSED_TARGETS = ("1.2.840.10008.1.2.1", "1.2.840.10008.1.2")  # Explicit / Implicit VR Little Endian
# Lossless encodings pydicom can write with the plugins we ship (pydicom's own RLE encoder,
# pylibjpeg-openjpeg for JPEG 2000, pyjpegls for JPEG-LS) plus Deflate of the whole data set.
# Lossy targets (JPEG baseline, lossy JPEG 2000) are not offered: a retrieve must not silently
# degrade stored images.
COMPRESSED_TARGETS = (
    "1.2.840.10008.1.2.5",  # RLE Lossless
    "1.2.840.10008.1.2.4.90",  # JPEG 2000 Image Compression (Lossless Only)
    "1.2.840.10008.1.2.4.80",  # JPEG-LS Lossless
    "1.2.840.10008.1.2.1.99",  # Deflated Explicit VR Little Endian
)
TRANSCODE_TARGETS = UNCOMPRESSED_TARGETS + COMPRESSED_TARGETS
_DEFLATED = "1.2.840.10008.1.2.1.99"


def transcode(data: bytes, target: str) -> bytes:
    """Re-encode one Part-10 instance in another transfer syntax (WADO-RS retrieve, DIMSE retrieve).

    Compressed pixel data is decoded (pylibjpeg / RLE; YBR colour becomes RGB) and, for a
    compressed target, encoded again losslessly. Raises NotSupported for a target outside
    ``TRANSCODE_TARGETS`` or a source that cannot be decoded, Unprocessable for corrupt pixel data.
    """
    from pydicom.uid import UID

    if target not in TRANSCODE_TARGETS:
        raise NotSupported(f"cannot transcode to {target}; only to {', '.join(TRANSCODE_TARGETS)}")
    ds = _read(data)
    source = ds.file_meta.TransferSyntaxUID
    if source == target:
        return data
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            # The same instance in another encoding keeps its SOP Instance UID (PS3.5 §8.2 allows a
            # new one only for lossy changes; none of our targets is lossy).
            if source.is_compressed:
                # sets Explicit VR Little Endian and adjusts PhotometricInterpretation
                ds.decompress(generate_instance_uid=False)
            if target in COMPRESSED_TARGETS and target != _DEFLATED and "PixelData" in ds:
                # lossless; sets the transfer syntax and encapsulates the frames
                ds.compress(UID(target), generate_instance_uid=False)
            else:
                ds.file_meta.TransferSyntaxUID = UID(target)
            buf = io.BytesIO()
            if target in UNCOMPRESSED_TARGETS:
                ds.save_as(buf, enforce_file_format=True, implicit_vr=target == "1.2.840.10008.1.2",
                           little_endian=True)
            else:
                ds.file_meta.TransferSyntaxUID = UID(target)
                ds.save_as(buf, enforce_file_format=True)
    except (NotImplementedError, RuntimeError) as e:
        raise NotSupported(f"cannot transcode from {source} to {target}: {e}") from e
    except Exception as e:  # noqa: BLE001 - corrupt pixel data, or pixels the encoder cannot take
        raise Unprocessable(f"cannot transcode the instance: {type(e).__name__}: {e}") from e
    return buf.getvalue()
