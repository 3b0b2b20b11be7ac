"""DICOMweb through the same authorization as FHIR: scopes on ImagingStudy, the patient compartment."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import pytest

from medcloud.security.oauth.tokens import issue_access_token

sys.path.insert(0, str(Path(__file__).parents[2] / "imaging"))
from _factory import instance  # noqa: E402
from _http import stow, value  # noqa: E402

STUDY_A, STUDY_B = "1.2.826.0.1.3680043.8.498.1001", "1.2.826.0.1.3680043.8.498.1002"


@pytest.fixture
def token(oauth_services: Any, make_client: Any) -> Any:
    client = make_client("system/*.cruds")

    def mint(scope: str, patient: str | None = None) -> dict[str, str]:
        t, _ = issue_access_token(oauth_services.db, oauth_services.settings, subject="tester",
                                  client_id=client.client_id, scope=scope, patient=patient)
        return {"Authorization": f"Bearer {t}"}

    return mint


@pytest.fixture
def two_studies(web: Any, token: Any) -> dict[str, str]:
    admin = token("system/*.cruds")
    for study, pid in ((STUDY_A, "PID-A"), (STUDY_B, "PID-B")):
        r = stow(web, [instance(study=study, patient_id=pid, patient_name=f"Doe^{pid}")], headers=admin)
        assert r.status_code == 200, r.text
    ids = {}
    for pid in ("PID-A", "PID-B"):
        b = web.get("/fhir/Patient", params={"identifier": f"urn:medcloud:dicom:patient-id|{pid}"}, headers=admin).json()
        ids[pid] = b["entry"][0]["resource"]["id"]
    return ids


def _studies(web: Any, headers: dict[str, str]) -> Any:
    return web.get("/dicomweb/studies", headers={**headers, "Accept": "application/dicom+json"})


def test_patient_scope_sees_its_own_studies_only(web: Any, token: Any, two_studies: dict[str, str]) -> None:
    me = token("launch/patient patient/*.rs", patient=two_studies["PID-A"])
    r = _studies(web, me)
    assert r.status_code == 200 and [value(s, "0020000D") for s in r.json()] == [STUDY_A]
    assert web.get(f"/dicomweb/studies/{STUDY_A}/metadata", headers=me).status_code == 200
    for path in (f"/dicomweb/studies/{STUDY_B}", f"/dicomweb/studies/{STUDY_B}/metadata",
                 f"/dicomweb/studies/{STUDY_B}/series"):
        assert web.get(path, headers=me).status_code == 404, path
    # limit/offset page over what the principal sees: nothing hidden behind an offset
    assert _studies(web, me).json() == web.get("/dicomweb/studies", params={"limit": "5"},
                                               headers={**me, "Accept": "application/dicom+json"}).json()
    assert web.get("/dicomweb/series", params={"StudyInstanceUID": STUDY_B}, headers=me).json() in ([], None)
    # read-only, patient-confined: no upload, no delete
    assert stow(web, [instance(patient_id="PID-A")], headers=me).status_code == 404
    assert web.delete(f"/dicomweb/studies/{STUDY_A}", headers=me).status_code == 404


def test_scopes_on_imaging_study_decide(web: Any, token: Any, two_studies: dict[str, str]) -> None:
    reader = token("system/ImagingStudy.rs")
    assert {value(s, "0020000D") for s in _studies(web, reader).json()} == {STUDY_A, STUDY_B}
    assert stow(web, [instance()], headers=reader).status_code == 404
    assert web.delete(f"/dicomweb/studies/{STUDY_B}", headers=reader).status_code == 404
    other = token("system/Patient.rs")
    assert _studies(web, other).status_code == 404
    assert web.get(f"/dicomweb/studies/{STUDY_A}/metadata", headers=other).status_code == 404
    writer = token("system/ImagingStudy.cruds")
    assert web.delete(f"/dicomweb/studies/{STUDY_B}", headers=writer).status_code == 204
    assert web.get("/dicomweb/studies").status_code == 401  # no token at all
