"""STOW-RS in the metadata + bulk data form (PS3.18 §10.5.1.2, §8.6.1.2): build Part-10 instances.

A request of ``multipart/related; type="application/dicom+json"`` carries DICOM JSON arrays of
instances (PS3.18 Annex F); ``type="application/dicom+xml"`` carries one PS3.19 NativeDicomModel
document per instance. The other parts are bulk data, each named by its ``Content-Location``, which
the metadata references with ``BulkDataURI``: ``application/octet-stream`` holds uncompressed
little-endian values; a compressed pixel data media type (PS3.18 Table 8.7.3-5, with an optional
``transfer-syntax`` parameter) holds one compressed frame per part, which is encapsulated
(PS3.5 §A.4) and decides the instance's transfer syntax. Without compressed pixel data an instance
is Explicit VR Little Endian (PS3.18 §8.7.3: Implicit VR is not used with Web Services).

Each instance becomes the Part-10 bytes that the archive stores through the same path as Part-10
STOW-RS. What keeps one instance from being built is that instance's error (its category becomes
its FailureReason in ``status.store_status``); a metadata part that does not parse is ``Invalid``
for the whole request.
"""

from __future__ import annotations

import base64
import binascii
import io
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import urljoin

import orjson
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.encaps import encapsulate
from pydicom.uid import UID, ExplicitVRLittleEndian, ImplicitVRLittleEndian
from pynetdicom import PYNETDICOM_IMPLEMENTATION_UID, PYNETDICOM_IMPLEMENTATION_VERSION

from medcloud.errors import Invalid, MedcloudError, Unprocessable
from medcloud.imaging import native_model
from medcloud.imaging._multipart import Part, media_type

DICOM_JSON = "application/dicom+json"
DICOM_XML = "application/dicom+xml"
OCTET_STREAM = "application/octet-stream"
PIXEL_DATA = "7FE00010"

# PS3.18 Table 8.7.3-5: media type -> its transfer syntaxes, the default (no parameter) first.
# The x- names are those of PS3.18 editions before 2017.
PIXEL_MEDIA: dict[str, tuple[str, ...]] = {
    "image/jpeg": ("1.2.840.10008.1.2.4.70", "1.2.840.10008.1.2.4.50", "1.2.840.10008.1.2.4.51",
                   "1.2.840.10008.1.2.4.57"),
    "image/dicom-rle": ("1.2.840.10008.1.2.5",),
    "image/x-dicom-rle": ("1.2.840.10008.1.2.5",),
    "image/jls": ("1.2.840.10008.1.2.4.80", "1.2.840.10008.1.2.4.81"),
    "image/x-jls": ("1.2.840.10008.1.2.4.80", "1.2.840.10008.1.2.4.81"),
    "image/jp2": ("1.2.840.10008.1.2.4.90", "1.2.840.10008.1.2.4.91"),
    "image/jpx": ("1.2.840.10008.1.2.4.92", "1.2.840.10008.1.2.4.93"),
    "image/jphc": ("1.2.840.10008.1.2.4.201", "1.2.840.10008.1.2.4.202", "1.2.840.10008.1.2.4.203"),
    "image/jxl": ("1.2.840.10008.1.2.4.110", "1.2.840.10008.1.2.4.111", "1.2.840.10008.1.2.4.112"),
    "video/mpeg": ("1.2.840.10008.1.2.4.100", "1.2.840.10008.1.2.4.101"),
    "video/mp4": ("1.2.840.10008.1.2.4.102", "1.2.840.10008.1.2.4.103", "1.2.840.10008.1.2.4.104",
                  "1.2.840.10008.1.2.4.105", "1.2.840.10008.1.2.4.106"),
    "video/h265": ("1.2.840.10008.1.2.4.107", "1.2.840.10008.1.2.4.108"),
}
# A video stream is one fragment sequence for all its frames; every other type is one part per frame.
_VIDEO = ("video/",)


@dataclass(frozen=True, slots=True)
class Assembled:
    """One instance of the request: its Part-10 bytes, or the error that kept it from being built."""

    data: bytes | None = None
    error: MedcloudError | None = None
    sop_class_uid: str | None = None
    sop_instance_uid: str | None = None


