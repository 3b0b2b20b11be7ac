"""Automatic reads end to end: STOW -> stable -> ai-read job -> FHIR report + SR/heatmap in the study."""

from __future__ import annotations

import base64
import io
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import update
from starlette.testclient import TestClient

from medcloud.ai.reads import KIND
from medcloud.ai.registry import Registry
from medcloud.app import Services, create_app
from medcloud.config import Settings
from medcloud.imaging.archive import ArchiveConfig
from medcloud.jobs import COMPLETED, RUNNING, JobQueue, Worker
from medcloud.storage.schema import jobs

sys.path.insert(0, str(Path(__file__).parent))
sys.path.insert(0, str(Path(__file__).parent.parent / "imaging"))

from _factory import instance  # noqa: E402
from _http import stow  # noqa: E402
from _tiny import SIZE, tiny_package  # noqa: E402

SR_CLASS = "1.2.840.10008.5.1.4.1.1.88.33"
SC_CLASS = "1.2.840.10008.5.1.4.1.1.7"


@pytest.fixture
def app_client(settings: Settings, services: Services):
    """The real app without its lifespan (no background thread): the test drives stable + worker itself."""
    assert services.imaging is not None and services.ai_reads is not None
    services.imaging.config = ArchiveConfig(stable_after_seconds=0)
    registry = Registry(services.db)
    for v in registry.list():  # shipped default models (brain MRI, pneumonia) would read these studies too
        registry.remove(v.name, v.version, force=True)
    registry.register(tiny_package(), activate=True)
    return TestClient(create_app(settings, services), base_url="http://testserver")


def _study(client: TestClient, n: int = 3, modality: str = "CT") -> str:
    from pydicom.uid import generate_uid

    study, series = generate_uid(), generate_uid()
    datas = [instance(study=study, series=series, instance_number=i + 1, rows=SIZE, columns=SIZE, modality=modality,
                      patient_id="AI-1")
             for i in range(n)]
    r = stow(client, datas)
    assert r.status_code == 200, r.text
    return str(study)


def _run_reads(services: Services) -> int:
    assert services.imaging is not None
    services.imaging.mark_stable()
    return services.job_worker().run_until_idle()


def _search(client: TestClient, query: str) -> list[dict[str, Any]]:
    r = client.get(f"/fhir/{query}")
    assert r.status_code == 200, r.text
    return [e["resource"] for e in r.json().get("entry", []) if e.get("search", {}).get("mode", "match") == "match"]


def test_a_stable_study_gets_a_report_observations_device_sr_and_heatmap(app_client: TestClient,
                                                                          services: Services) -> None:
    study = _study(app_client)
    assert _run_reads(services) == 1
    done = JobQueue(services.db).recent([KIND])
    assert [j.status for j in done] == [COMPLETED], [j.error for j in done]
    result = done[0].result or {}
    patient = result["patient"]

    reports = _search(app_client, f"DiagnosticReport?subject=Patient/{patient}")
    assert len(reports) == 1
    dr = reports[0]
    assert dr["status"] == "preliminary"
    assert dr["conclusionCode"][0]["coding"][0]["code"] == result["label"]
    assert dr["imagingStudy"] == [{"reference": f"ImagingStudy/{study}"}]
    device_ref = dr["extension"][0]["valueReference"]["reference"]
    obs = _search(app_client, f"Observation?subject=Patient/{patient}")
    assert sorted(o["id"] for o in obs) == sorted(r["reference"].split("/")[1] for r in dr["result"])
    assert sum(o["valueQuantity"]["value"] for o in obs) == pytest.approx(1.0, abs=1e-5)
    assert all(o["device"]["reference"] == device_ref for o in obs)
    assert all(o["derivedFrom"] == [{"reference": f"ImagingStudy/{study}"}] for o in obs)
    device = app_client.get(f"/fhir/{device_ref}").json()
    assert device["deviceName"][0]["name"] == "tiny-ct" and device["version"][0]["value"] == "1"
    # the explanation in FHIR: a Media with the heatmap PNG, linked from the report
    assert [m["link"]["reference"] for m in dr["media"]] == [result["media"]]
    assert result["label"] in dr["media"][0]["comment"]
    media = app_client.get(f"/fhir/{result['media']}").json()
    assert media["subject"] == {"reference": f"Patient/{patient}"} and media["content"]["contentType"] == "image/png"
    assert media["identifier"][0]["value"] == f"urn:oid:{result['heatmap']}"  # the DICOM SC of the same heatmap
    from PIL import Image

    picture = Image.open(io.BytesIO(base64.b64decode(media["content"]["data"])))
    assert picture.mode == "RGB" and max(picture.size) <= 384
    everything = app_client.get(f"/fhir/Patient/{patient}/$everything").json()
    types = {e["resource"]["resourceType"] for e in everything["entry"]}
    assert {"DiagnosticReport", "Observation", "ImagingStudy", "Media"} <= types

    instances = app_client.get(f"/dicomweb/studies/{study}/instances").json()
    classes = sorted(i["00080016"]["Value"][0] for i in instances)
    assert classes.count(SR_CLASS) == 1 and classes.count(SC_CLASS) == 1 and len(classes) == 5
    sr_uid = result["sr"]
    assert dr["identifier"][0]["value"] == f"urn:oid:{sr_uid}"
    imaging_study = app_client.get(f"/fhir/ImagingStudy/{study}").json()
    assert imaging_study["numberOfInstances"] == 5

    # Our own outputs changed the study; once it is stable again nothing new is read.
    assert _run_reads(services) == 0
    assert len(JobQueue(services.db).recent([KIND])) == 1


