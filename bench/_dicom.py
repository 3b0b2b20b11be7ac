"""Shared by the imaging benchmarks (bench/dimse.py, bench/imaging.py): deterministic CT instances,
free ports, and Orthanc as the side-by-side peer.

Every UID is derived from a key string (``generate_uid(entropy_srcs=[key])``), so a set written
today is byte-identical to one written tomorrow and the cache under bench/data/ can be trusted.
Orthanc runs with its own JSON config (own storage dir, free ports on 127.0.0.1, default SQLite
index) in its own process group, so stopping it never touches a system Orthanc.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import IO

import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid

ROOT = Path(__file__).resolve().parent.parent
DATA = ROOT / "bench" / "data"
RESULTS = ROOT / "bench" / "results"
ORTHANC_INSTALL = "apt-get update && apt-get install -y orthanc orthanc-dicomweb  (or: make orthanc)"
_COMPLETE = ".complete"  # written last: a set interrupted half-way is regenerated, not trusted


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def uid(key: str) -> str:
    return str(generate_uid(entropy_srcs=[key]))


# -- deterministic instances ------------------------------------------------------------------------


@dataclass(frozen=True)
class CtInstance:
    """The header of one generated CT image; the pixels are a fixed ramp of the set's size."""

    sop_uid: str
    study_uid: str
    series_uid: str
    patient_id: str
    patient_name: str
    study_date: str  # YYYYMMDD
    accession: str
    study_id: str
    series_number: int
    instance_number: int
    description: str = "bench"


def pixels(size: int) -> bytes:
    return (np.add.outer(np.arange(size), np.arange(size)) % 4096).astype(np.uint16).tobytes()


def ct_dataset(spec: CtInstance, size: int, pixel_data: bytes) -> Dataset:
    """A Part-10-ready CT Image Storage dataset (16-bit, 12 stored, MONOCHROME2, Explicit VR LE)."""
    ds = Dataset()
    ds.SOPClassUID = CTImageStorage
    ds.SOPInstanceUID = spec.sop_uid
    ds.StudyInstanceUID = spec.study_uid
    ds.SeriesInstanceUID = spec.series_uid
    ds.PatientID = spec.patient_id
    ds.PatientName = spec.patient_name
    ds.PatientBirthDate = "19700101"
    ds.PatientSex = "O"
    ds.StudyDate = spec.study_date
    ds.StudyTime = "120000"
    ds.AccessionNumber = spec.accession
    ds.StudyDescription = spec.description
    ds.StudyID = spec.study_id
    ds.ReferringPhysicianName = ""
    ds.Modality = "CT"
    ds.SeriesNumber = spec.series_number
    ds.InstanceNumber = spec.instance_number
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.Rows = ds.Columns = size
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
    ds.PixelData = pixel_data
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = ds.SOPClassUID
    meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta = meta
    return ds


def write_set(out: Path, specs: Iterable[CtInstance], size: int, expected: int) -> Path:
    """Write ``specs`` as ``out/000000.dcm``...; reuse ``out`` when a complete set of ``expected`` is there."""
    if (out / _COMPLETE).exists() and len(list(out.glob("*.dcm"))) == expected:
        return out
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    data = pixels(size)
    for i, spec in enumerate(specs):
        ct_dataset(spec, size, data).save_as(out / f"{i:06d}.dcm", enforce_file_format=True)
    (out / _COMPLETE).write_text("")
    return out


def dimse_specs(n: int, size: int) -> Iterable[CtInstance]:
    """bench/dimse.py's layout: 100 instances per series, 500 per study, 10 studies per patient."""
    for i in range(n):
        study, series = i // 500, i // 100
        yield CtInstance(
            sop_uid=uid(f"bench-dimse-{size}-{n}-sop-{i}"),
            study_uid=uid(f"bench-dimse-{size}-{n}-study-{study}"),
            series_uid=uid(f"bench-dimse-{size}-{n}-series-{series}"),
            patient_id=f"BENCH-{study // 10:04d}",
            patient_name=f"Bench^Patient{study // 10}",
            study_date=f"2024{1 + study % 12:02d}15",
            accession=f"ACC{study:06d}",
            study_id=str(study),
            series_number=series % 5 + 1,
            instance_number=i % 100 + 1,
        )


