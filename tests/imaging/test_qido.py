"""QIDO-RS (PS3.18 §10.6) at study, series and instance level, with PS3.4 C.2.2.2 matching."""

from __future__ import annotations

import pytest
from _factory import instance
from _http import stow, value
from pydicom.uid import generate_uid

A, B, C = "1.2.826.0.1.1", "1.2.826.0.1.2", "1.2.826.0.1.3"


@pytest.fixture
def loaded(dw):
    datas = [
        instance(study=A, series=A + ".1", patient_id="P1", patient_name="Smith^John", study_date="20200105",
                 study_time="083000", accession="ACC-A", instance_number=1),
        instance(study=A, series=A + ".1", patient_id="P1", patient_name="Smith^John", study_date="20200105",
                 study_time="083000", accession="ACC-A", instance_number=2),
        instance(study=A, series=A + ".2", patient_id="P1", patient_name="Smith^John", study_date="20200105",
                 study_time="083000", accession="ACC-A", modality="MR", series_number=2),
        instance(study=B, series=B + ".1", patient_id="P2", patient_name="Doe^Jane", study_date="20210610",
                 study_time="141500", accession="ACC-B", modality="MR", study_description="MR brain"),
        instance(study=C, series=C + ".1", patient_id="P3", patient_name="Smithson^Anna", study_date="20221231",
                 study_time="235959", accession="ACC-C"),
    ]
    assert stow(dw, datas).status_code == 200
    return dw


def _studies(client, **params) -> list[str]:
    r = client.get("/dicomweb/studies", params=params, headers={"Accept": "application/dicom+json"})
    assert r.status_code == 200, r.text
    return sorted(value(s, "0020000D") for s in r.json())


def test_study_search_returns_the_required_attributes(loaded) -> None:
    r = loaded.get("/dicomweb/studies", params={"StudyInstanceUID": A})
    assert r.headers["content-type"].startswith("application/dicom+json")
    [s] = r.json()
    assert value(s, "00100010") == {"Alphabetic": "Smith^John"}
    assert value(s, "00100020") == "P1"
    assert s["00080061"]["Value"] == ["CT", "MR"]
    assert value(s, "00201206") == 2 and value(s, "00201208") == 3
    assert value(s, "00080020") == "20200105" and value(s, "00080030") == "083000"
    for tag in ("00080050", "00080090", "00100030", "00100040", "00200010", "00081030"):
        assert tag in s


@pytest.mark.parametrize(("params", "expected"), [
    ({"PatientID": "P2"}, [B]),
    ({"00100020": "P2"}, [B]),
    ({"StudyInstanceUID": f"{A},{C}"}, [A, C]),
    ({"PatientName": "Smith*"}, [A, C]),
    ({"PatientName": "smith^john"}, [A]),
    ({"PatientName": "Sm?th^*"}, [A]),
    ({"PatientName": "jan"}, []),
    ({"PatientName": "jan", "fuzzymatching": "true"}, [B]),
    ({"StudyDate": "20200105"}, [A]),
    ({"StudyDate": "20210101-20221231"}, [B, C]),
    ({"StudyDate": "-20210610"}, [A, B]),
    ({"StudyDate": "20210611-"}, [C]),
    ({"StudyTime": "14"}, [B]),
    ({"StudyTime": "1400-2359"}, [B, C]),
    ({"ModalitiesInStudy": "MR"}, [A, B]),
    ({"ModalitiesInStudy": "CT"}, [A, C]),
    ({"AccessionNumber": "ACC-B,ACC-C"}, [B, C]),
    ({"StudyDescription": "MR*"}, [B]),
    ({"PatientID": "P1", "StudyDate": "20210101-"}, []),
    ({"PatientName": ""}, [A, B, C]),  # universal matching
])
def test_study_matching(loaded, params, expected) -> None:
    assert _studies(loaded, **params) == sorted(expected)


