"""Each STOW-RS request creates or updates one FHIR ImagingStudy per study, linked to its Patient."""

from __future__ import annotations

from _factory import instance
from _http import stow
from pydicom.uid import generate_uid

SYSTEM = "urn:medcloud:dicom:patient-id"


def _study(dw, pid: str = "MRN-7"):
    st, se1, se2 = generate_uid(), generate_uid(), generate_uid()
    datas = [instance(study=st, series=se1, patient_id=pid, patient_name="Garcia^Maria^Luisa", birth_date="19750304",
                      sex="F", instance_number=n) for n in (1, 2)]
    datas.append(instance(study=st, series=se2, modality="MR", patient_id=pid, patient_name="Garcia^Maria^Luisa",
                          birth_date="19750304", series_number=2))
    assert stow(dw, datas).status_code == 200
    return st, se1, se2, datas


def test_stow_creates_one_imaging_study_linked_to_a_new_patient(dw) -> None:
    st, se1, se2, _ = _study(dw)
    r = dw.get(f"/fhir/ImagingStudy/{st}")
    assert r.status_code == 200, r.text
    res = r.json()
    assert res["meta"]["versionId"] == "1"  # one update for the whole request, not one per instance
    assert res["status"] == "available"
    assert {"system": "urn:dicom:uid", "value": f"urn:oid:{st}"} in res["identifier"]
    assert res["numberOfSeries"] == 2 and res["numberOfInstances"] == 3
    assert res["started"].startswith("2024-01-15T10:15:00")
    assert {m["code"] for m in res["modality"]} == {"CT", "MR"}
    assert all(m["system"] == "http://dicom.nema.org/resources/ontology/DCM" for m in res["modality"])
    s1 = next(s for s in res["series"] if s["uid"] == se1)
    assert s1["numberOfInstances"] == 2 and [i["number"] for i in s1["instance"]] == [1, 2]
    assert s1["instance"][0]["sopClass"]["code"] == "urn:oid:1.2.840.10008.5.1.4.1.1.2"
    patient = dw.get(f"/fhir/{res['subject']['reference']}").json()
    assert patient["identifier"] == [{"system": SYSTEM, "value": "MRN-7"}]
    assert patient["name"][0]["family"] == "Garcia" and patient["name"][0]["given"] == ["Maria", "Luisa"]
    assert patient["birthDate"] == "1975-03-04" and patient["gender"] == "female"


def test_known_patient_is_found_by_identifier_not_duplicated(dw) -> None:
    created = dw.post("/fhir/Patient", json={"resourceType": "Patient",
                                             "identifier": [{"system": SYSTEM, "value": "MRN-42"}]})
    assert created.status_code == 201
    pid = created.json()["id"]
    st, *_ = _study(dw, pid="MRN-42")
    st2, *_ = _study(dw, pid="MRN-42")
    for uid in (st, st2):
        assert dw.get(f"/fhir/ImagingStudy/{uid}").json()["subject"]["reference"] == f"Patient/{pid}"
    bundle = dw.get("/fhir/Patient", params={"identifier": f"{SYSTEM}|MRN-42"}).json()
    assert bundle.get("total", len(bundle.get("entry", []))) == 1


def test_more_instances_later_update_the_same_imaging_study(dw) -> None:
    st, se1, _, _ = _study(dw)
    assert stow(dw, [instance(study=st, series=se1, patient_id="MRN-7", instance_number=3)]).status_code == 200
    res = dw.get(f"/fhir/ImagingStudy/{st}").json()
    assert res["meta"]["versionId"] == "2" and res["numberOfInstances"] == 4


def test_patient_everything_includes_the_imaging_study(dw) -> None:
    st, *_ = _study(dw, pid="MRN-9")
    subject = dw.get(f"/fhir/ImagingStudy/{st}").json()["subject"]["reference"]
    bundle = dw.get(f"/fhir/{subject}/$everything").json()
    kinds = {(e["resource"]["resourceType"], e["resource"]["id"]) for e in bundle["entry"]}
    assert ("ImagingStudy", st) in kinds


def test_delete_keeps_the_imaging_study_consistent(dw) -> None:
    st, se1, se2, _ = _study(dw)
    assert dw.delete(f"/dicomweb/studies/{st}/series/{se2}").status_code == 204
    res = dw.get(f"/fhir/ImagingStudy/{st}").json()
    assert res["numberOfSeries"] == 1 and res["numberOfInstances"] == 2
    assert [m["code"] for m in res["modality"]] == ["CT"]
    assert [s["uid"] for s in res["series"]] == [se1]
    assert dw.delete(f"/dicomweb/studies/{st}").status_code == 204
    assert dw.get(f"/fhir/ImagingStudy/{st}").status_code == 410


def test_concurrent_studies_of_a_new_patient_make_one_patient(dw, archive) -> None:
    from concurrent.futures import ThreadPoolExecutor

    batches = [[instance(patient_id="MRN|1,x", patient_name="Lee^Ann")] for _ in range(4)]
    with ThreadPoolExecutor(4) as pool:
        results = [r for rs in pool.map(archive.store_many, batches) for r in rs]
    assert all(r.stored for r in results)
    subjects = {dw.get(f"/fhir/ImagingStudy/{r.study_uid}").json()["subject"]["reference"] for r in results}
    assert len(subjects) == 1