def generate(n: int, size: int) -> Path:
    """N CT instances of size x size in bench/dimse.py's layout, cached under bench/data/dimse/."""
    out = DATA / "dimse" / f"ct{size}-{n}"
    if out.exists() and not (out / _COMPLETE).exists() and len(list(out.glob("*.dcm"))) == n:
        (out / _COMPLETE).write_text("")  # a set from before the marker existed (same bytes)
    return write_set(out, dimse_specs(n, size), size, n)


# -- processes --------------------------------------------------------------------------------------


def wait_port(port: int, proc: subprocess.Popen[bytes], timeout: float = 60) -> None:
    args = proc.args
    name = Path(str(args[0] if isinstance(args, list | tuple) else args)).name
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{name} exited with {proc.returncode}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return
        except OSError:
            time.sleep(0.1)
    raise RuntimeError(f"{name} did not listen on {port}")


def stop(proc: subprocess.Popen[bytes]) -> None:
    """SIGTERM the process group of ``proc`` (started with ``start_new_session``), SIGKILL after 20 s."""
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


# -- Orthanc ----------------------------------------------------------------------------------------


def orthanc_executable() -> str | None:
    return shutil.which("Orthanc")


def dicomweb_plugin() -> Path | None:
    """The DICOMweb plugin the Debian package ``orthanc-dicomweb`` installed (None if it is not)."""
    try:
        listed = subprocess.run(["dpkg", "-L", "orthanc-dicomweb"], capture_output=True, text=True,
                                timeout=10).stdout.splitlines()
    except (OSError, subprocess.TimeoutExpired):
        listed = []
    candidates = [Path(p) for p in listed if Path(p).name.startswith("libOrthancDicomWeb.so")]
    candidates += [Path("/usr/share/orthanc/plugins/libOrthancDicomWeb.so"),
                   *sorted(Path("/usr/lib/orthanc").glob("libOrthancDicomWeb.so*"))]
    return next((p for p in candidates if p.is_file()), None)


def orthanc_version() -> str | None:
    try:
        out = subprocess.run(["dpkg-query", "-W", "-f=${Version}", "orthanc"], capture_output=True, text=True,
                             timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return out.stdout.strip() or None


class Orthanc:
    """A fresh Orthanc on free ports with its default SQLite index; ``with Orthanc(work) as o: ...``.

    ``dicomweb=True`` loads the DICOMweb plugin at ``/dicom-web/`` (``base`` is its URL). Other
    plugin settings stay at their defaults, so the figures are those of a stock install.
    """

    def __init__(self, work: Path, *, dicomweb: bool = False):
        exe = orthanc_executable()
        if exe is None:
            raise RuntimeError(f"Orthanc is not installed: {ORTHANC_INSTALL}")
        self.exe = exe
        self.store = work / "orthanc"
        self.dicom_port, self.http_port = free_port(), free_port()
        plugins: list[str] = []
        if dicomweb:
            plugin = dicomweb_plugin()
            if plugin is None:
                raise RuntimeError(f"the Orthanc DICOMweb plugin is not installed: {ORTHANC_INSTALL}")
            plugins.append(str(plugin))
        self.config: dict[str, object] = {
            "Name": "bench", "StorageDirectory": str(self.store / "storage"),
            "IndexDirectory": str(self.store / "index"), "DicomAet": "ORTHANC", "DicomPort": self.dicom_port,
            "HttpPort": self.http_port, "RemoteAccessAllowed": False, "AuthenticationEnabled": False,
            "DicomCheckCalledAet": False, "Plugins": plugins, "StorageCompression": False,
            "DicomAlwaysAllowStore": True,
        }
        if dicomweb:
            self.config["DicomWeb"] = {"Enable": True, "Root": "/dicom-web/", "EnableWado": False}
        self.proc: subprocess.Popen[bytes] | None = None
        self._log: IO[bytes] | None = None
        self.log_path = work / "orthanc.log"

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.http_port}/dicom-web"

    def start(self) -> None:
        self.store.mkdir(parents=True, exist_ok=True)
        cfg = self.store / "orthanc.json"
        cfg.write_text(json.dumps(self.config, indent=2))
        self._log = open(self.log_path, "ab")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen([self.exe, str(cfg)], stdout=self._log, stderr=subprocess.STDOUT,
                                     start_new_session=True)
        wait_port(self.dicom_port, self.proc)
        wait_port(self.http_port, self.proc)

    def stop(self) -> None:
        if self.proc is not None:
            stop(self.proc)
            self.proc = None
        if self._log is not None:
            self._log.close()
            self._log = None

    def __enter__(self) -> Orthanc:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
