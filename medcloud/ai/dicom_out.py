"""What an automatic read stores into the study: a Comprehensive SR and a Secondary Capture heatmap.

Both are built with pydicom from the study's own header (Patient and General Study modules copied
from a source instance), so the archive files them under the same patient and study. Their UIDs
are derived from the read (``pydicom.uid.generate_uid(entropy_srcs=...)``: a 2.25 UUID-derived
UID from a hash), so a retried job produces the same instances and stores nothing twice.

IODs: Comprehensive SR (PS3.3 A.35.3; its NUM content items carry the probabilities, which Basic
Text SR does not allow) and Secondary Capture Image (PS3.3 A.8.1). Codes are DCM where DICOM has
one (111001 Algorithm Name, 111003 Algorithm Version, 121071 Finding), LOINC 18748-4 for the
report title, and a private coding scheme (``99MEDCLOUD``, PS3.3 8.2: "99" prefix) for the
model's own labels, which no public terminology defines.
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sequence import Sequence as DicomSequence
from pydicom.uid import (
    ComprehensiveSRStorage,
    ExplicitVRLittleEndian,
    SecondaryCaptureImageStorage,
    generate_uid,
)

from medcloud import __version__

OUTPUT_MARK = "medcloud AI"  # SeriesDescription prefix of our outputs: they never trigger a read themselves
SR_SERIES_NUMBER, SC_SERIES_NUMBER = 9901, 9902
_PATIENT_STUDY = ("PatientName", "PatientID", "PatientBirthDate", "PatientSex", "StudyDate", "StudyTime",
                  "AccessionNumber", "ReferringPhysicianName", "StudyID", "StudyDescription")
LOCAL = "99MEDCLOUD"


@dataclass(frozen=True)
class SourceImage:
    series_uid: str
    sop_uid: str
    sop_class_uid: str


@dataclass(frozen=True)
class Read:
    """One finished read: what the model said about a study, and what to reference."""

    study_uid: str
    model: str
    version: str
    package_sha256: str
    labels: list[str]
    probabilities: list[float]
    inputs: list[SourceImage]
    explained: SourceImage  # the slice the heatmap is drawn on
    key: str  # what makes this read unique (study, model version, inputs)

    @property
    def label(self) -> str:
        return self.labels[int(np.argmax(self.probabilities))]

    def uid(self, what: str) -> str:
        return str(generate_uid(entropy_srcs=["medcloud-ai-read", self.key, what]))


def structured_report(read: Read, header: Dataset, now: tuple[str, str]) -> bytes:
    """A Comprehensive SR: finding, one NUM per class probability, the algorithm, the heatmap image."""
    ds = _common(read, header, ComprehensiveSRStorage, read.uid("sr"), read.uid("sr-series"), "SR",
                 SR_SERIES_NUMBER, f"{OUTPUT_MARK} {read.model} {read.version} report", now)
    ds.CompletionFlag = "COMPLETE"
    ds.VerificationFlag = "UNVERIFIED"  # preliminary: no clinician has signed it
    ds.ReferencedPerformedProcedureStepSequence = DicomSequence()
    ds.PerformedProcedureCodeSequence = DicomSequence()
    ds.ValueType = "CONTAINER"
    ds.ConceptNameCodeSequence = DicomSequence([_code("18748-4", "LN", "Diagnostic imaging report")])
    ds.ContinuityOfContent = "SEPARATE"
    items = [
        _text("111001", "DCM", "Algorithm Name", read.model),
        _text("111003", "DCM", "Algorithm Version", f"{read.version} (package sha256 {read.package_sha256})"),
        _item("CODE", _code("121071", "DCM", "Finding"),
              ConceptCodeSequence=DicomSequence([_label_code(read.label)])),
    ]
    for label, p in zip(read.labels, read.probabilities, strict=True):
        measured = Dataset()
        measured.NumericValue = f"{p:.6f}"
        measured.MeasurementUnitsCodeSequence = DicomSequence([_code("1", "UCUM", "no units")])
        items.append(_item("NUM", _code(_value(label), LOCAL, f"Probability of {label}"[:64]),
                           MeasuredValueSequence=DicomSequence([measured])))
    items.append(_text("121106", "DCM", "Comment", "Mean of the per-image probabilities over "
                       f"{len(read.inputs)} image(s); computer-generated, preliminary."))
    ref = Dataset()
    ref.ReferencedSOPClassUID = SecondaryCaptureImageStorage
    ref.ReferencedSOPInstanceUID = read.uid("sc")
    items.append(_item("IMAGE", _code("121200", "DCM", "Illustration of ROI"),
                       ReferencedSOPSequence=DicomSequence([ref])))
    ds.ContentSequence = DicomSequence(items)
    ds.CurrentRequestedProcedureEvidenceSequence = DicomSequence([_evidence(read.study_uid, read.inputs)])
    ds.PertinentOtherEvidenceSequence = DicomSequence([_evidence(read.study_uid, [
        SourceImage(read.uid("sc-series"), read.uid("sc"), SecondaryCaptureImageStorage)])])
    return _part10(ds)


def secondary_capture(read: Read, header: Dataset, rgb: np.ndarray, now: tuple[str, str]) -> bytes:
    """The heatmap overlay (RGB uint8, H x W x 3) as a Secondary Capture image."""
    ds = _common(read, header, SecondaryCaptureImageStorage, read.uid("sc"), read.uid("sc-series"), "OT",
                 SC_SERIES_NUMBER, f"{OUTPUT_MARK} {read.model} {read.version} heatmap", now)
    ds.ConversionType = "WSD"  # workstation
    ds.ImageType = ["DERIVED", "SECONDARY"]
    ds.DerivationDescription = f"occlusion sensitivity for '{read.label}' overlaid on the source image"[:1024]
    ds.BurnedInAnnotation = "NO"
    src = Dataset()
    src.ReferencedSOPClassUID = read.explained.sop_class_uid
    src.ReferencedSOPInstanceUID = read.explained.sop_uid
    ds.SourceImageSequence = DicomSequence([src])
    ds.SamplesPerPixel = 3
    ds.PhotometricInterpretation = "RGB"
    ds.PlanarConfiguration = 0
    ds.Rows, ds.Columns = int(rgb.shape[0]), int(rgb.shape[1])
    ds.BitsAllocated = ds.BitsStored = 8
    ds.HighBit = 7
    ds.PixelRepresentation = 0
    ds.PixelData = np.ascontiguousarray(rgb, dtype=np.uint8).tobytes()
    return _part10(ds)


def _common(read: Read, header: Dataset, sop_class: str, sop_uid: str, series_uid: str, modality: str,
            series_number: int, description: str, now: tuple[str, str]) -> Dataset:
    ds = Dataset()
    for keyword in _PATIENT_STUDY:
        ds.__setattr__(keyword, header.get(keyword, ""))
    ds.SOPClassUID = sop_class
    ds.SOPInstanceUID = sop_uid
    ds.StudyInstanceUID = read.study_uid
    ds.SeriesInstanceUID = series_uid
    ds.Modality = modality
    ds.SeriesNumber = series_number
    ds.SeriesDescription = description[:64]
    ds.InstanceNumber = 1
    ds.Manufacturer = "medcloud"
    ds.ManufacturerModelName = f"{read.model} {read.version}"[:64]
    ds.SoftwareVersions = __version__
    ds.ContentDate = ds.InstanceCreationDate = ds.SeriesDate = now[0]
    ds.ContentTime = ds.InstanceCreationTime = ds.SeriesTime = now[1]
    ds.SpecificCharacterSet = "ISO_IR 192"
    return ds


def _part10(ds: Dataset) -> bytes:
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = ds.SOPClassUID
    meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta = meta
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return buf.getvalue()


def _code(value: str, scheme: str, meaning: str) -> Dataset:
    c = Dataset()
    c.CodeValue = value
    c.CodingSchemeDesignator = scheme
    c.CodeMeaning = meaning
    return c


def _value(label: str) -> str:
    """A label as a CodeValue (SH: at most 16 characters, no backslash)."""
    text = label.replace("\\", "/")
    if len(text) <= 16:
        return text
    import hashlib

    return "L" + hashlib.sha256(label.encode()).hexdigest()[:15]


def _label_code(label: str) -> Dataset:
    return _code(_value(label), LOCAL, label[:64])


def _item(value_type: str, name: Dataset, **attrs: object) -> Dataset:
    item = Dataset()
    item.RelationshipType = "CONTAINS"
    item.ValueType = value_type
    item.ConceptNameCodeSequence = DicomSequence([name])
    for k, v in attrs.items():
        setattr(item, k, v)
    return item


def _text(value: str, scheme: str, meaning: str, text: str) -> Dataset:
    return _item("TEXT", _code(value, scheme, meaning), TextValue=text)


def _evidence(study_uid: str, images: Sequence[SourceImage]) -> Dataset:
    by_series: dict[str, list[SourceImage]] = {}
    for img in images:
        by_series.setdefault(img.series_uid, []).append(img)
    study = Dataset()
    study.StudyInstanceUID = study_uid
    series_items = []
    for series_uid, imgs in by_series.items():
        s = Dataset()
        s.SeriesInstanceUID = series_uid
        refs = []
        for img in imgs:
            r = Dataset()
            r.ReferencedSOPClassUID = img.sop_class_uid
            r.ReferencedSOPInstanceUID = img.sop_uid
            refs.append(r)
        s.ReferencedSOPSequence = DicomSequence(refs)
        series_items.append(s)
    study.ReferencedSeriesSequence = DicomSequence(series_items)
    return study