def test_sr_and_heatmap_are_valid_dicom_with_the_read(app_client: TestClient, services: Services) -> None:
    import io

    import pydicom
    from _http import parts

    study = _study(app_client, n=2)
    _run_reads(services)
    result = JobQueue(services.db).recent([KIND])[0].result or {}
    assert services.imaging is not None
    refs = {r.sop_uid: r for r in services.imaging.instances(study)}
    sr = pydicom.dcmread(io.BytesIO(services.imaging.blobs.read(refs[result["sr"]].blob_key)))
    assert sr.Modality == "SR" and sr.VerificationFlag == "UNVERIFIED" and sr.PatientID == "AI-1"
    nums = {i.ConceptNameCodeSequence[0].CodeMeaning: float(i.MeasuredValueSequence[0].NumericValue)
            for i in sr.ContentSequence if i.ValueType == "NUM"}
    assert nums == pytest.approx({f"Probability of {k}": v for k, v in result["probabilities"].items()}, abs=1e-5)
    texts = {i.ConceptNameCodeSequence[0].CodeMeaning: i.TextValue for i in sr.ContentSequence if i.ValueType == "TEXT"}
    assert texts["Algorithm Name"] == "tiny-ct"
    wado = app_client.get(f"/dicomweb/studies/{study}/series/{refs[result['heatmap']].series_uid}",
                          headers={"Accept": "multipart/related; type=\"application/dicom\""})
    assert wado.status_code == 200
    sc = pydicom.dcmread(io.BytesIO(parts(wado)[0]))
    assert sc.PhotometricInterpretation == "RGB" and sc.pixel_array.shape == (SIZE, SIZE, 3)


def test_no_applicable_model_enqueues_nothing(app_client: TestClient, services: Services) -> None:
    _study(app_client, modality="MR")  # the tiny model applies to CT only
    assert _run_reads(services) == 0
    assert JobQueue(services.db).recent([KIND]) == []


def test_a_job_of_a_dead_worker_is_rerun_after_its_lease_and_outputs_are_not_duplicated(
        app_client: TestClient, services: Services) -> None:
    study = _study(app_client)
    assert services.imaging is not None
    services.imaging.mark_stable()
    now = [services.fhir.clock()]
    queue = JobQueue(services.db, clock=lambda: now[0], lease_seconds=30)
    dead = queue.claim("dead-worker", [KIND])  # claimed, then the process was killed: no heartbeat, no result
    assert dead is not None and dead.status == RUNNING
    handlers = services.job_worker().handlers
    live = Worker(queue, {KIND: handlers[KIND]}, name="live")
    assert live.run_once() is False  # the lease still holds
    now[0] += 31 * 1_000_000
    assert live.run_once() is True
    job = queue.get(dead.id)
    assert job is not None and job.status == COMPLETED and job.attempts == 2

    # A crash after the outputs were written but before "completed" was recorded: run it again.
    with services.db.write() as conn:
        conn.execute(update(jobs).where(jobs.c.id == dead.id).values(status=RUNNING, lease_owner="dead-2",
                                                                    lease_until=now[0] - 1))
    assert live.run_once() is True
    assert queue.get(dead.id).status == COMPLETED  # type: ignore[union-attr]
    patient = (job.result or {})["patient"]
    assert len(_search(app_client, f"DiagnosticReport?subject=Patient/{patient}")) == 1
    assert len(_search(app_client, f"Observation?subject=Patient/{patient}")) == 2
    assert len(app_client.get(f"/dicomweb/studies/{study}/instances").json()) == 5
    assert app_client.get(f"/fhir/{(job.result or {})['device']}").json()["meta"]["versionId"] == "1"


