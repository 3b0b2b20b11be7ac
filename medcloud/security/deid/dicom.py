"""De-identify DICOM instances per PS3.15 Annex E under the same ``DeidPolicy`` as FHIR.

Profile: the Basic Application Level Confidentiality Profile (Table E.1-1, ``_dicom_profile.py``,
generated), plus the options the policy selects:

    policy.dates = keep            Retain Longitudinal Temporal Information, Full Dates   (113106)
    policy.dates = shift           Retain Longitudinal Temporal Information, Modified Dates (113107):
                                   every DA/DT moved by ``policy.shift_days(patient)``, the FHIR offset
    policy.dicom.clean_descriptors Clean Descriptors (113105): a descriptor is kept only when it holds
                                   no identifying token of the instance, else handled as the Basic Profile says

Action codes (PS3.15 E.3.1): D dummy value of the VR, Z zero-length, X remove, K keep, C clean
(above), U a UID replaced by ``policy.pseudonym_uid`` (``2.25.<HMAC>``, the same UID the FHIR walker
gives ImagingStudy series/instance uids), so a study, its series, its instances and every reference
to them inside sequences remap consistently across instances and runs with the same key.

Combined codes name alternatives by the attribute's type in the IOD (X/Z: type 3 or 2, X/D and Z/D:
3/2 or 1, X/Z/D: 3, 2 or 1). We carry no per-IOD module tables, so the rule is: D when the attribute
is Type 1 in an IOD that uses it (``TYPE1``, a curated list of the rows that carry a D alternative),
else Z when Z is allowed (an empty value is valid for type 2 and type 3 and says no more than a
removal), else X. X/Z/U* sequences are kept and walked: their UIDs are U'd, the rest per the table.

Linking with FHIR: PatientID becomes ``policy.pseudonym("identifier", PatientID)``, the value the
FHIR walker gives the Patient's identifier that ``imaging/fhir_link.py`` made from that PatientID; the
date-shift key is the linked FHIR Patient id (the archive's patient link), so both exports move a
patient's dates by the same number of days. Without a link the PatientID itself is the key.

Beyond the table: private attributes are removed (except blocks whose creator the policy keeps),
curve (50xx) and overlay (60xx) groups go whole (Overlay Data alone would leave a broken overlay),
file meta keeps only what identifies the encoding, and PatientIdentityRemoved, Deidentification
Method (+ Code Sequence, CID 7050) and LongitudinalTemporalInformationModified are set.
"""

from __future__ import annotations

import io
import re
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from datetime import date, timedelta
from typing import Any

import pydicom
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.errors import InvalidDicomError
from pydicom.sequence import Sequence
from pydicom.uid import ExplicitVRLittleEndian

from medcloud.errors import Invalid, Unprocessable
from medcloud.security.deid._dicom_profile import ATTRIBUTES, COLUMNS, EDITION, MASKED
from medcloud.security.deid.policy import Action, DeidPolicy, DicomOptions

# CID 7050 De-identification Method (PS3.16): codes for the profile and the options we apply.
METHOD_CODES = {
    "basic": ("113100", "Basic Application Confidentiality Profile"),
    "full_dates": ("113106", "Retain Longitudinal Temporal Information Full Dates Option"),
    "modified_dates": ("113107", "Retain Longitudinal Temporal Information Modified Dates Option"),
    "clean_descriptors": ("113105", "Clean Descriptors Option"),
}
# Attributes with a .../D alternative that are Type 1 in some IOD (Enhanced equipment/image modules,
# SR document general, RT records): they get a dummy rather than an empty value or a removal.
TYPE1 = frozenset({
    0x00080023, 0x00080033,  # Content Date/Time (SR Document General, enhanced images)
    0x0008002A,  # Acquisition DateTime (enhanced MR/CT/XA image modules)
    0x00181000,  # Device Serial Number (Enhanced General Equipment)
    0x00189516, 0x00189517,  # Start/End Acquisition DateTime (enhanced)
    0x0040A032,  # Observation DateTime (SR content items)
})
PATIENT_ID, PATIENT_NAME, ACCESSION = 0x00100020, 0x00100010, 0x00080050
TEXT_VALUE = 0x0040A160
_FREE_TEXT_VRS = frozenset({"PN", "LT", "ST", "UT", "UC"})
_TEXT_VRS = frozenset({"AE", "AS", "CS", "LO", "LT", "PN", "SH", "ST", "UC", "UR", "UT"})
_MAX_LEN = {"AE": 16, "CS": 16, "SH": 16, "LO": 64, "PN": 64}
_DUMMY_DATES = {"DA": "19000101", "DT": "19000101000000.000000", "TM": "000000.00"}
_LEFTOVERS = re.compile(
    r"[\w.+-]+@[\w-]+\.[\w.-]+|\b(?:https?|ftp)://|\bwww\.|\b\d{1,3}(?:\.\d{1,3}){3}\b"
    r"|\b\d{3}-\d{2}-\d{4}\b|\b\d{3}[-. )]\d{3}[-. ]\d{4}\b|\b\d{4}-?\d{2}-?\d{2}\b|\d{6,}"
)
_COL = {name: i + 1 for i, name in enumerate(COLUMNS)}  # row = (name, basic, *options)