def assemble(parts: Sequence[Part], root_type: str, *, bases: Sequence[str] = ()) -> list[Assembled]:
    """The instances of a metadata + bulk data request, in metadata order.

    ``root_type`` is the request's ``type`` (``application/dicom+json`` or ``+xml``); ``bases`` are
    the URLs a relative ``BulkDataURI`` or ``Content-Location`` resolves against (the request URL,
    the DICOMweb root). Raises Invalid when a metadata part is not readable JSON / XML or there is none.
    """
    if root_type not in (DICOM_JSON, DICOM_XML):
        raise Invalid(f"not a metadata type: {root_type!r}")
    metadata: list[Part] = []
    bulk: list[Part] = []
    for n, part in enumerate(parts):
        ct = part.content_type or (root_type if n == 0 else "")
        if ct == root_type or (root_type == DICOM_JSON and ct == "application/json"):
            metadata.append(part)
        else:
            bulk.append(part)
    if not metadata:
        raise Invalid(f"the request has no {root_type} part")
    objs: list[dict[str, Any]] = []
    for part in metadata:
        objs.extend(_read_json(part.body) if root_type == DICOM_JSON else [_read_xml(part.body)])
    index = _BulkIndex(bulk, bases)
    return [_assemble_one(obj, index) for obj in objs]


def _read_json(body: bytes) -> list[dict[str, Any]]:
    try:
        doc = orjson.loads(body)
    except orjson.JSONDecodeError as e:
        raise Invalid(f"the {DICOM_JSON} part is not JSON: {e}") from e
    objs = doc if isinstance(doc, list) else [doc]
    if not objs or not all(isinstance(o, dict) for o in objs):
        raise Invalid(f"the {DICOM_JSON} part must be an array of DICOM JSON objects (PS3.18 F.2)")
    return objs


def _read_xml(body: bytes) -> dict[str, Any]:
    return native_model.from_xml(body)


class _BulkIndex:
    """Bulk data parts by Content-Location (and Content-ID), found by BulkDataURI.

    A URI matches a location when both are equal as written, or when both resolve to the same
    absolute URL against one of ``bases`` (a relative reference on one side, absolute on the other).
    """

    def __init__(self, parts: Sequence[Part], bases: Sequence[str]):
        self.bases = [b if b.endswith("/") else b + "/" for b in bases] + list(bases)
        self.by_key: dict[str, list[Part]] = {}
        for part in parts:
            names = []
            if loc := part.headers.get("content-location", "").strip().strip("<>"):
                names.append(loc)
            if cid := part.headers.get("content-id", "").strip().strip("<>"):
                names.append(f"cid:{cid}")
            seen: set[str] = set()
            for name in names:
                for key in self._keys(name):
                    if key not in seen:
                        seen.add(key)
                        self.by_key.setdefault(key, []).append(part)

    def _keys(self, uri: str) -> list[str]:
        return [uri] + [urljoin(b, uri) for b in self.bases]

    def find(self, uri: str) -> list[Part]:
        """The parts at ``uri`` (several: frames in order), else at ``uri/frames/1..n``; [] if none."""
        for key in self._keys(uri.strip()):
            if key in self.by_key:
                return self.by_key[key]
        frames: list[Part] = []
        while True:
            found = next((self.by_key[k] for k in self._keys(f"{uri.rstrip('/')}/frames/{len(frames) + 1}")
                          if k in self.by_key), None)
            if found is None:
                return frames
            frames.extend(found)

    def octets(self, tag: str, vr: str, uri: str) -> bytes:
        parts = self.find(uri)
        if not parts:
            raise Unprocessable(f"({tag[:4]},{tag[4:]}) BulkDataURI {uri!r} matches no bulk data part "
                                "(by Content-Location)")
        out = []
        for part in parts:
            mt, params = media_type(part.headers.get("content-type", OCTET_STREAM))
            if mt != OCTET_STREAM:
                raise Unprocessable(f"({tag[:4]},{tag[4:]}) bulk data of type {mt!r}: only Pixel Data may be "
                                    f"compressed; other bulk data is {OCTET_STREAM}")
            _uncompressed_syntax(tag, params)
            out.append(part.body)
        return b"".join(out)


