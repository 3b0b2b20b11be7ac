"""Turn the bytes of one Part-10 file into what the archive indexes, or a categorised refusal.

pydicom reads short values without complaint (a file cut inside Pixel Data parses "fine"), so
truncation is checked here: every top-level element must hold as many bytes as its length says,
and an EOF inside an undefined-length item (pydicom's warning) is a failure too.
"""

from __future__ import annotations

import datetime
import io
import warnings
from dataclasses import dataclass
from typing import Any

import orjson
import pydicom
from pydicom.dataelem import DataElement, RawDataElement
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError

from medcloud.errors import Invalid, NotSupported, TooLarge, Unprocessable
from medcloud.imaging.blobs import valid_uid

BULK_THRESHOLD = 1024  # bytes of binary value above which metadata gives a BulkDataURI (PS3.18 F.2.7)
PIXEL_DATA = 0x7FE00010


@dataclass(frozen=True, slots=True)
class Parsed:
    """One instance, validated: the UIDs that address it, its index attributes, its DICOM JSON."""

    study_uid: str
    series_uid: str
    sop_uid: str
    sop_class_uid: str
    transfer_syntax_uid: str
    patient: dict[str, Any]
    study: dict[str, Any]
    series: dict[str, Any]
    instance: dict[str, Any]
    metadata: bytes  # DICOM JSON object; BulkDataURIs relative to the DICOMweb base
    warnings: tuple[str, ...] = ()
    extra: tuple[tuple[str, str], ...] = ()  # (tag, value) of the configured extra matching keys


def parse(data: bytes, *, max_bytes: int, extra_tags: tuple[str, ...] = ()) -> Parsed:
    """Parse and validate one Part-10 instance.

    Raises TooLarge (-> 0xA700), Unprocessable (not DICOM / corrupt, -> 0xC000), Invalid (missing
    or malformed UIDs, -> 0xA900), NotSupported (a non-storage SOP class, -> 0x0122).
    """
    if len(data) > max_bytes:
        raise TooLarge(f"instance of {len(data)} bytes exceeds the limit of {max_bytes} bytes")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            ds = pydicom.dcmread(io.BytesIO(data))
        except InvalidDicomError as e:
            raise Unprocessable(f"not a DICOM Part-10 file: {e}") from e
        except Exception as e:  # noqa: BLE001 - any parser failure is "cannot understand"
            raise Unprocessable(f"corrupt DICOM file: {type(e).__name__}: {e}") from e
        eof = [str(w.message) for w in caught if "EOF" in str(w.message) or "end of file" in str(w.message).lower()]
    if eof:
        raise Unprocessable(f"truncated DICOM file: {eof[0]}")
    _check_complete(ds)
    meta = ds.file_meta
    ts = _uid(meta.get("TransferSyntaxUID"))
    if not ts:
        raise Unprocessable("the File Meta Information has no Transfer Syntax UID (0002,0010)")
    study_uid = _required_uid(ds, "StudyInstanceUID")
    series_uid = _required_uid(ds, "SeriesInstanceUID")
    sop_uid = _required_uid(ds, "SOPInstanceUID")
    sop_class = _required_uid(ds, "SOPClassUID")
    notes: list[str] = []
    media_sop = _uid(meta.get("MediaStorageSOPInstanceUID"))
    if media_sop and media_sop != sop_uid:
        raise Invalid(f"MediaStorageSOPInstanceUID {media_sop} differs from SOPInstanceUID {sop_uid}")
    _check_sop_class(sop_class)
    _check_pixel_data(ds, ts)
    with warnings.catch_warnings(record=True):
        warnings.simplefilter("always")
        return Parsed(
            study_uid=study_uid,
            series_uid=series_uid,
            sop_uid=sop_uid,
            sop_class_uid=sop_class,
            transfer_syntax_uid=ts,
            patient={
                "patient_id": _text(ds, "PatientID") or "",
                "patient_name": _text(ds, "PatientName"),
                "patient_birth_date": da(_text(ds, "PatientBirthDate")),
                "patient_sex": _text(ds, "PatientSex"),
            },
            study={
                "study_date": da(_text(ds, "StudyDate")),
                "study_time": tm(_text(ds, "StudyTime")),
                "accession_number": _text(ds, "AccessionNumber"),
                "referring_physician_name": _text(ds, "ReferringPhysicianName"),
                "study_description": _text(ds, "StudyDescription"),
                "study_id": _text(ds, "StudyID"),
            },
            series={
                "modality": _text(ds, "Modality"),
                "series_number": _int(ds, "SeriesNumber"),
                "series_description": _text(ds, "SeriesDescription"),
                "body_part_examined": _text(ds, "BodyPartExamined"),
                "pps_start_date": da(_text(ds, "PerformedProcedureStepStartDate")),
                "pps_start_time": tm(_text(ds, "PerformedProcedureStepStartTime")),
            },
            instance={
                "sop_class_uid": sop_class,
                "instance_number": _int(ds, "InstanceNumber"),
                "rows": _int(ds, "Rows"),
                "columns": _int(ds, "Columns"),
                "number_of_frames": _int(ds, "NumberOfFrames") or (1 if PIXEL_DATA in ds else None),
                "bits_allocated": _int(ds, "BitsAllocated"),
                "transfer_syntax_uid": ts,
            },
            metadata=metadata_json(ds, study_uid, series_uid, sop_uid, ts),
            warnings=tuple(notes),
            extra=extra_tags_of(ds, extra_tags) if extra_tags else (),
        )


