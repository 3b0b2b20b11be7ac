"""Helpers for the DIMSE tests: dcmtk runs, instances on disk, a JPEG Baseline instance."""

from __future__ import annotations

import io
import os
import socket
import subprocess
import time
from pathlib import Path

import numpy as np
import pydicom
from PIL import Image
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.encaps import encapsulate
from pydicom.uid import JPEGBaseline8Bit, SecondaryCaptureImageStorage, generate_uid

SCU_AET = "TESTSCU"
DEST_AET = "DEST"
IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def run(*args: str, timeout: float = 30, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*args], capture_output=True, text=True, timeout=timeout, cwd=cwd)


def wait_port(port: int, proc: subprocess.Popen[bytes], timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{proc.args} exited with {proc.returncode}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"{proc.args} did not listen on {port}")


def jpeg_instance(*, study: str | None = None, patient_id: str = "PID-J", rows: int = 64, columns: int = 64
                  ) -> bytes:
    """A JPEG Baseline (8-bit, lossy) Secondary Capture instance, compressed with Pillow."""
    arr = (np.add.outer(np.arange(rows), np.arange(columns)) * 2 % 256).astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="JPEG", quality=90)
    ds = Dataset()
    ds.SOPClassUID = SecondaryCaptureImageStorage
    ds.SOPInstanceUID = generate_uid()
    ds.StudyInstanceUID = study or generate_uid()
    ds.SeriesInstanceUID = generate_uid()
    ds.PatientID = patient_id
    ds.PatientName = "Jpeg^Joe"
    ds.StudyDate = "20230301"
    ds.StudyTime = "080000"
    ds.Modality = "OT"
    ds.SeriesNumber = 1
    ds.InstanceNumber = 1
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.Rows, ds.Columns = rows, columns
    ds.BitsAllocated = ds.BitsStored = 8
    ds.HighBit = 7
    ds.PixelRepresentation = 0
    ds.PixelData = encapsulate([buf.getvalue()])
    ds["PixelData"].VR = "OB"
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = ds.SOPClassUID
    meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    meta.TransferSyntaxUID = JPEGBaseline8Bit
    ds.file_meta = meta
    out = io.BytesIO()
    ds.save_as(out, enforce_file_format=True)
    return out.getvalue()


def write(dirpath: Path, datas: list[bytes]) -> list[Path]:
    dirpath.mkdir(parents=True, exist_ok=True)
    paths = []
    for i, data in enumerate(datas):
        p = dirpath / f"{i:04d}.dcm"
        p.write_bytes(data)
        paths.append(p)
    return paths


def read_dir(dirpath: Path) -> list[pydicom.Dataset]:
    return [pydicom.dcmread(p) for p in sorted(dirpath.iterdir()) if p.is_file()]
