"""``GET /ai/jobs``: a token that may search DiagnosticReport; jobs of unreadable patients are hidden."""

from __future__ import annotations

import base64

from medcloud.ai.http import visible_jobs
from medcloud.ai.reads import KIND
from medcloud.fhir.exchange import Principal
from medcloud.jobs import JobQueue


def _token(web, make_client, scope: str) -> dict[str, str]:
    c = make_client(scope)
    basic = base64.b64encode(f"{c.client_id}:{c.secret}".encode()).decode()
    r = web.post("/auth/token", data={"grant_type": "client_credentials", "scope": scope},
                 headers={"Authorization": f"Basic {basic}"})
    assert r.status_code == 200, r.text
    return {"Authorization": f"Bearer {r.json()['access_token']}"}


def _jobs(oauth_services) -> JobQueue:
    q = JobQueue(oauth_services.db)
    for patient in ("p1", "p2"):
        q.enqueue(KIND, {"study": f"1.2.3.{patient[-1]}", "model": "m", "version": "1", "patient": patient,
                         "instances": [["1.2", "1.2.1", "1.2.840.10008.5.1.4.1.1.2"]], "key": patient},
                  owner=patient, job_id=f"ai-read-{patient}")
    return q


def test_ai_jobs_need_a_token_and_diagnostic_report_access(web, make_client, oauth_services) -> None:
    _jobs(oauth_services)
    assert web.get("/ai/jobs").status_code == 401
    r = web.get("/ai/jobs", headers=_token(web, make_client, "system/Patient.rs"))
    assert r.status_code == 403 and "DiagnosticReport" in r.text
    r = web.get("/ai/jobs", headers=_token(web, make_client, "system/DiagnosticReport.rs"))
    assert r.status_code == 200
    found = r.json()["jobs"]
    assert sorted(j["patient"] for j in found) == ["p1", "p2"]
    assert found[0]["images"] == 1 and found[0]["model"] == "m"  # (the app's worker may have tried them)
    r = web.get("/ai/jobs?status=completed", headers=_token(web, make_client, "system/DiagnosticReport.rs"))
    assert r.json()["jobs"] == []


def test_a_patient_context_sees_only_its_own_patients_jobs(oauth_services) -> None:
    jobs = _jobs(oauth_services).recent([KIND])
    guard = oauth_services.fhir.guard
    mine = Principal(subject="app", scopes=("patient/DiagnosticReport.rs",), patient="p1")
    assert [j.request["patient"] for j in visible_jobs(guard, mine, jobs)] == ["p1"]
    narrowed = Principal(subject="app", scopes=("user/DiagnosticReport.rs?category=LAB",))
    assert visible_jobs(guard, narrowed, jobs) == []  # a restricted grant cannot vouch for a job
    everyone = Principal(subject="app", scopes=("user/DiagnosticReport.rs",))
    assert len(visible_jobs(guard, everyone, jobs)) == 2


def test_a_read_on_demand_needs_the_study_and_report_write_access(web, make_client, oauth_services) -> None:
    """``POST /ai/jobs``: no token 401; a token that cannot see the study 404 (as if unknown); one that
    sees it but may not create DiagnosticReport 403; both 202."""
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).parent))
    sys.path.insert(0, str(Path(__file__).parent.parent / "imaging"))
    from _factory import instance
    from _tiny import SIZE, tiny_package
    from pydicom.uid import generate_uid

    from medcloud.ai.registry import Registry

    Registry(oauth_services.db).register(tiny_package(), activate=True)
    study = generate_uid()
    stored = oauth_services.imaging.store_many(
        [instance(study=study, instance_number=i + 1, rows=SIZE, columns=SIZE, modality="CT", patient_id="OD-1")
         for i in range(2)])
    assert all(r.stored for r in stored)
    body = {"study": study}
    assert web.post("/ai/jobs", json=body).status_code == 401
    r = web.post("/ai/jobs", json=body, headers=_token(web, make_client, "system/DiagnosticReport.cu"))
    assert r.status_code == 404  # cannot read the ImagingStudy: the study does not exist for it
    r = web.post("/ai/jobs", json=body, headers=_token(web, make_client, "system/ImagingStudy.rs"))
    assert r.status_code == 403 and "DiagnosticReport" in r.text
    r = web.post("/ai/jobs", json=body,
                 headers=_token(web, make_client, "system/ImagingStudy.rs system/DiagnosticReport.cu"))
    assert r.status_code in (200, 202), r.text  # 200 if the app's worker had enqueued it already
    assert [j["study"] for j in r.json()["jobs"]] == [study]
