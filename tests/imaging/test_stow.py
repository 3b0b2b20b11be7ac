"""STOW-RS (PS3.18 §10.5): per-instance outcomes in the response dataset and the 200/202/409 rule."""

from __future__ import annotations

from _factory import instance
from _http import stow, value
from pydicom.uid import generate_uid


def test_all_stored_answers_200_with_referenced_sop_sequence(dw) -> None:
    st = generate_uid()
    r = stow(dw, [instance(study=st), instance(study=st)])
    assert r.status_code == 200, r.text
    assert r.headers["content-type"].startswith("application/dicom+json")
    refs = r.json()["00081199"]["Value"]
    assert len(refs) == 2
    assert value(refs[0], "00081150") == "1.2.840.10008.5.1.4.1.1.2"
    assert value(refs[0], "00081190").startswith(f"http://testserver/dicomweb/studies/{st}/series/")
    assert "00081198" not in r.json()


def test_some_failed_answers_202_with_failure_reasons(dw) -> None:
    good = instance()
    r = stow(dw, [good, b"garbage" * 50, instance(drop=("StudyInstanceUID",))])
    assert r.status_code == 202
    body = r.json()
    assert len(body["00081199"]["Value"]) == 1
    reasons = [value(f, "00081197") for f in body["00081198"]["Value"]]
    assert reasons == [0xC000, 0xA900]


def test_nothing_stored_answers_409(dw) -> None:
    data = instance()
    assert stow(dw, [data]).status_code == 200
    r = stow(dw, [data])
    assert r.status_code == 409
    failed = r.json()["00081198"]["Value"][0]
    assert value(failed, "00081197") == 0x0111
    assert value(failed, "00081155")


def test_study_in_the_path_refuses_other_studies(dw) -> None:
    st = generate_uid()
    r = stow(dw, [instance(study=st), instance()], path=f"/dicomweb/studies/{st}")
    assert r.status_code == 202
    assert value(r.json(), "00081190") == f"http://testserver/dicomweb/studies/{st}"
    assert value(r.json()["00081198"]["Value"][0], "00081197") == 0xA900


def test_wrong_content_type_is_415_with_a_json_body(dw) -> None:
    r = dw.post("/dicomweb/studies", content=instance(), headers={"Content-Type": "application/dicom"})
    assert r.status_code == 415
    assert r.json()["category"] == "unsupported-media"
    # dicom+json / dicom+xml are the metadata + bulk data form (test_stow_metadata.py); other types are 415
    r = dw.post("/dicomweb/studies", content=b"{}",
                headers={"Content-Type": 'multipart/related; type="application/pdf"; boundary=x'})
    assert r.status_code == 415


def test_multipart_without_its_boundary_is_400(dw) -> None:
    r = dw.post("/dicomweb/studies", content=b"no parts here",
                headers={"Content-Type": 'multipart/related; type="application/dicom"; boundary=abc'})
    assert r.status_code == 400


def test_part_of_another_type_fails_alone(dw) -> None:
    r = stow(dw, [b"{}"], part_type="application/json")
    assert r.status_code == 409
    assert value(r.json()["00081198"]["Value"][0], "00081197") == 0xC000


def test_routes_built_from_the_app_services_serve_stow_and_qido(services) -> None:
    """The wiring create_app will use: ``routes(services)`` builds the archive on the app's services."""
    from starlette.applications import Starlette
    from starlette.testclient import TestClient

    from medcloud.fhir import http as fhir_http
    from medcloud.imaging.dicomweb import routes

    app = Starlette(routes=[*fhir_http.routes(services.fhir), *routes(services)])
    with TestClient(app) as client:
        st = generate_uid()
        assert stow(client, [instance(study=st)]).status_code == 200
        assert len(client.get("/dicomweb/studies", params={"StudyInstanceUID": st}).json()) == 1
        assert client.get(f"/fhir/ImagingStudy/{st}").status_code == 200