class BurnedInRefused(Unprocessable):
    """The instance may show identifying text in its pixels and the policy does not (or cannot) mask it."""


@dataclass(frozen=True, slots=True)
class DicomResult:
    data: bytes  # the de-identified Part-10 file
    study_uid: str
    series_uid: str
    sop_uid: str
    masked: bool  # burned-in text was blacked out
    linked: bool  # the date-shift key was a linked FHIR Patient id


def options_applied(policy: DeidPolicy) -> tuple[str, ...]:
    """The Table E.1-1 option columns this policy applies, in precedence order after ``basic``."""
    cols: list[str] = []
    if policy.dates is Action.KEEP:
        cols.append("full_dates")
    elif policy.dates is Action.SHIFT:
        cols.append("modified_dates")
    if policy.dicom.clean_descriptors:
        cols.append("clean_descriptors")
    return tuple(cols)


def table_code(tag: int, columns: tuple[str, ...]) -> str | None:
    """The action code for ``tag`` under the Basic Profile and ``columns``; None if the table omits it."""
    row = ATTRIBUTES.get(tag)
    if row is None:
        for mtag, mask, *mrow in MASKED:
            if tag & mask == mtag:
                row = tuple(mrow)
                break
        else:
            return None
    code = row[1]
    for c in columns:
        if row[_COL[c]]:
            code = row[_COL[c]]
    return code


def resolve(code: str, tag: int) -> str:
    """One action for a (possibly combined) code; see the module docstring for the rule."""
    if code == "X/Z/U*":
        return "U"
    choices = code.split("/")
    if len(choices) == 1:
        return code
    if "D" in choices and tag in TYPE1:
        return "D"
    return "Z" if "Z" in choices else "X"


def deidentify_bytes(data: bytes, policy: DeidPolicy, *,
                     fhir_patient: Callable[[str], str | None] | None = None) -> DicomResult:
    """De-identify one Part-10 instance; raises Invalid (not DICOM) or BurnedInRefused."""
    with warnings.catch_warnings():  # pydicom warns on every odd value of real-world files; we rewrite them
        warnings.simplefilter("ignore")
        return _deidentify_bytes(data, policy, fhir_patient)


def _deidentify_bytes(data: bytes, policy: DeidPolicy,
                      fhir_patient: Callable[[str], str | None] | None) -> DicomResult:
    try:
        ds = pydicom.dcmread(io.BytesIO(data), force=False)
    except (InvalidDicomError, EOFError, ValueError, TypeError, KeyError, OSError) as e:
        raise Invalid(f"not a DICOM Part-10 file: {e}") from None
    if "SOPInstanceUID" not in ds or "StudyInstanceUID" not in ds:
        raise Invalid("not a DICOM instance: no SOPInstanceUID/StudyInstanceUID")
    masked = burned_in(ds, policy.dicom)
    pid = str(ds.get("PatientID", "") or "")
    linked_id = fhir_patient(pid) if fhir_patient and pid else None
    key = linked_id or pid or None
    deidentify_dataset(ds, policy, patient_key=key)
    _file_meta(ds)
    out = io.BytesIO()
    pydicom.dcmwrite(out, ds, enforce_file_format=True)  # encoding from the (new) transfer syntax
    return DicomResult(out.getvalue(), str(ds.StudyInstanceUID), str(ds.get("SeriesInstanceUID", "")),
                       str(ds.SOPInstanceUID), masked, linked_id is not None)