def _assemble_one(obj: dict[str, Any], index: _BulkIndex) -> Assembled:
    sop_class, sop = _uid_value(obj, "00080016"), _uid_value(obj, "00080018")
    try:
        return Assembled(data=_part10(obj, index, sop_class, sop), sop_class_uid=sop_class, sop_instance_uid=sop)
    except MedcloudError as e:
        return Assembled(error=e, sop_class_uid=sop_class, sop_instance_uid=sop)
    except Exception as e:  # noqa: BLE001 - pydicom refusing a value: this instance cannot be understood
        return Assembled(error=Unprocessable(f"cannot build the instance: {type(e).__name__}: {e}"),
                         sop_class_uid=sop_class, sop_instance_uid=sop)


def _uid_value(obj: dict[str, Any], tag: str) -> str | None:
    el = obj.get(tag)
    values = el.get("Value") if isinstance(el, dict) else None
    if isinstance(values, list) and values and isinstance(values[0], str) and values[0].strip():
        return values[0].strip()
    return None


def _part10(obj: dict[str, Any], index: _BulkIndex, sop_class: str | None, sop: str | None) -> bytes:
    if sop is None:
        raise Invalid("missing SOPInstanceUID (0008,0018)")
    if sop_class is None:
        raise Invalid("missing SOPClassUID (0008,0016)")
    body: dict[str, Any] = {}
    for tag, el in obj.items():
        key = tag.upper() if isinstance(tag, str) else ""
        if len(key) != 8 or any(c not in "0123456789ABCDEF" for c in key) or not isinstance(el, dict):
            raise Unprocessable(f"{tag!r} is not a DICOM JSON attribute (8 hex digits -> object)")
        if key.startswith("0002"):
            continue  # File Meta: built here from the SOP UIDs and the bulk data's transfer syntax
        body[key] = el
    _check_inline_binary(body)
    pixel = body.pop(PIXEL_DATA, None)
    if "00080005" not in body and _has_non_ascii(body):
        body["00080005"] = {"vr": "CS", "Value": ["ISO_IR 192"]}  # JSON text is Unicode (PS3.18 F.2)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ds = Dataset.from_json(body, bulk_data_uri_handler=index.octets)
        ts = _pixel_data(ds, pixel, index) if pixel is not None else UID(ExplicitVRLittleEndian)
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = UID(sop_class)
        meta.MediaStorageSOPInstanceUID = UID(sop)
        meta.TransferSyntaxUID = ts
        # The implementation the DIMSE paths put in the File Meta of what they receive (dimse/command.py).
        meta.ImplementationClassUID = PYNETDICOM_IMPLEMENTATION_UID
        meta.ImplementationVersionName = PYNETDICOM_IMPLEMENTATION_VERSION
        ds.file_meta = meta
        buf = io.BytesIO()
        ds.save_as(buf, enforce_file_format=True)
    return buf.getvalue()


def _has_non_ascii(obj: Any) -> bool:
    stack = [obj]
    while stack:
        node = stack.pop()
        if isinstance(node, str):
            if not node.isascii():
                return True
        elif isinstance(node, dict):
            stack.extend(node.values())
        elif isinstance(node, list):
            stack.extend(node)
    return False


def _check_inline_binary(obj: dict[str, Any]) -> None:
    for tag, el in obj.items():
        if not isinstance(el, dict):
            continue
        if "InlineBinary" in el:
            value = el["InlineBinary"]
            try:
                if not isinstance(value, str):
                    raise ValueError("not a string")
                base64.b64decode(value, validate=True)
            except (ValueError, binascii.Error) as e:
                raise Unprocessable(f"({tag[:4]},{tag[4:]}) InlineBinary is not base64: {e}") from e
        if el.get("vr") == "SQ":
            for item in el.get("Value") or []:
                if isinstance(item, dict):
                    _check_inline_binary(item)