def extra_tags_of(ds: Dataset, tags: tuple[str, ...]) -> tuple[tuple[str, str], ...]:
    from medcloud.imaging.extra_tags import from_dataset

    return from_dataset(ds, tags)


def metadata_json(ds: Dataset, study: str, series: str, sop: str, ts: str) -> bytes:
    """The instance as a DICOM JSON object (PS3.18 F.2); large binary values become BulkDataURIs."""
    base = f"studies/{study}/series/{series}/instances/{sop}"

    def bulk(elem: DataElement) -> str:
        return f"{base}/bulkdata/{elem.tag:08x}"

    obj = ds.to_json_dict(BULK_THRESHOLD, bulk, suppress_invalid_tags=True)
    # Pixel data is always bulk data, however small: viewers fetch it through frames/bulkdata.
    for tag in ("7FE00008", "7FE00009", "7FE00010"):
        el = obj.get(tag)
        if el is not None and "InlineBinary" in el:
            obj[tag] = {"vr": el["vr"], "BulkDataURI": f"{base}/bulkdata/{tag.lower()}"}
    obj["00020010"] = {"vr": "UI", "Value": [ts]}
    return orjson.dumps(dict(sorted(obj.items())))


def _check_complete(ds: Dataset) -> None:
    for tag, elem in ds._dict.items():
        if (isinstance(elem, RawDataElement) and elem.length != 0xFFFFFFFF and elem.value is not None
                and len(elem.value) != elem.length):
            raise Unprocessable(
                f"truncated DICOM file: element ({tag >> 16:04X},{tag & 0xFFFF:04X}) has "
                f"{len(elem.value)} of {elem.length} bytes"
            )


def _check_pixel_data(ds: Dataset, ts: str) -> None:
    if PIXEL_DATA not in ds:
        return
    try:
        uid = pydicom.uid.UID(ts)
        if not uid.is_transfer_syntax or uid.is_encapsulated:
            return
        rows, cols = int(ds.Rows), int(ds.Columns)
        bits = int(ds.BitsAllocated)
        spp = int(ds.get("SamplesPerPixel", 1) or 1)
        frames = int(ds.get("NumberOfFrames", 1) or 1)
    except Exception as e:  # noqa: BLE001 - any missing/invalid image attribute
        raise Invalid(f"Pixel Data without a valid image pixel description: {e}") from e
    expected = (rows * cols * frames * spp * bits + 7) // 8
    actual = len(ds[PIXEL_DATA].value or b"")
    if actual < expected:
        raise Invalid(f"Pixel Data has {actual} bytes; Rows x Columns x frames x samples x bits needs {expected}")


def _check_sop_class(uid: str) -> None:
    from pydicom._uid_dict import UID_dictionary

    entry = UID_dictionary.get(uid)
    # Unknown (private or newer) SOP classes are stored as they are; known non-storage ones are not.
    if entry is not None and (entry[1] != "SOP Class" or "Storage" not in entry[0]):
        raise NotSupported(f"SOP Class {uid} ({entry[0]}) is not a storage SOP class")


def _required_uid(ds: Dataset, keyword: str) -> str:
    try:
        value = _uid(ds.get(keyword))
    except Exception:  # noqa: BLE001
        value = None
    if not value:
        raise Invalid(f"missing {keyword}")
    if not valid_uid(value):
        raise Invalid(f"{keyword} {value!r} is not a valid UID")
    return value


