"""Bulk Data $export (system, Patient, Group): kick-off, polling, manifest, files, cancel, resume."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import orjson
import pytest

from medcloud.fhir.exchange import SYSTEM
from medcloud.fhir.operations import _export_run, export
from medcloud.jobs import Permanent

ASYNC = {"Prefer": "respond-async", "Accept": "application/fhir+json"}


def _local(url: str) -> str:
    return url.replace("http://testserver", "")


def _kickoff(client, path: str = "/fhir/$export", **params: Any) -> str:
    r = client.get(path, params=params, headers=ASYNC)
    assert r.status_code == 202, r.text
    return r.headers["content-location"]


def _wait(client, status_url: str, timeout: float = 60.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        r = client.get(_local(status_url))
        if r.status_code != 202:
            return r
        assert r.headers["retry-after"].isdigit() and "x-progress" in r.headers
        time.sleep(0.05)
    raise AssertionError("export did not finish")


def _download(client, manifest: dict[str, Any]) -> dict[str, list[dict[str, Any]]]:
    out: dict[str, list[dict[str, Any]]] = {}
    for f in manifest["output"]:
        r = client.get(_local(f["url"]), headers={"Accept": "application/fhir+ndjson"})
        assert r.status_code == 200
        assert r.headers["content-type"].startswith("application/fhir+ndjson")
        lines = [orjson.loads(line) for line in r.content.splitlines()]
        assert len(lines) == f["count"]
        assert all(x["resourceType"] == f["type"] for x in lines)
        out.setdefault(f["type"], []).extend(lines)
    return out


def _ids(files: dict[str, list[dict[str, Any]]]) -> set[str]:
    return {f"{t}/{r['id']}" for t, rs in files.items() for r in rs}


ALL = {"Organization/org", "Practitioner/dr", "Location/ward", "Patient/p1", "Patient/p2", "Encounter/e1",
       "Observation/o1", "Condition/c1", "Observation/o2"}


def test_system_export_completes_with_manifest_and_ndjson_files(loaded_graph):
    client = loaded_graph
    status = _kickoff(client)
    assert status.startswith("http://testserver/fhir/$export-poll-status?_jobId=")
    r = _wait(client, status)
    assert r.status_code == 200, r.text
    assert r.headers["content-type"].startswith("application/json")
    m = r.json()
    assert set(m) >= {"transactionTime", "request", "requiresAccessToken", "output", "error"}
    assert m["request"] == "http://testserver/fhir/$export" and m["requiresAccessToken"] is False
    assert m["error"] == []
    files = _download(client, m)
    assert _ids(files) == ALL


def test_export_filters_by_type_and_since(loaded_graph):
    client = loaded_graph
    m = _wait(client, _kickoff(client, _type="Patient,Observation")).json()
    assert _ids(_download(client, m)) == {"Patient/p1", "Patient/p2", "Observation/o1", "Observation/o2"}
    since = client.get("/fhir/Observation/o2").json()["meta"]["lastUpdated"]
    time.sleep(0.01)
    client.put("/fhir/Condition/c1", json={"resourceType": "Condition", "id": "c1",
                                           "subject": {"reference": "Patient/p1"}, "code": {"text": "cold"}})
    m = _wait(client, _kickoff(client, _since=since)).json()
    assert _ids(_download(client, m)) == {"Condition/c1"}


def test_patient_export_returns_only_compartment_resources(loaded_graph):
    client = loaded_graph
    m = _wait(client, _kickoff(client, "/fhir/Patient/$export")).json()
    assert _ids(_download(client, m)) == ALL - {"Organization/org", "Practitioner/dr", "Location/ward"}


def test_group_export_returns_its_members_data(loaded_graph):
    client = loaded_graph
    group = {"resourceType": "Group", "id": "g", "type": "person", "actual": True,
             "member": [{"entity": {"reference": "Patient/p2"}}]}
    assert client.put("/fhir/Group/g", json=group).status_code == 201
    m = _wait(client, _kickoff(client, "/fhir/Group/g/$export")).json()
    # The Group itself is in its members' compartments (CompartmentDefinition patient: Group.member).
    assert _ids(_download(client, m)) == {"Patient/p2", "Observation/o2", "Group/g"}
    assert client.get("/fhir/Group/nope/$export", headers=ASYNC).status_code == 404


def test_kickoff_by_post_with_parameters(loaded_graph):
    client = loaded_graph
    body = {"resourceType": "Parameters", "parameter": [
        {"name": "_type", "valueString": "Observation"},
        {"name": "patient", "valueReference": {"reference": "Patient/p1"}}]}
    r = client.post("/fhir/Patient/$export", json=body, headers=ASYNC)
    assert r.status_code == 202, r.text
    m = _wait(client, r.headers["content-location"]).json()
    assert _ids(_download(client, m)) == {"Observation/o1"}


@pytest.mark.parametrize("fmt", ["application/fhir+ndjson", "application/ndjson", "ndjson"])
def test_output_formats_are_accepted(loaded_graph, fmt):
    r = _wait(loaded_graph, _kickoff(loaded_graph, _outputFormat=fmt, _type="Patient"))
    assert r.status_code == 200


def test_kickoff_errors_are_400_operation_outcomes(loaded_graph):
    client = loaded_graph
    r = client.get("/fhir/$export")
    assert r.status_code == 400 and "respond-async" in r.text
    assert client.get("/fhir/$export", params={"_outputFormat": "text/csv"}, headers=ASYNC).status_code == 400
    assert client.get("/fhir/$export", params={"_since": "last week"}, headers=ASYNC).status_code == 400
    assert client.get("/fhir/$export", params={"_type": "Nope"}, headers=ASYNC).status_code == 400
    r = client.get("/fhir/$export", params={"_typeFilter": "Patient?gender=male"}, headers=ASYNC)
    assert r.status_code == 400 and r.json()["resourceType"] == "OperationOutcome"
    assert client.get("/fhir/Observation/$export", headers=ASYNC).status_code == 404


def test_lenient_kickoff_ignores_unsupported_parameters_and_reports_them(loaded_graph):
    client = loaded_graph
    r = client.get("/fhir/$export", params={"_typeFilter": "Patient?gender=male", "_type": "Patient"},
                   headers={**ASYNC, "Prefer": "respond-async, handling=lenient"})
    assert r.status_code == 202
    m = _wait(client, r.headers["content-location"]).json()
    assert [e["type"] for e in m["error"]] == ["OperationOutcome"]
    oo = orjson.loads(client.get(_local(m["error"][0]["url"])).content.splitlines()[0])
    assert oo["resourceType"] == "OperationOutcome" and "_typeFilter" in oo["issue"][0]["diagnostics"]


def test_delete_cancels_the_job_and_removes_its_files(loaded_graph, settings):
    client = loaded_graph
    status = _kickoff(client)
    m = _wait(client, status).json()
    job_id = status.split("_jobId=")[1]
    assert (settings.data_dir / "exports" / job_id).is_dir()
    assert client.delete(_local(status)).status_code == 202
    assert client.get(_local(status)).status_code == 404
    assert client.get(_local(m["output"][0]["url"])).status_code == 404
    assert not (settings.data_dir / "exports" / job_id).exists()


def test_file_route_refuses_unknown_names(loaded_graph):
    client = loaded_graph
    status = _kickoff(client)
    _wait(client, status)
    job_id = status.split("_jobId=")[1]
    for name in ("../../medcloud.db", "Patient.001.ndjson.bak", "Nope.001.ndjson"):
        r = client.get("/fhir/$export-file", params={"_jobId": job_id, "_file": name})
        assert r.status_code == 404
    assert client.get("/fhir/$export-poll-status", params={"_jobId": "unknown"}).status_code == 404


def test_failed_export_is_reported_as_500_operation_outcome(loaded_graph, monkeypatch):
    def broken(*args: Any, **kwargs: Any) -> Any:
        raise Permanent("disk full")

    monkeypatch.setattr(export, "run_export", broken)
    r = _wait(loaded_graph, _kickoff(loaded_graph))
    assert r.status_code == 500
    assert r.json()["resourceType"] == "OperationOutcome" and "disk full" in r.text


def test_export_output_passes_the_guard(loaded_graph, services):
    class NoObservations:
        def may(self, principal, interaction, rtype):
            return True

        def may_read(self, principal, stored):
            return stored.type != "Observation"

        def may_write(self, principal, rtype, resource):
            return True

    services.fhir.guard.policy = NoObservations()
    m = _wait(loaded_graph, _kickoff(loaded_graph)).json()
    assert _ids(_download(loaded_graph, m)) == ALL - {"Observation/o1", "Observation/o2"}


class Killed(Exception):
    pass


def test_interrupted_export_resumes_without_duplicates(loaded_graph, services, tmp_path: Path, monkeypatch):
    monkeypatch.setattr(_export_run, "BATCH", 1)
    ctx = services.fhir
    request = {"level": "system", "types": None, "since": None, "patients": None, "principal": _export_run.principal_to_json(SYSTEM), "warnings": []}
    saved: list[dict[str, Any]] = []

    def dying(state: dict[str, Any]) -> None:
        saved.append(orjson.loads(orjson.dumps(state)))
        if len(saved) == 5:
            raise Killed  # the process dies after writing a batch, before more checkpoints

    out = tmp_path / "out"
    with pytest.raises(Killed):
        _export_run.run_export(ctx, request, out, None, dying)
    # A torn write after the last checkpoint: must be cut off on resume.
    last = saved[-2]
    with open(out / last["files"][-1]["name"], "ab") as fh:
        fh.write(b'{"resourceType": "Patient", "id": "half')
    result = _export_run.run_export(ctx, request, out, last, lambda s: None)
    files = {f["name"]: f for f in result["output"]}
    seen: list[str] = []
    for name, f in files.items():
        lines = (out / name).read_bytes().splitlines()
        assert len(lines) == f["count"]
        seen += [f"{f['type']}/{orjson.loads(x)['id']}" for x in lines]
    assert sorted(seen) == sorted(ALL)


def test_expired_exports_are_purged_with_their_files(loaded_graph, services, settings):
    status = _kickoff(loaded_graph)
    _wait(loaded_graph, status)
    job_id = status.split("_jobId=")[1]
    ctx = services.fhir
    assert export.purge_expired(ctx) == 0
    real_clock = ctx.clock
    ctx.clock = lambda: real_clock() + (settings.export_ttl + 1) * 1_000_000
    try:
        assert export.purge_expired(ctx) == 1
    finally:
        ctx.clock = real_clock
    assert not (settings.data_dir / "exports" / job_id).exists()
    assert loaded_graph.get(_local(status)).status_code == 404


def test_a_killed_workers_export_is_resumed_by_another_worker(stored_graph, settings, monkeypatch):
    from medcloud.jobs import COMPLETED, JobControl, JobQueue, Worker

    monkeypatch.setattr(_export_run, "BATCH", 1)
    ctx = stored_graph.fhir
    now = [ctx.clock()]
    queue = JobQueue(ctx.db, clock=lambda: now[0], lease_seconds=10)
    request = {"level": "system", "types": None, "since": None, "patients": None, "principal": _export_run.principal_to_json(SYSTEM),
               "warnings": [], "transaction_time": now[0], "request_url": "x"}
    jid = queue.enqueue(export.KIND, request, owner="anonymous")
    handler = export.job_handler(ctx)

    class Dying(JobControl):
        calls = 0

        def checkpoint(self, state=None):
            super().checkpoint(state)
            Dying.calls += 1
            if Dying.calls == 6:
                raise Killed  # the process is gone: no failure recorded, the lease just runs out

    job = queue.claim("A", [export.KIND])
    with pytest.raises(Killed):
        handler(job, Dying(queue, job, "A"))
    now[0] += 11_000_000
    assert Worker(queue, {export.KIND: handler}, name="B").run_once()
    done = queue.get(jid)
    assert done.status == COMPLETED and done.attempts == 2
    out = settings.data_dir / "exports" / jid
    seen = [f"{f['type']}/{orjson.loads(x)['id']}" for f in done.result["output"]
            for x in b"".join(ctx.at_rest.iter_file(out / f["name"])).splitlines()]  # encrypted at rest
    assert sorted(seen) == sorted(ALL)