def test_limit_and_offset_page_deterministically(loaded) -> None:
    all_ = [value(s, "0020000D") for s in loaded.get("/dicomweb/studies").json()]
    page1 = [value(s, "0020000D") for s in loaded.get("/dicomweb/studies", params={"limit": 2}).json()]
    page2 = [value(s, "0020000D") for s in
             loaded.get("/dicomweb/studies", params={"limit": 2, "offset": 2}).json()]
    assert page1 + page2 == all_ and len(page1) == 2


def test_series_of_a_study_and_all_series(loaded) -> None:
    r = loaded.get(f"/dicomweb/studies/{A}/series")
    series = r.json()
    assert sorted(value(s, "0020000E") for s in series) == [A + ".1", A + ".2"]
    s1 = next(s for s in series if value(s, "0020000E") == A + ".1")
    assert value(s1, "00080060") == "CT" and value(s1, "00201209") == 2 and value(s1, "00200011") == 1
    r = loaded.get("/dicomweb/series", params={"Modality": "MR", "PatientID": "P2"})
    [only] = r.json()
    assert value(only, "0020000D") == B and value(only, "00100020") == "P2"  # study attributes come along


def test_instances_at_every_path(loaded) -> None:
    r = loaded.get(f"/dicomweb/studies/{A}/series/{A}.1/instances")
    insts = r.json()
    assert [value(i, "00200013") for i in insts] == [1, 2]
    i = insts[0]
    assert value(i, "00280010") == 8 and value(i, "00280011") == 8 and value(i, "00280100") == 16
    assert value(i, "00083002") == "1.2.840.10008.1.2.1"
    assert value(i, "00080016") == "1.2.840.10008.5.1.4.1.1.2"
    assert len(loaded.get(f"/dicomweb/studies/{A}/instances").json()) == 3
    assert len(loaded.get("/dicomweb/instances", params={"PatientID": "P1"}).json()) == 3
    assert len(loaded.get("/dicomweb/instances", params={"InstanceNumber": "2"}).json()) == 1


def test_includefield_adds_attributes_from_the_stored_instances(loaded) -> None:
    [s] = loaded.get("/dicomweb/studies", params={"StudyInstanceUID": B, "includefield": "00280100,WindowCenter"}).json()
    assert "00281050" in s  # attributes outside the index come from a representative instance of the study
    [i] = loaded.get(f"/dicomweb/studies/{B}/instances", params={"includefield": "WindowCenter"}).json()
    assert i["00281050"]["Value"] == [1000] or i["00281050"]["Value"] == ["1000"]
    [i] = loaded.get(f"/dicomweb/studies/{B}/instances", params={"includefield": "all"}).json()
    assert "00281051" in i and "7FE00010" not in i
    [s] = loaded.get("/dicomweb/studies", params={"StudyInstanceUID": B, "includefield": "all"}).json()
    assert value(s, "00100020") == "P2"


def test_unknown_attributes_are_ignored_with_a_warning_header(loaded) -> None:
    r = loaded.get("/dicomweb/studies", params={"ProtocolName": "x", "PatientID": "P2"})
    assert r.status_code == 200 and len(r.json()) == 1
    assert "299" in r.headers["warning"]


@pytest.mark.parametrize("params", [{"StudyDate": "2020-01-01x"}, {"limit": "-1"}, {"includefield": "NoSuchKeyword"},
                                    {"SeriesNumber": "abc"}])
def test_malformed_query_values_are_400(loaded, params) -> None:
    r = loaded.get("/dicomweb/series" if "SeriesNumber" in params else "/dicomweb/studies", params=params)
    assert r.status_code == 400
    assert r.json()["category"] == "invalid"


def test_empty_result_is_200_with_an_empty_array(dw) -> None:
    r = dw.get("/dicomweb/studies", params={"PatientID": generate_uid()})
    assert r.status_code == 200 and r.json() == []


def test_accept_of_another_media_type_is_406(dw) -> None:
    assert dw.get("/dicomweb/studies", headers={"Accept": "application/dicom+xml"}).status_code == 406