def _pixel_data(ds: Dataset, el: Any, index: _BulkIndex) -> UID:
    """Set Pixel Data from its metadata element; returns the instance's transfer syntax."""
    vr = str(el.get("vr") or "OW")
    if "InlineBinary" in el:
        value = base64.b64decode(el["InlineBinary"])
        _check_native_length(ds, len(value))
        ds.add_new(0x7FE00010, vr, value)
        return UID(ExplicitVRLittleEndian)
    uri = el.get("BulkDataURI")
    if not isinstance(uri, str):
        if "Value" in el:
            raise Unprocessable("(7FE0,0010) Pixel Data comes as BulkDataURI or InlineBinary, not Value")
        ds.add_new(0x7FE00010, vr, b"")
        return UID(ExplicitVRLittleEndian)
    parts = index.find(uri)
    if not parts:
        raise Unprocessable(f"(7FE0,0010) BulkDataURI {uri!r} matches no bulk data part (by Content-Location)")
    if len({media_type(p.headers.get("content-type", OCTET_STREAM))[0] for p in parts}) > 1:
        raise Unprocessable("(7FE0,0010) the frames of one Pixel Data come in different media types")
    mt, params = media_type(parts[0].headers.get("content-type", OCTET_STREAM))
    if mt == OCTET_STREAM:
        value = index.octets(PIXEL_DATA, vr, uri)
        _check_native_length(ds, len(value))
        ds.add_new(0x7FE00010, vr, value)
        return UID(ExplicitVRLittleEndian)
    ts = _compressed_syntax(mt, params)
    frames = [p.body for p in parts]
    if any(media_type(p.headers.get("content-type", ""))[1].get("transfer-syntax", ts) != ts for p in parts):
        raise Unprocessable("(7FE0,0010) the frames of one Pixel Data name different transfer syntaxes")
    expected = _int(ds, "NumberOfFrames") or 1
    if not mt.startswith(_VIDEO) and len(frames) != expected:
        raise Invalid(f"(7FE0,0010) {len(frames)} compressed frame part(s) for NumberOfFrames {expected}")
    if any(not f for f in frames):
        raise Invalid("(7FE0,0010) an empty compressed frame")
    ds.add_new(0x7FE00010, "OB", encapsulate(frames))
    ds["PixelData"].is_undefined_length = True
    return ts


def _compressed_syntax(mt: str, params: dict[str, str]) -> UID:
    syntaxes = PIXEL_MEDIA.get(mt.lower())
    if syntaxes is None:
        raise Unprocessable(f"(7FE0,0010) bulk data media type {mt!r} is not one of {OCTET_STREAM}, "
                            f"{', '.join(sorted(PIXEL_MEDIA))} (PS3.18 Table 8.7.3-5)")
    ts = params.get("transfer-syntax", syntaxes[0])
    if ts not in syntaxes:
        raise Unprocessable(f"(7FE0,0010) transfer-syntax={ts} does not go with {mt} "
                            f"(that media type carries {', '.join(syntaxes)})")
    return UID(ts)


def _uncompressed_syntax(tag: str, params: dict[str, str]) -> None:
    ts = params.get("transfer-syntax")
    if ts is not None and ts not in (ExplicitVRLittleEndian, ImplicitVRLittleEndian):
        raise Unprocessable(f"({tag[:4]},{tag[4:]}) {OCTET_STREAM} bulk data is uncompressed little endian, "
                            f"not transfer-syntax={ts}")


def _int(ds: Dataset, keyword: str) -> int | None:
    try:
        value = ds.get(keyword)
        return int(value) if value not in (None, "") else None
    except (TypeError, ValueError):
        return None


def _check_native_length(ds: Dataset, actual: int) -> None:
    """Uncompressed Pixel Data holds Rows x Columns x SamplesPerPixel x BitsAllocated/8 x frames bytes."""
    rows, cols, bits = _int(ds, "Rows"), _int(ds, "Columns"), _int(ds, "BitsAllocated")
    if not rows or not cols or not bits:
        raise Invalid("Pixel Data without Rows, Columns and BitsAllocated to describe it")
    samples = _int(ds, "SamplesPerPixel") or 1
    frames = _int(ds, "NumberOfFrames") or 1
    expected = (rows * cols * samples * bits * frames + 7) // 8
    if actual != expected and not (expected % 2 and actual == expected + 1):  # OB/OW pad to even length
        raise Invalid(f"Pixel Data has {actual} bytes; Rows x Columns x SamplesPerPixel x BitsAllocated/8 x "
                      f"frames = {rows} x {cols} x {samples} x {bits}/8 x {frames} needs {expected}")