def _uid(value: Any) -> str | None:
    if value is None:
        return None
    s = str(value).strip().rstrip("\x00").strip()
    return s or None


def _text(ds: Dataset, keyword: str) -> str | None:
    try:
        value = ds.get(keyword)
    except Exception:  # noqa: BLE001 - an undecodable value is treated as absent
        return None
    if value is None:
        return None
    if isinstance(value, list | tuple | pydicom.multival.MultiValue):
        value = "\\".join(str(v) for v in value)
    s = str(value).strip().rstrip("\x00").strip()
    return s or None


def _int(ds: Dataset, keyword: str) -> int | None:
    try:
        value = ds.get(keyword)
        if value is None or value == "":
            return None
        if isinstance(value, list | tuple | pydicom.multival.MultiValue):
            value = value[0]
        return int(float(value))
    except Exception:  # noqa: BLE001
        return None


def da(value: str | None) -> str | None:
    """A DICOM DA normalised to YYYYMMDD (old ACR-NEMA ``YYYY.MM.DD`` accepted); None if not a date.

    The date must exist in the calendar (PS3.5 Table 6.2-1: "a valid date"): ``20211301`` and
    ``20230230`` are not dates, so a query for them is refused instead of matching nothing.
    """
    if not value:
        return None
    s = value.replace(".", "").replace("-", "").strip()
    if len(s) != 8 or not s.isdigit():
        return None
    try:
        datetime.date(int(s[:4]), int(s[4:6]), int(s[6:]))
    except ValueError:
        return None
    return s


def dt(value: str | None, *, upper: bool = False) -> str | None:
    """A DICOM DT (``YYYY[MM[DD[HH[MM[SS[.F{1,6}]]]]]][&ZZXX]``) as ``YYYYMMDDHHMMSS.ffffff`` in UTC
    when it carries an offset (PS3.5 Table 6.2-1), so that date-times compare as strings.

    Missing components are padded with their minimum, or with their maximum when ``upper`` (the
    span a partial value names: ``2024`` is all of 2024). None if not a valid date-time.
    """
    if not value:
        return None
    s = value.strip()
    offset = None
    for sign in "+-":
        if sign in s[4:]:
            s, tz = s[:4] + s[4:].split(sign, 1)[0], s[4:].split(sign, 1)[1]
            if len(tz) != 4 or not tz.isdigit() or int(tz[:2]) > 14 or int(tz[2:]) > 59:
                return None
            offset = (1 if sign == "+" else -1) * (int(tz[:2]) * 60 + int(tz[2:]))
            break
    whole, _, frac = s.partition(".")
    if not whole.isdigit() or len(whole) not in (4, 6, 8, 10, 12, 14) or (frac and (
            not frac.isdigit() or len(frac) > 6 or len(whole) != 14)):
        return None
    filled = whole + ("1231235959"[len(whole) - 4:] if upper else "0101000000"[len(whole) - 4:])
    if upper and len(whole) == 6:  # the last day of that month
        import calendar

        filled = whole + f"{calendar.monthrange(int(whole[:4]), int(whole[4:6]))[1]:02d}" + "235959"
    fraction = (frac + ("9" if upper else "0") * 6)[:6]
    try:
        when = datetime.datetime.strptime(filled[:12], "%Y%m%d%H%M")
    except ValueError:
        return None
    seconds = int(filled[12:14])
    if seconds > 60:
        return None
    if offset is not None:
        when -= datetime.timedelta(minutes=offset)
    return f"{when:%Y%m%d%H%M}{seconds:02d}.{fraction}"


def tm(value: str | None, *, upper: bool = False) -> str | None:
    """A DICOM TM normalised to HHMMSS.ffffff so that times compare as strings.

    ``upper`` pads missing components with their maximum (an open-ended range's upper bound).
    """
    if not value:
        return None
    s = value.replace(":", "").strip()
    whole, _, frac = s.partition(".")
    if not whole.isdigit() or len(whole) % 2 or len(whole) > 6 or (frac and not frac.isdigit()):
        return None
    # HH 00-23, MM 00-59, SS 00-60 (60: a leap second, PS3.5 Table 6.2-1); at most 6 fraction digits.
    if int(whole[:2]) > 23 or whole[2:4] > "59" or whole[4:6] > "60" or len(frac) > 6:
        return None
    pad = "9" if upper else "0"
    whole = whole + ("595959"[len(whole):] if upper else "0" * (6 - len(whole)))
    frac = (frac + pad * 6)[:6] if frac or not upper else "999999"
    return f"{whole}.{frac}"