def test_corrupt_or_unreadable_instances_are_skipped_and_reported(app_client: TestClient, services: Services) -> None:
    from pydicom.uid import generate_uid

    study, series = generate_uid(), generate_uid()
    good = instance(study=study, series=series, rows=SIZE, columns=SIZE, patient_id="AI-2")
    import io

    import pydicom

    ds = pydicom.dcmread(io.BytesIO(instance(study=study, series=series, rows=SIZE, columns=SIZE,
                                             patient_id="AI-2", instance_number=2)))
    ds.PhotometricInterpretation = "PALETTE COLOR"  # stored fine, but no model reads palette images
    buf = io.BytesIO()
    ds.save_as(buf)
    assert stow(app_client, [good, buf.getvalue()]).status_code == 200
    _run_reads(services)
    job = JobQueue(services.db).recent([KIND])[0]
    assert job.status == COMPLETED, job.error
    assert job.result is not None and job.result["images"] == 1
    assert [s["instance"] for s in job.result["skipped"]] == [str(ds.SOPInstanceUID)]
    assert "photometric" in job.result["skipped"][0]["error"]


_CLAIMER = textwrap.dedent("""
    import sys, time
    from medcloud.jobs import JobQueue
    from medcloud.storage.sql.database import Database
    q = JobQueue(Database.connect(sys.argv[1]))
    mine = []
    while True:
        job = q.claim(sys.argv[2], ["claim-test"])
        if job is None:
            break
        time.sleep(0.01)  # work
        q.complete(job, sys.argv[2], {"by": sys.argv[2]})
        mine.append(job.id)
    print(" ".join(mine))
""")


def test_worker_processes_on_postgresql_claim_disjoint_jobs(pg_url: str) -> None:
    from medcloud.storage.migrate import upgrade
    from medcloud.storage.sql.database import Database

    db = Database.connect(pg_url)
    upgrade(db)
    with db.write() as conn:
        conn.execute(jobs.delete().where(jobs.c.kind == "claim-test"))
    q = JobQueue(db)
    ids = {q.enqueue("claim-test", {"n": i}) for i in range(40)}
    procs = [subprocess.Popen([sys.executable, "-c", _CLAIMER, pg_url, f"w{i}"], stdout=subprocess.PIPE, text=True)
             for i in range(2)]
    claimed = [set(p.communicate(timeout=120)[0].split()) for p in procs]
    assert all(p.returncode == 0 for p in procs)
    assert claimed[0] | claimed[1] == ids
    assert not claimed[0] & claimed[1]
    assert all(q.get(i).status == COMPLETED for i in ids)  # type: ignore[union-attr]
    db.dispose()


def test_cli_lists_jobs_with_their_outcome(app_client: TestClient, services: Services, settings: Settings) -> None:
    import json

    from typer.testing import CliRunner

    from medcloud.cli import app

    _study(app_client, n=1)
    _run_reads(services)
    res = CliRunner().invoke(app, ["ai", "jobs", "--json", "--status", "completed", "--db", settings.db_url])
    assert res.exit_code == 0, res.output
    found = json.loads(res.stdout)
    assert [j["model"] for j in found] == ["tiny-ct"] and found[0]["result"]["label"] in ("normal", "abnormal")
    none = CliRunner().invoke(app, ["ai", "jobs", "--json", "--status", "failed", "--db", settings.db_url])
    assert json.loads(none.stdout) == []


def test_cli_asks_for_a_read_now(app_client: TestClient, services: Services, settings: Settings) -> None:
    from typer.testing import CliRunner

    from medcloud.cli import app

    assert services.imaging is not None
    services.imaging.config = ArchiveConfig(stable_after_seconds=3600)
    study = _study(app_client, n=1)
    args = ["ai", "read", study, "--data-dir", str(settings.data_dir), "--db", settings.db_url]
    first = CliRunner().invoke(app, args)
    assert first.exit_code == 0 and "queued" in first.output, first.output
    again = CliRunner().invoke(app, args)
    assert again.exit_code == 0 and "already requested" in again.output, again.output
    assert len(JobQueue(services.db).recent([KIND])) == 1
    unknown = CliRunner().invoke(app, ["ai", "read", "1.2.3.4", "--data-dir", str(settings.data_dir),
                                       "--db", settings.db_url])
    assert unknown.exit_code == 1 and "not stored" in unknown.output