def deidentify_dataset(ds: Dataset, policy: DeidPolicy, *, patient_key: str | None) -> None:
    """Apply the profile to ``ds`` in place (sequences included) and record what was done."""
    columns = options_applied(policy)
    walker = _Walker(policy, columns, patient_key, _identifying_tokens(ds, columns))
    walker.dataset(ds, dummy_text=False)
    ds.PatientIdentityRemoved = "YES"
    names = ["basic", *columns]
    ds.DeidentificationMethod = ("medcloud PS3.15 " + EDITION + ": " + ", ".join(names))[:64]
    items = []
    for n in names:
        item = Dataset()
        item.CodeValue, item.CodeMeaning = METHOD_CODES[n]
        item.CodingSchemeDesignator = "DCM"
        items.append(item)
    ds.DeidentificationMethodCodeSequence = Sequence(items)
    ds.LongitudinalTemporalInformationModified = (
        "UNMODIFIED" if "full_dates" in columns else "MODIFIED" if "modified_dates" in columns and patient_key
        else "REMOVED")


def _file_meta(ds: Dataset) -> None:
    old = getattr(ds, "file_meta", None) or FileMetaDataset()
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = ds.SOPClassUID
    meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID  # follows the new SOPInstanceUID
    meta.TransferSyntaxUID = old.get("TransferSyntaxUID", ExplicitVRLittleEndian)
    for kw in ("ImplementationClassUID", "ImplementationVersionName"):
        if kw in old:
            setattr(meta, kw, old[kw].value)
    ds.file_meta = meta  # SourceApplicationEntityTitle and friends name the sender: dropped


def _identifying_tokens(ds: Dataset, columns: tuple[str, ...]) -> list[str]:
    """Words a clean descriptor must not contain: the names, ids... the profile removes from the dataset."""
    tokens: set[str] = set()
    for elem in ds:
        if elem.VR not in ("PN", "LO", "SH", "LT", "ST") or int(elem.tag) >> 16 & 1:
            continue
        code = table_code(int(elem.tag), columns)
        if code is None or code in ("K", "C") or elem.value in (None, ""):
            continue
        for v in elem.value if elem.VM > 1 else [elem.value]:
            for word in re.split(r"[\s^=,./\\-]+", str(v)):
                if len(word) >= 3:
                    tokens.add(word.lower())
    return sorted(tokens)


