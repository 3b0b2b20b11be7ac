"""Small synthetic DICOM instances built with pydicom, and the pydicom test-file folder."""

from __future__ import annotations

import io
import warnings
from pathlib import Path

import numpy as np
import pydicom
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, MRImageStorage, generate_uid

TEST_FILES = Path(pydicom.__file__).parent / "data" / "test_files"


def instance(
    *,
    study: str | None = None,
    series: str | None = None,
    sop: str | None = None,
    modality: str = "CT",
    patient_id: str = "PID-1",
    patient_name: str = "Doe^Jane",
    birth_date: str = "19800102",
    sex: str = "F",
    study_date: str = "20240115",
    study_time: str = "101500",
    accession: str = "ACC-1",
    study_description: str = "CT chest",
    series_number: int = 1,
    instance_number: int = 1,
    rows: int = 8,
    columns: int = 8,
    frames: int = 1,
    drop: tuple[str, ...] = (),
) -> bytes:
    """One Part-10 CT or MR image with a small 16-bit pixel array (frames x rows x columns)."""
    with warnings.catch_warnings():  # invalid values (a bad UID) are built on purpose
        warnings.simplefilter("ignore")
        return _instance(**{k: v for k, v in locals().items()})


def _instance(*, study, series, sop, modality, patient_id, patient_name, birth_date, sex, study_date,  # type: ignore[no-untyped-def]
              study_time, accession, study_description, series_number, instance_number, rows, columns, frames,
              drop) -> bytes:
    ds = Dataset()
    ds.SOPClassUID = CTImageStorage if modality == "CT" else MRImageStorage
    ds.SOPInstanceUID = sop or generate_uid()
    ds.StudyInstanceUID = study or generate_uid()
    ds.SeriesInstanceUID = series or generate_uid()
    ds.PatientID = patient_id
    ds.PatientName = patient_name
    ds.PatientBirthDate = birth_date
    ds.PatientSex = sex
    ds.StudyDate = study_date
    ds.StudyTime = study_time
    ds.AccessionNumber = accession
    ds.ReferringPhysicianName = "Welby^Marcus"
    ds.StudyDescription = study_description
    ds.StudyID = "S1"
    ds.Modality = modality
    ds.SeriesNumber = series_number
    ds.SeriesDescription = f"{modality} series {series_number}"
    ds.InstanceNumber = instance_number
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.Rows = rows
    ds.Columns = columns
    ds.BitsAllocated = 16
    ds.BitsStored = 12
    ds.HighBit = 11
    ds.PixelRepresentation = 0
    ds.WindowCenter = 1000
    ds.WindowWidth = 2000
    if frames > 1:
        ds.NumberOfFrames = frames
    arr = (np.arange(frames * rows * columns, dtype=np.uint16) * 7 % 4096).reshape(
        (frames, rows, columns) if frames > 1 else (rows, columns))
    ds.PixelData = arr.tobytes()
    for kw in drop:
        if kw in ds:
            delattr(ds, kw)
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = ds.get("SOPClassUID", CTImageStorage)
    meta.MediaStorageSOPInstanceUID = ds.get("SOPInstanceUID", generate_uid())
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta = meta
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return buf.getvalue()


def pixels(data: bytes) -> np.ndarray:
    return pydicom.dcmread(io.BytesIO(data)).pixel_array