@pytest.mark.parametrize("backend", ["postgres"], indirect=True)
def test_medcloud_worker_processes_run_each_read_once(services: Services, settings: Settings) -> None:
    """``medcloud worker -n 2`` (no HTTP) against PostgreSQL: every read runs once, by one process."""
    import os
    import signal
    import time

    from pydicom.uid import generate_uid

    assert services.imaging is not None
    registry = Registry(services.db)
    for v in registry.list():
        registry.remove(v.name, v.version, force=True)
    registry.register(tiny_package(), activate=True)
    services.imaging.config = ArchiveConfig(stable_after_seconds=0)
    for k in range(6):
        study, series = generate_uid(), generate_uid()
        results = services.imaging.store_many([instance(study=study, series=series, rows=SIZE, columns=SIZE,
                                                        patient_id=f"W-{k}", instance_number=i + 1) for i in range(2)])
        assert all(r.stored for r in results)
    services.imaging.mark_stable()
    queue = JobQueue(services.db)
    assert len(queue.recent([KIND])) == 6
    exe = Path(sys.executable).parent / "medcloud"
    proc = subprocess.Popen([str(exe), "worker", "-n", "2", "--db", settings.db_url, "--data-dir",
                             str(settings.data_dir)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            start_new_session=True, env={**os.environ, "MEDCLOUD_AUTH": "false"})
    try:
        deadline = time.monotonic() + 180
        while any(j.status != COMPLETED for j in queue.recent([KIND])):
            assert proc.poll() is None, proc.stdout.read().decode() if proc.stdout else ""
            assert time.monotonic() < deadline, [(j.status, j.error) for j in queue.recent([KIND])]
            time.sleep(0.3)
    finally:
        os.killpg(proc.pid, signal.SIGINT)
        proc.wait(timeout=60)
    done = queue.recent([KIND])
    assert all(j.attempts == 1 for j in done)
    assert all(j.lease_owner and j.lease_owner.split(":")[1] != str(os.getpid()) for j in done)
    reports = {(j.result or {})["report"] for j in done}
    assert len(reports) == 6


def test_the_apps_own_worker_reads_a_stowed_study_without_help(settings: Settings, services: Services) -> None:
    """The default deployment: STOW-RS, then nothing but waiting (the in-process worker and its stable check)."""
    import time

    assert services.imaging is not None
    Registry(services.db).register(tiny_package(), activate=True)
    services.imaging.config = ArchiveConfig(stable_after_seconds=0.2)
    with TestClient(create_app(settings, services), base_url="http://testserver") as client:
        study = _study(client, n=2)
        deadline = time.monotonic() + 30
        while not _search(client, "DiagnosticReport?_count=10&_elements=imagingStudy"):
            assert time.monotonic() < deadline, [(j.status, j.error) for j in JobQueue(services.db).recent([KIND])]
            time.sleep(0.1)
        reports = _search(client, "DiagnosticReport")
    assert [r["imagingStudy"][0]["reference"] for r in reports] == [f"ImagingStudy/{study}"]


def test_a_read_on_demand_before_the_study_is_stable(app_client: TestClient, services: Services) -> None:
    """``POST /ai/jobs``: a clinician asks for the read now; asking again is the same job."""
    assert services.imaging is not None
    services.imaging.config = ArchiveConfig(stable_after_seconds=3600)  # never stable during the test
    study = _study(app_client)
    r = app_client.post("/ai/jobs", json={"study": study})
    assert r.status_code == 202, r.text
    jobs = r.json()["jobs"]
    assert len(jobs) == 1 and jobs[0]["study"] == study and jobs[0]["model"] == "tiny-ct"
    again = app_client.post("/ai/jobs", json={"study": study, "model": "tiny-ct"})
    assert again.status_code == 200 and [j["id"] for j in again.json()["jobs"]] == [jobs[0]["id"]]
    assert services.job_worker().run_until_idle() == 1
    reports = _search(app_client, f"DiagnosticReport?subject=Patient/{jobs[0]['patient']}")
    assert len(reports) == 1

    assert app_client.post("/ai/jobs", json={"study": "1.2.3.999"}).status_code == 404
    assert app_client.post("/ai/jobs", json={"study": study, "model": "no-such-model"}).status_code == 422
    mr = _study(app_client, modality="MR")  # the tiny model reads CT only
    assert app_client.post("/ai/jobs", json={"study": mr}).status_code == 422
    for bad in (b"not json", b"[]", b'{"study": 5}', b'{"study": "1.2", "model": 3}'):
        resp = app_client.post("/ai/jobs", content=bad, headers={"Content-Type": "application/json"})
        assert resp.status_code == 400, bad
        assert resp.json()["resourceType"] == "OperationOutcome"