class _Walker:
    def __init__(self, policy: DeidPolicy, columns: tuple[str, ...], patient_key: str | None, tokens: list[str]):
        self.p = policy
        self.columns = columns
        self.patient_key = patient_key
        self.tokens = re.compile(r"\b(?:" + "|".join(re.escape(t) for t in tokens) + r")\b", re.I) if tokens else None

    def dataset(self, ds: Dataset, *, dummy_text: bool) -> None:
        creators = self.kept_private_blocks(ds)
        for elem in list(ds):
            tag = int(elem.tag)
            group = tag >> 16
            if group & 1:
                if (group, (tag & 0xFFFF) >> 8 if tag & 0xFF00 else tag & 0xFF) not in creators:
                    del ds[tag]
                continue
            if tag & 0xFFFF == 0 or 0x5000 <= group <= 0x50FF or 0x6000 <= group <= 0x60FF:
                del ds[tag]  # group lengths (stale once values change); curves and overlays, whole
                continue
            code = table_code(tag, self.columns)
            if code is None:
                if elem.VR == "SQ":
                    self.items(elem.value, dummy_text=dummy_text)
                elif dummy_text and (elem.VR in _FREE_TEXT_VRS or tag == TEXT_VALUE) and elem.value:
                    elem.value = "ANONYMIZED"
                continue
            self.apply(ds, elem, tag, code, dummy_text=dummy_text)

    def kept_private_blocks(self, ds: Dataset) -> set[tuple[int, int]]:
        keep = self.p.dicom.keep_private_creators
        if not keep:
            return set()
        out = set()
        for elem in ds:
            g, e = int(elem.tag) >> 16, int(elem.tag) & 0xFFFF
            if g & 1 and 0x10 <= e <= 0xFF and str(elem.value).strip() in keep:
                out.add((g, e))
        return out

    def items(self, seq: Any, *, dummy_text: bool) -> None:
        for item in seq or ():
            self.dataset(item, dummy_text=dummy_text)

    def apply(self, ds: Dataset, elem: Any, tag: int, code: str, *, dummy_text: bool) -> None:
        if code == "C":
            if self.clean(ds, elem, dummy_text=dummy_text):
                return
            code = table_code(tag, ()) or "X"  # not cleanable: as the Basic Profile says
        action = resolve(code, tag)
        if tag in (PATIENT_ID, ACCESSION, PATIENT_NAME) and action in ("Z", "D"):
            elem.value = self.pseudonym(tag, elem.value)
        elif action == "X":
            del ds[tag]
        elif action == "K":
            if elem.VR == "SQ":
                self.items(elem.value, dummy_text=dummy_text)
        elif action == "U":
            if elem.VR == "SQ":
                self.items(elem.value, dummy_text=dummy_text)
            elif elem.VR == "UI" and elem.value:
                uids = elem.value if elem.VM > 1 else [elem.value]
                new = [self.p.pseudonym_uid(str(u)) for u in uids if str(u)]
                elem.value = new if len(new) > 1 else (new[0] if new else "")
            else:
                self.zero(elem)
        elif action == "D":
            self.dummy(elem)
        else:
            self.zero(elem)

    def pseudonym(self, tag: int, value: Any) -> str:
        text = str(value or "")
        if not text:
            return ""
        if tag == PATIENT_NAME:
            if self.p.names is not Action.PSEUDONYMISE:
                return ""
            family, given, middle, prefix, suffix = ((text.split("=")[0].split("^") + [""] * 5)[:5])
            full = " ".join(x.strip() for x in (prefix, given, middle, family, suffix) if x.strip())
            return "Anonymous-" + self.p.pseudonym("name", full)[:12]  # as the FHIR walker's HumanName
        if self.p.identifiers is Action.REMOVE:
            return ""
        return self.p.pseudonym("identifier", text)[:16 if tag == ACCESSION else 64]

    def clean(self, ds: Dataset, elem: Any, *, dummy_text: bool) -> bool:
        """C: shift a date (Modified Dates), walk a code sequence, keep a harmless descriptor. True if kept."""
        if elem.VR == "SQ":
            self.items(elem.value, dummy_text=dummy_text)
            return True
        if elem.VR in ("DA", "DT", "TM"):
            if elem.VR == "TM" or elem.value in (None, ""):
                return True  # whole-day offsets leave a time of day as it is
            if self.patient_key is None:
                return False
            values = elem.value if elem.VM > 1 else [elem.value]
            shifted = [_shift(str(v), self.p.shift_days(self.patient_key)) for v in values]
            if any(s is None for s in shifted):
                return False
            elem.value = shifted if len(shifted) > 1 else shifted[0]
            return True
        if elem.VR in _TEXT_VRS and elem.VR != "PN":
            values = elem.value if elem.VM > 1 else [elem.value]
            text = " ".join(str(v) for v in values if v is not None)
            return not _LEFTOVERS.search(text) and not (self.tokens and self.tokens.search(text))
        return False

    def zero(self, elem: Any) -> None:
        elem.value = Sequence([]) if elem.VR == "SQ" else (b"" if elem.VR in ("OB", "OW", "OF", "OD", "OL", "OV",
                                                                               "UN") else None)

    def dummy(self, elem: Any) -> None:
        vr = elem.VR
        if vr == "SQ":
            self.items(elem.value, dummy_text=True)  # the structure stays; its free text is replaced
        elif vr in _DUMMY_DATES:
            elem.value = _DUMMY_DATES[vr]
        elif vr == "UI":
            elem.value = self.p.pseudonym_uid(str(elem.value or ""))
        elif vr in ("IS", "DS"):
            elem.value = "0"
        elif vr in ("US", "SS", "UL", "SL", "UV", "SV", "FL", "FD"):
            elem.value = 0
        elif vr in _TEXT_VRS:
            elem.value = "ANONYMIZED"[:_MAX_LEN.get(vr, 64)]
        else:
            elem.value = b""


