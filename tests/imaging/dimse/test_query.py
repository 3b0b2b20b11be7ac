"""C-FIND at every level of both information models, with dcmtk findscu and our own SCU as peers."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import _factory
import pydicom
import pytest
from _peers import SCU_AET, run
from pydicom.uid import generate_uid
from typer.testing import CliRunner

from medcloud.config import RemoteAE
from medcloud.imaging.archive import Archive
from medcloud.imaging.dimse import scu
from medcloud.imaging.dimse.scp import DimseServer

pytestmark = pytest.mark.usefixtures("dcmtk")


@pytest.fixture
def data(archive: Archive) -> dict[str, Any]:
    """Patient A (2 studies: CT+MR in 2024, MR in 2023) and patient B (1 CT study in 2024)."""
    s1, s2, s3 = generate_uid(), generate_uid(), generate_uid()
    se1, se2 = generate_uid(), generate_uid()
    i1, i2 = generate_uid(), generate_uid()
    a = {"patient_id": "PID-A", "patient_name": "Smith^John"}
    b = {"patient_id": "PID-B", "patient_name": "Jones^Mary", "birth_date": "19700304", "sex": "F"}
    items = [
        _factory.instance(study=s1, series=se1, sop=i1, instance_number=1, study_date="20240115", **a),
        _factory.instance(study=s1, series=se1, sop=i2, instance_number=2, study_date="20240115", **a),
        _factory.instance(study=s1, series=se2, modality="MR", series_number=2, study_date="20240115", **a),
        _factory.instance(study=s2, modality="MR", study_date="20230610", study_time="143000", accession="ACC-2",
                          **a),
        _factory.instance(study=s3, study_date="20240301", accession="ACC-3", **b),
    ]
    assert all(r.stored for r in archive.store_many(items))
    return {"s1": s1, "s2": s2, "s3": s3, "se1": se1, "se2": se2, "i1": i1, "i2": i2}


def findscu(scp: DimseServer, tmp_path: Path, model: str, *keys: str) -> list[pydicom.Dataset]:
    out = tmp_path / f"rsp-{len(list(tmp_path.glob('rsp-*')))}"
    out.mkdir()
    args = [a for k in keys for a in ("-k", k)]
    r = run("findscu", model, "-X", "-od", str(out), "-aet", SCU_AET, "-aec", "MEDCLOUD", "127.0.0.1",
            str(scp.port), *args)
    assert r.returncode == 0, r.stdout + r.stderr
    return [pydicom.dcmread(p) for p in sorted(out.glob("rsp*.dcm"))]


def test_patient_root_patient_level_counts(scp: DimseServer, data: dict[str, Any], tmp_path: Path) -> None:
    (m,) = findscu(scp, tmp_path, "-P", "QueryRetrieveLevel=PATIENT", "PatientName=smi*", "PatientID",
                   "NumberOfPatientRelatedStudies", "NumberOfPatientRelatedInstances")
    assert m.PatientID == "PID-A" and str(m.PatientName) == "Smith^John"
    assert int(m.NumberOfPatientRelatedStudies) == 2 and int(m.NumberOfPatientRelatedInstances) == 4
    assert "StudyInstanceUID" not in m  # only the requested keys come back
    both = findscu(scp, tmp_path, "-P", "QueryRetrieveLevel=PATIENT", "PatientID", "PatientBirthDate")
    assert sorted(x.PatientID for x in both) == ["PID-A", "PID-B"]
    assert [x.PatientBirthDate for x in both if x.PatientID == "PID-B"] == ["19700304"]


def test_study_level_date_ranges_wildcards_uid_lists(scp: DimseServer, data: dict[str, Any],
                                                     tmp_path: Path) -> None:
    for model in ("-P", "-S"):
        r = findscu(scp, tmp_path, model, "QueryRetrieveLevel=STUDY", "PatientID=PID-A", "StudyDate=20240101-",
                    "StudyInstanceUID", "ModalitiesInStudy", "NumberOfStudyRelatedSeries")
        assert [x.StudyInstanceUID for x in r] == [data["s1"]]
        assert sorted(r[0].ModalitiesInStudy) == ["CT", "MR"] and int(r[0].NumberOfStudyRelatedSeries) == 2
    r = findscu(scp, tmp_path, "-S", "QueryRetrieveLevel=STUDY", "StudyDate=-20231231", "StudyTime=1400-1500",
                "StudyInstanceUID", "PatientName", "AccessionNumber")
    assert [(x.StudyInstanceUID, x.AccessionNumber, str(x.PatientName)) for x in r] == \
        [(data["s2"], "ACC-2", "Smith^John")]
    r = findscu(scp, tmp_path, "-S", "QueryRetrieveLevel=STUDY", "PatientName=J?nes*", "StudyInstanceUID")
    assert [x.StudyInstanceUID for x in r] == [data["s3"]]
    r = findscu(scp, tmp_path, "-S", "QueryRetrieveLevel=STUDY", f"StudyInstanceUID={data['s1']}\\{data['s3']}")
    assert sorted(x.StudyInstanceUID for x in r) == sorted([data["s1"], data["s3"]])
    assert findscu(scp, tmp_path, "-S", "QueryRetrieveLevel=STUDY", "PatientID=NOBODY", "StudyInstanceUID") == []


def test_series_and_image_levels(scp: DimseServer, data: dict[str, Any], tmp_path: Path) -> None:
    for model in ("-P", "-S"):
        r = findscu(scp, tmp_path, model, "QueryRetrieveLevel=SERIES", f"StudyInstanceUID={data['s1']}",
                    "Modality=MR", "SeriesInstanceUID", "SeriesNumber", "NumberOfSeriesRelatedInstances")
        assert [(x.SeriesInstanceUID, int(x.SeriesNumber)) for x in r] == [(data["se2"], 2)]
        r = findscu(scp, tmp_path, model, "QueryRetrieveLevel=IMAGE", f"StudyInstanceUID={data['s1']}",
                    f"SeriesInstanceUID={data['se1']}", "SOPInstanceUID", "InstanceNumber", "SOPClassUID")
        assert [(x.SOPInstanceUID, int(x.InstanceNumber)) for x in r] == [(data["i1"], 1), (data["i2"], 2)]
        assert r[0].SOPClassUID == pydicom.uid.CTImageStorage
    r = findscu(scp, tmp_path, "-S", "QueryRetrieveLevel=IMAGE", f"SOPInstanceUID={data['i2']}",
                "StudyInstanceUID", "Rows")
    assert [(x.StudyInstanceUID, int(x.Rows)) for x in r] == [(data["s1"], 8)]


def test_patient_level_in_study_root_fails(scp: DimseServer, data: dict[str, Any], tmp_path: Path) -> None:
    r = run("findscu", "-S", "-v", "-aet", SCU_AET, "-aec", "MEDCLOUD", "127.0.0.1", str(scp.port),
            "-k", "QueryRetrieveLevel=PATIENT", "-k", "PatientID")
    assert "DataSetDoesNotMatchSOPClass" in r.stdout + r.stderr  # 0xA900


def test_our_scu_find_and_cli(scp: DimseServer, data: dict[str, Any], monkeypatch: pytest.MonkeyPatch) -> None:
    peer = RemoteAE(title="MEDCLOUD", host="127.0.0.1", port=scp.port)
    q = scu.identifier("STUDY", ["PatientName=Smith*", "StudyDate=20230101-20231231", "StudyInstanceUID"])
    assert [x.StudyInstanceUID for x in scu.find(SCU_AET, peer, "study", q)] == [data["s2"]]
    from medcloud.cli import app

    r = CliRunner().invoke(app, ["dicom", "find", "--host", "127.0.0.1", "--port", str(scp.port), "--aet", "MEDCLOUD",
                                 "--calling-aet", SCU_AET, "-L", "SERIES", "-k", f"StudyInstanceUID={data['s1']}",
                                 "--json"])
    assert r.exit_code == 0, r.output
    assert data["se1"] in r.stdout and data["se2"] in r.stdout
    bad = CliRunner().invoke(app, ["dicom", "find", "--host", "127.0.0.1", "--port", str(scp.port),
                                   "--calling-aet", SCU_AET, "-k", "NoSuchKeyword=1"])
    assert bad.exit_code == 2 and "NoSuchKeyword" in bad.output
