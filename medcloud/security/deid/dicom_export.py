"""De-identified DICOM out of the archive, or out of a folder of Part-10 files, into a folder.

Used by ``medcloud dicom export --deid`` and ``medcloud dicom deid``. Instances are read through
the archive's blob store exactly as WADO-RS reads them (so encryption at rest is undone the same
way), de-identified one at a time by ``deid/dicom.py`` and written as
``OUT/<study>/<series>/<instance>.dcm`` under their new UIDs. Each file is written to a temporary
name and renamed when complete, so the folder never holds a half-written file; an instance that
fails (not DICOM, burned-in text refused, unreadable blob) is reported and the others go on.
"""

from __future__ import annotations

import csv
import os
import tempfile
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from sqlalchemy import select

from medcloud.errors import Invalid, MedcloudError
from medcloud.imaging.archive import Archive
from medcloud.security.deid.dicom import DicomResult, deidentify_bytes
from medcloud.security.deid.policy import DeidPolicy
from medcloud.storage.imaging_schema import dicom_patients, dicom_studies

MAX_FILE = 2 * 1024 * 1024 * 1024


@dataclass(frozen=True, slots=True)
class Outcome:
    source: str  # a path, or study/series/instance of the archive
    target: Path | None = None
    error: str | None = None
    masked: bool = False
    linked: bool = False


@dataclass
class Report:
    outcomes: list[Outcome] = field(default_factory=list)

    @property
    def written(self) -> list[Outcome]:
        return [o for o in self.outcomes if o.error is None]

    @property
    def failed(self) -> list[Outcome]:
        return [o for o in self.outcomes if o.error is not None]


def export_archive(archive: Archive, out_dir: Path, policy: DeidPolicy, *, studies: Iterable[str] = (),
                   patient: str | None = None, on_item: Callable[[Outcome], None] | None = None) -> Report:
    """De-identify the named studies (and/or every study of PatientID ``patient``; all if neither)."""
    wanted = list(dict.fromkeys(studies))
    with archive.db.read() as conn:
        links = {r.patient_id: r.fhir_id for r in conn.execute(
            select(dicom_patients.c.patient_id, dicom_patients.c.fhir_id)
            .where(dicom_patients.c.fhir_id.is_not(None))) if r.patient_id}
        if patient is not None or not wanted:
            q = select(dicom_studies.c.study_uid).join(dicom_patients, dicom_patients.c.pk == dicom_studies.c.patient_pk)
            if patient is not None:
                q = q.where(dicom_patients.c.patient_id == patient)
            found = list(conn.execute(q.order_by(dicom_studies.c.pk)).scalars())
            if patient is not None and not found:
                raise Invalid(f"no study of PatientID {patient!r} is stored")
            wanted += [s for s in found if s not in wanted]
    if not wanted:
        raise Invalid("the archive holds no study")
    report = Report()
    out_dir.mkdir(parents=True, exist_ok=True)
    for study in wanted:
        try:
            refs = archive.instances(study)
        except MedcloudError as e:
            _note(report, Outcome(study, error=e.message), on_item)
            continue
        for ref in refs:
            where = f"{ref.study_uid}/{ref.series_uid}/{ref.sop_uid}"
            try:
                data = archive.blobs.read(ref.blob_key)
            except (OSError, MedcloudError) as e:
                _note(report, Outcome(where, error=f"cannot read the stored instance: {e}"), on_item)
                continue
            _note(report, _one(where, data, out_dir, policy, links.get), on_item)
    return report


def deidentify_paths(inputs: list[Path], out_dir: Path, policy: DeidPolicy, *,
                     patient_map: dict[str, str] | None = None,
                     on_item: Callable[[Outcome], None] | None = None) -> Report:
    """De-identify every file under ``inputs`` (folders walked recursively, hidden files skipped)."""
    files = list(_expand(inputs))
    if not files:
        raise Invalid("no input files")
    out = out_dir.resolve()
    if any(out.is_relative_to(p.resolve()) for p in inputs if p.is_dir()) \
            or any(f.resolve().is_relative_to(out) for f in files):
        raise Invalid(f"{out_dir}: the output folder must not be inside an input folder (nor hold an input)")
    out_dir.mkdir(parents=True, exist_ok=True)
    report = Report()
    lookup = (patient_map or {}).get
    for f in files:
        try:
            if f.stat().st_size > MAX_FILE:
                raise Invalid(f"larger than {MAX_FILE} bytes")
            data = f.read_bytes()
        except (OSError, Invalid) as e:
            _note(report, Outcome(str(f), error=getattr(e, "message", None) or str(e)), on_item)
            continue
        _note(report, _one(str(f), data, out_dir, policy, lookup), on_item)
    return report


def read_patient_map(path: Path) -> dict[str, str]:
    """A CSV of ``PatientID,FHIR Patient id`` rows (a header row is allowed): the date-shift keys."""
    try:
        with open(path, newline="") as f:
            rows = [r for r in csv.reader(f) if r]
    except (OSError, UnicodeDecodeError, csv.Error) as e:
        raise Invalid(f"cannot read the patient map {path}: {e}") from None
    if rows and [c.strip().lower() for c in rows[0][:2]] == ["patientid", "fhir_id"]:
        rows = rows[1:]
    if any(len(r) != 2 or not r[0].strip() or not r[1].strip() for r in rows):
        raise Invalid(f"{path}: every row must be PatientID,FHIR Patient id")
    return {r[0].strip(): r[1].strip() for r in rows}


def _expand(inputs: list[Path]) -> Iterator[Path]:
    for p in inputs:
        if p.is_dir():
            yield from sorted(x for x in p.rglob("*") if x.is_file()
                              and not any(part.startswith(".") for part in x.relative_to(p).parts))
        elif p.is_file():
            yield p
        else:
            raise Invalid(f"{p}: no such file or directory")


def _one(where: str, data: bytes, out_dir: Path, policy: DeidPolicy,
         fhir_patient: Callable[[str], str | None]) -> Outcome:
    try:
        result = deidentify_bytes(data, policy, fhir_patient=fhir_patient)
        target = _write(out_dir, result)
    except MedcloudError as e:
        return Outcome(where, error=e.message)
    except Exception as e:  # noqa: BLE001 - a malformed instance pydicom cannot write must not stop the run
        return Outcome(where, error=f"{type(e).__name__}: {e}")
    return Outcome(where, target, masked=result.masked, linked=result.linked)


def _write(out_dir: Path, r: DicomResult) -> Path:
    folder = out_dir / r.study_uid / (r.series_uid or "no-series")
    folder.mkdir(parents=True, exist_ok=True)
    target = folder / f"{r.sop_uid}.dcm"
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=f".{r.sop_uid}.", suffix=".part")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(r.data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return target


def _note(report: Report, outcome: Outcome, on_item: Callable[[Outcome], None] | None) -> None:
    report.outcomes.append(outcome)
    if on_item is not None:
        on_item(outcome)