def _shift(v: str, days: int) -> str | None:
    """A DA (YYYYMMDD) or DT (YYYYMMDD...) value moved by ``days``; None when it is not a full date."""
    v = v.strip()
    if not re.fullmatch(r"\d{8}.*", v):
        return None
    try:
        d = date(int(v[:4]), int(v[4:6]), int(v[6:8])) + timedelta(days=days)
    except (ValueError, OverflowError):
        return None
    return d.strftime("%Y%m%d") + v[8:]


# ---------------------------------------------------------------- burned-in annotation

def burned_in(ds: Dataset, opts: DicomOptions) -> bool:
    """Refuse (BurnedInRefused) or mask an instance that may show text in its pixels; True if masked."""
    reason = _suspect(ds, opts)
    if reason is None:
        return False
    if opts.burned_in != "mask":
        raise BurnedInRefused(f"refused: {reason} (policy dicom.burned_in = refuse)")
    rects = _rects(ds, opts)
    if rects is None:
        raise BurnedInRefused(f"refused: {reason}, and no mask region is configured for (Manufacturer "
                              f"{str(ds.get('Manufacturer', ''))!r}, Rows {ds.get('Rows')}, Columns {ds.get('Columns')})")
    _mask(ds, rects)
    ds.BurnedInAnnotation = "NO"
    return True


def _suspect(ds: Dataset, opts: DicomOptions) -> str | None:
    if "PixelData" not in ds:
        return None
    flag = str(ds.get("BurnedInAnnotation", "") or "").strip().upper()
    if flag == "YES":
        return "BurnedInAnnotation is YES"
    if flag == "NO":
        return None
    if str(ds.get("SOPClassUID", "")) in opts.suspect_sop_classes:
        return "a secondary capture image without a BurnedInAnnotation flag"
    modality = str(ds.get("Modality", "") or "")
    if modality in opts.suspect_modalities:
        return f"a {modality} image without a BurnedInAnnotation flag"
    return None


def _rects(ds: Dataset, opts: DicomOptions) -> tuple[tuple[int, int, int, int], ...] | None:
    rows, cols = int(ds.get("Rows", 0) or 0), int(ds.get("Columns", 0) or 0)
    maker = str(ds.get("Manufacturer", "") or "")
    for rule in opts.mask:
        if rule.rows == rows and rule.columns == cols and rule.manufacturer.casefold() == maker.casefold():
            return rule.rects
    if opts.mask_top_rows:
        return ((0, 0, cols, min(opts.mask_top_rows, rows)),)
    return None


def _mask(ds: Dataset, rects: tuple[tuple[int, int, int, int], ...]) -> None:
    """Black out ``rects`` in every frame; the result is stored uncompressed (Explicit VR Little Endian)."""
    from pydicom.pixels import pixel_array

    if int(ds.get("BitsAllocated", 0)) not in (8, 16, 32):
        raise BurnedInRefused(f"cannot mask pixel data with BitsAllocated {ds.get('BitsAllocated')}")
    try:
        if ds.file_meta.TransferSyntaxUID.is_compressed:
            ds.decompress(generate_instance_uid=False)  # pylibjpeg decoders; YBR becomes RGB
        arr = pixel_array(ds, raw=True).copy()
    except Exception as e:  # noqa: BLE001 - any decoder failure means we cannot show the masked pixels
        raise BurnedInRefused(f"cannot decode the pixel data to mask it: {e}") from None
    frames = arr if int(ds.get("NumberOfFrames", 1) or 1) > 1 else arr[None]
    pi = str(ds.get("PhotometricInterpretation", ""))
    bits = int(ds.get("BitsStored", 8))
    for x0, y0, x1, y1 in rects:
        region = frames[:, y0:y1, x0:x1]
        if pi == "MONOCHROME1":
            region[...] = (1 << bits) - 1 if arr.dtype.kind == "u" else 0  # 0 is white in MONOCHROME1
        elif pi.startswith("YBR") and region.ndim == 4:
            region[..., 0] = 0
            region[..., 1:] = 1 << (bits - 1)
        elif arr.dtype.kind == "i":
            region[...] = -(1 << (bits - 1))  # the darkest stored value of signed data
        else:
            region[...] = 0
    ds.PixelData = arr.tobytes()
    if pi == "YBR_FULL_422":
        ds.PhotometricInterpretation = "YBR_FULL"  # decoded at full resolution: no longer subsampled
    if "PlanarConfiguration" in ds:
        ds.PlanarConfiguration = 0  # tobytes() interleaves samples
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
