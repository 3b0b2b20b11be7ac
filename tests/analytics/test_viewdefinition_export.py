"""``$viewdefinition-export`` through the HTTP app (SQLite and PostgreSQL): kick-off, polling, 303,
result, downloads equal to ``$run``, filters, errors, cancel, access, and a resumed job."""

from __future__ import annotations

import time
from typing import Any

import duckdb
import orjson
import pytest

from medcloud.analytics.server import export_job
from medcloud.fhir import router
from medcloud.fhir.exchange import SYSTEM, FhirRequest, Principal
from medcloud.jobs import COMPLETED, JobControl, JobQueue, LeaseLost, Permanent, Worker
from medcloud.security.crypto import MAGIC
from medcloud.security.policy import SmartPolicy

from ._views import OBS_VIEW, PATIENT_VIEW

ASYNC = {"Prefer": "respond-async", "Accept": "application/fhir+json"}
EXPORT = "/fhir/ViewDefinition/$viewdefinition-export"



def _local(url: str) -> str:
    return url.replace("http://testserver", "")


def _params(*entries: dict[str, Any]) -> dict[str, Any]:
    return {"resourceType": "Parameters", "parameter": list(entries)}


def _ref_view(ref: str, name: str | None = None) -> dict[str, Any]:
    parts: list[dict[str, Any]] = [{"name": "viewReference", "valueReference": {"reference": ref}}]
    if name:
        parts.insert(0, {"name": "name", "valueString": name})
    return {"name": "view", "part": parts}


def _inline_view(view: dict[str, Any]) -> dict[str, Any]:
    return {"name": "view", "part": [{"name": "viewResource", "resource": view}]}


def _value(params: dict[str, Any], name: str) -> Any:
    for p in params["parameter"]:
        if p["name"] == name:
            return next(v for k, v in p.items() if k.startswith("value"))
    return None


def _outputs(params: dict[str, Any]) -> dict[str, list[str]]:
    return {next(x["valueString"] for x in p["part"] if x["name"] == "name"):
            [x["valueUri"] for x in p["part"] if x["name"] == "location"]
            for p in params["parameter"] if p["name"] == "output"}


@pytest.fixture
def world(client) -> dict[str, str]:
    ids: dict[str, str] = {}
    for key, family, birth in (("smith", "Smith", "1970-05-01"), ("jones", "Jones", "1990-02-03")):
        r = client.post("/fhir/Patient", json={"resourceType": "Patient", "name": [{"family": family}],
                                               "birthDate": birth})
        assert r.status_code == 201, r.text
        ids[key] = r.json()["id"]
        r = client.post("/fhir/Observation", json={"resourceType": "Observation", "status": "final",
                                                   "code": {"text": f"bp-{key}"},
                                                   "subject": {"reference": f"Patient/{ids[key]}"}})
        assert r.status_code == 201, r.text
        ids[f"obs-{key}"] = r.json()["id"]
    r = client.post("/fhir/ViewDefinition", json=PATIENT_VIEW)
    assert r.status_code == 201, r.text
    ids["view"] = r.json()["id"]
    return ids


def _kickoff(client, body: dict[str, Any], path: str = EXPORT) -> dict[str, Any]:
    r = client.post(path, json=body, headers=ASYNC)
    assert r.status_code == 202, r.text
    kick = r.json()
    assert _value(kick, "status") == "accepted"
    assert r.headers["content-location"] == _value(kick, "location")
    return {"status": r.headers["content-location"], "id": _value(kick, "exportId")}


def _finish(client, status_url: str, timeout: float = 60.0) -> str:
    """Poll until 303; returns the result URL."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        r = client.get(_local(status_url), follow_redirects=False)
        if r.status_code != 202:
            assert r.status_code == 303, r.text
            return str(r.headers["location"])
        assert r.headers["retry-after"].isdigit() and "x-progress" in r.headers
        assert _value(r.json(), "status") == "in-progress"
        time.sleep(0.05)
    raise AssertionError("the view export did not finish")


def _rows(content: bytes, fmt: str) -> list[Any]:
    """Rows of a downloaded or $run file, order-independent."""
    if fmt == "csv":
        lines = content.decode().splitlines()
        return [lines[0], *sorted(lines[1:])]
    if fmt == "ndjson":
        return sorted(content.decode().splitlines())
    con = duckdb.connect()
    table = con.read_parquet(_tmp_parquet(content)).fetchall()
    return sorted(table, key=repr)


def _tmp_parquet(content: bytes) -> str:
    import tempfile

    f = tempfile.NamedTemporaryFile(suffix=".parquet", delete=False)  # noqa: SIM115 - read by DuckDB after
    f.write(content)
    f.close()
    return f.name


def _run(client, view: dict[str, Any] | None, fmt: str, ref: str | None = None, **extra: str) -> bytes:
    entries: list[dict[str, Any]] = [{"name": "_format", "valueCode": fmt}]
    if view is not None:
        entries.append({"name": "viewResource", "resource": view})
    if ref is not None:
        entries.append({"name": "viewReference", "valueReference": {"reference": ref}})
    entries += [{"name": k, "valueString": v} for k, v in extra.items()]
    r = client.post("/fhir/ViewDefinition/$run", json=_params(*entries))
    assert r.status_code == 200, r.text
    return r.content


@pytest.mark.parametrize("fmt", ["csv", "parquet", "ndjson"])
def test_two_views_export_equals_run_in_each_format(client, world, settings, fmt):
    job = _kickoff(client, _params({"name": "clientTrackingId", "valueString": "monthly-1"},
                                   {"name": "_format", "valueCode": fmt},
                                   _ref_view(f"ViewDefinition/{world['view']}"), _inline_view(OBS_VIEW)))
    result_url = _finish(client, job["status"])
    r = client.get(_local(result_url))
    assert r.status_code == 200, r.text
    assert r.headers["expires"]
    res = r.json()
    assert res["resourceType"] == "Parameters"
    assert _value(res, "exportId") == job["id"] and _value(res, "clientTrackingId") == "monthly-1"
    assert _value(res, "_format") == fmt
    assert _value(res, "exportStartTime") <= _value(res, "exportEndTime")
    assert isinstance(_value(res, "exportDuration"), int)
    outputs = _outputs(res)
    assert set(outputs) == {"patient_demographics", "obs"}
    for name, view in (("patient_demographics", PATIENT_VIEW), ("obs", OBS_VIEW)):
        [location] = outputs[name]
        got = client.get(_local(location))
        assert got.status_code == 200
        assert got.headers["content-disposition"].startswith("attachment")
        assert _rows(got.content, fmt) == _rows(_run(client, view, fmt), fmt)
    # On disk the files are sealed (encryption at rest), and no temporary file is left behind.
    folder = settings.data_dir / "exports" / "views" / job["id"]
    files = sorted(folder.iterdir())
    assert len(files) == 2 and all(p.read_bytes().startswith(MAGIC) for p in files)


def test_view_reference_by_canonical_and_at_instance_level(client, world):
    canonical = f"{PATIENT_VIEW['url']}|{PATIENT_VIEW['version']}"
    job = _kickoff(client, _params(_ref_view(canonical, "people")),
                   path="/fhir/$viewdefinition-export?_format=text/csv")  # simple parameters may be in the query
    res = client.get(_local(_finish(client, job["status"]))).json()
    [location] = _outputs(res)["people"]
    assert _rows(client.get(_local(location)).content, "csv") == _rows(_run(client, PATIENT_VIEW, "csv"), "csv")

    job = _kickoff(client, _params({"name": "_format", "valueCode": "ndjson"}),
                   path=f"/fhir/ViewDefinition/{world['view']}/$viewdefinition-export")
    res = client.get(_local(_finish(client, job["status"]))).json()
    [location] = _outputs(res)["patient_demographics"]
    families = sorted(orjson.loads(x)["family"] for x in client.get(_local(location)).content.splitlines())
    assert families == ["Jones", "Smith"]


def _ndjson_export(client, *entries: dict[str, Any]) -> dict[str, list[dict[str, Any]]]:
    job = _kickoff(client, _params({"name": "_format", "valueCode": "ndjson"}, *entries))
    res = client.get(_local(_finish(client, job["status"]))).json()
    return {name: [orjson.loads(x) for loc in locs for x in client.get(_local(loc)).content.splitlines()]
            for name, locs in _outputs(res).items()}


def test_patient_group_and_since_filter_the_rows(client, world):
    views = (_ref_view(f"ViewDefinition/{world['view']}"), _inline_view(OBS_VIEW))
    got = _ndjson_export(client, *views, {"name": "patient", "valueReference": {"reference": f"Patient/{world['smith']}"}})
    assert [r["id"] for r in got["patient_demographics"]] == [world["smith"]]
    assert [r["id"] for r in got["obs"]] == [world["obs-smith"]]

    group = {"resourceType": "Group", "type": "person", "actual": True,
             "member": [{"entity": {"reference": f"Patient/{world['jones']}"}}]}
    gid = client.post("/fhir/Group", json=group).json()["id"]
    got = _ndjson_export(client, *views, {"name": "group", "valueReference": {"reference": f"Group/{gid}"}})
    assert [r["id"] for r in got["patient_demographics"]] == [world["jones"]]
    assert [r["patient"] for r in got["obs"]] == [world["jones"]]

    since = client.get(f"/fhir/ViewDefinition/{world['view']}").json()["meta"]["lastUpdated"]
    time.sleep(0.01)
    changed = {"resourceType": "Observation", "id": world["obs-jones"], "status": "amended",
               "code": {"text": "bp-jones-2"}, "subject": {"reference": f"Patient/{world['jones']}"}}
    assert client.put(f"/fhir/Observation/{world['obs-jones']}", json=changed).status_code == 200
    got = _ndjson_export(client, *views, {"name": "_since", "valueInstant": since})
    assert got["patient_demographics"] == []
    assert [r["code"] for r in got["obs"]] == ["bp-jones-2"]


def test_kickoff_errors(client, world):
    view = _ref_view(f"ViewDefinition/{world['view']}")

    def post(*entries: dict[str, Any], headers: dict[str, str] = ASYNC) -> Any:
        return client.post(EXPORT, json=_params(*entries), headers=headers)

    r = post(view, headers={"Accept": "application/fhir+json"})
    assert r.status_code == 400 and "respond-async" in r.text
    r = post(_ref_view("ViewDefinition/nope"))
    assert r.status_code == 404 and r.json()["issue"][0]["code"] == "not-found"
    assert post(_ref_view("http://example.org/ViewDefinition/unknown")).status_code == 404
    bad = {**OBS_VIEW, "select": [{"column": [{"name": "id", "path": "id"}, {"name": "x", "path": "name.where("}]}]}
    r = post(view, _inline_view(bad))
    assert r.status_code == 422
    assert r.json()["issue"][0]["expression"] == ["parameter[1].part[0].resource.select[0].column[1].path"]
    r = post(view, {"name": "source", "valueString": "s3://bucket"})
    assert r.status_code == 400 and r.json()["issue"][0]["code"] == "not-supported"
    r = post(view, {"name": "patient", "valueReference": {"reference": "Patient/12345"}})
    assert r.status_code == 404 and "Patient/12345" in r.text
    assert post(view, {"name": "group", "valueReference": {"reference": "Group/none"}}).status_code == 404
    assert post(view, {"name": "_typeFilter", "valueString": "x"}).status_code == 400
    assert post(view, {"name": "_format", "valueCode": "xlsx"}).status_code == 400
    assert post().status_code == 400  # no view
    assert post(view, _ref_view(f"ViewDefinition/{world['view']}")).status_code == 400  # same output name twice
    assert client.get(EXPORT, headers=ASYNC).status_code == 405  # POST only
    assert client.get("/fhir/ViewDefinition").json().get("total") == 1  # nothing was created


def test_delete_cancels_and_removes_the_files(client, world, settings):
    job = _kickoff(client, _params(_ref_view(f"ViewDefinition/{world['view']}")))
    result_url = _finish(client, job["status"])
    [location] = _outputs(client.get(_local(result_url)).json())["patient_demographics"]
    folder = settings.data_dir / "exports" / "views" / job["id"]
    assert folder.is_dir()
    assert client.delete(_local(job["status"])).status_code == 202
    assert client.get(_local(job["status"])).status_code == 404
    assert client.get(_local(result_url)).status_code == 404
    assert client.get(_local(location)).status_code == 404
    assert not folder.exists()


def test_file_route_refuses_unknown_names(client, world):
    job = _kickoff(client, _params(_ref_view(f"ViewDefinition/{world['view']}")))
    _finish(client, job["status"])
    for name in ("../../medcloud.db", "001_patient_demographics.csv", ".001_patient_demographics.ndjson.partial"):
        r = client.get("/fhir/$viewdefinition-export-file", params={"_jobId": job["id"], "_file": name})
        assert r.status_code == 404
    assert client.get("/fhir/$viewdefinition-export-status", params={"_jobId": "unknown"}).status_code == 404


def test_failed_export_redirects_to_a_500_result(client, world, monkeypatch):
    def broken(*args: Any, **kwargs: Any) -> Any:
        raise Permanent("disk full")

    monkeypatch.setattr(export_job, "_write_view", broken)
    job = _kickoff(client, _params(_ref_view(f"ViewDefinition/{world['view']}")))
    r = client.get(_local(_finish(client, job["status"])))
    assert r.status_code == 500
    assert r.json()["resourceType"] == "OperationOutcome" and "disk full" in r.text


def test_capability_statement_lists_the_operation(client):
    cs = client.get("/fhir/metadata").json()
    definition = "http://sql-on-fhir.org/OperationDefinition/$viewdefinition-export"
    rest = cs["rest"][0]
    assert {"name": "viewdefinition-export", "definition": definition} in rest["operation"]
    vd = next(r for r in rest["resource"] if r["type"] == "ViewDefinition")
    assert any(o["definition"] == definition for o in vd["operation"])
    assert "$viewdefinition-export" in vd["documentation"]


# ---------------------------------------------------------------- access and resumption (no HTTP worker)


def _call(services, method: str, path: str, body: Any = None, query: Any = (), principal: Principal = SYSTEM,
          headers: dict[str, str] | None = None):
    return router.handle(services.fhir, FhirRequest(method, path, list(query), body=body, principal=principal,
                                                    headers=headers or {"prefer": "respond-async"}))


def _stored(services) -> dict[str, str]:
    ids = {}
    for key in ("p1", "p2"):
        r = _call(services, "POST", "Patient", {"resourceType": "Patient", "name": [{"family": key}]})
        ids[key] = orjson.loads(r.raw)["id"] if r.raw else r.resource["id"]
        _call(services, "POST", "Observation", {"resourceType": "Observation", "status": "final",
                                                "code": {"text": key}, "subject": {"reference": f"Patient/{ids[key]}"}})
    r = _call(services, "POST", "ViewDefinition", PATIENT_VIEW)
    ids["view"] = orjson.loads(r.raw)["id"] if r.raw else r.resource["id"]
    return ids


def test_access_follows_the_token(services):
    ids = _stored(services)
    services.fhir.guard.policy = SmartPolicy()
    body = _params(_ref_view(f"ViewDefinition/{ids['view']}"), _inline_view(OBS_VIEW))
    nobody = Principal(subject="app", scopes=("openid", "fhirUser"))
    assert _call(services, "POST", "ViewDefinition/$viewdefinition-export", body, principal=nobody).status == 404
    no_data = Principal(subject="app", scopes=("user/ViewDefinition.rs", "user/Patient.rs"))
    r = _call(services, "POST", "ViewDefinition/$viewdefinition-export", body, principal=no_data)
    assert r.status == 403  # no read scope on Observation, the type of the second view
    me = Principal(subject="me", scopes=("patient/*.rs",), patient=ids["p1"])
    r = _call(services, "POST", "ViewDefinition/$viewdefinition-export", body, principal=me)
    assert r.status == 202, r.resource
    jid = r.resource["parameter"][0]["valueString"]
    assert Worker(JobQueue(services.db), {export_job.KIND: export_job.job_handler(services.fhir)}).run_once()
    status = [("_jobId", jid)]
    other = Principal(subject="someone-else", scopes=("user/*.rs",))
    assert _call(services, "GET", "$viewdefinition-export-status", query=status, principal=other).status == 404
    assert _call(services, "GET", "$viewdefinition-export-result", query=status, principal=other).status == 404
    assert _call(services, "GET", "$viewdefinition-export-status", query=status, principal=me).status == 303
    res = _call(services, "GET", "$viewdefinition-export-result", query=status, principal=me)
    assert res.status == 200
    rows = {}
    for name, [loc] in _outputs(res.resource).items():
        file = [("_jobId", jid), ("_file", loc.split("_file=")[1])]
        assert _call(services, "GET", "$viewdefinition-export-file", query=file, principal=other).status == 404
        got = _call(services, "GET", "$viewdefinition-export-file", query=file, principal=me)
        rows[name] = [orjson.loads(x) for x in b"".join(got.stream).splitlines()]
    # a patient token exports only its own compartment
    assert [r["id"] for r in rows["patient_demographics"]] == [ids["p1"]]
    assert [r["patient"] for r in rows["obs"]] == [ids["p1"]]


class Killed(Exception):
    pass


def test_a_killed_workers_export_is_resumed_by_another_worker(services, settings):
    ids = _stored(services)
    body = _params({"name": "_format", "valueCode": "csv"}, _ref_view(f"ViewDefinition/{ids['view']}"),
                   _inline_view(OBS_VIEW))
    r = _call(services, "POST", "ViewDefinition/$viewdefinition-export", body)
    assert r.status == 202
    jid = r.resource["parameter"][0]["valueString"]
    ctx = services.fhir
    now = [ctx.clock()]
    queue = JobQueue(ctx.db, clock=lambda: now[0], lease_seconds=10)
    handler = export_job.job_handler(ctx)

    class Dying(JobControl):
        def checkpoint(self, state: dict[str, Any] | None = None) -> None:
            super().checkpoint(state)
            if state is not None and len(state["done"]) == 1:
                raise Killed  # the process is gone after the first view: the lease just runs out

    job = queue.claim("A", [export_job.KIND])
    assert job is not None
    with pytest.raises(Killed):
        handler(job, Dying(queue, job, "A"))
    folder = settings.data_dir / "exports" / "views" / jid
    (folder / ".002_obs.csv.partial").write_bytes(b"half a file")  # a torn write of the second view
    assert queue.claim("B", [export_job.KIND]) is None  # A's lease still holds
    now[0] += 11_000_000
    assert Worker(queue, {export_job.KIND: handler}, name="B").run_once()
    done = queue.get(jid)
    assert done is not None and done.status == COMPLETED and done.attempts == 2
    assert sorted(p.name for p in folder.iterdir()) == ["001_patient_demographics.csv", "002_obs.csv"]
    res = _call(services, "GET", "$viewdefinition-export-result", query=[("_jobId", jid)])
    assert set(_outputs(res.resource)) == {"patient_demographics", "obs"}
    lines = b"".join(ctx.at_rest.iter_file(folder / "002_obs.csv")).decode().splitlines()
    assert lines[0] == "id,patient,code"
    assert sorted(line.split(",")[1:] for line in lines[1:]) == sorted([[ids["p1"], "p1"], [ids["p2"], "p2"]])


def test_reading_a_view_renews_the_lease_and_a_cancel_stops_the_job(services, settings, monkeypatch):
    ids = _stored(services)
    monkeypatch.setattr(export_job, "HEARTBEAT_SECONDS", 0.0)
    r = _call(services, "POST", "ViewDefinition/$viewdefinition-export",
              _params(_ref_view(f"ViewDefinition/{ids['view']}"), _inline_view(OBS_VIEW)))
    jid = r.resource["parameter"][0]["valueString"]
    queue = JobQueue(services.db)
    beats: list[dict[str, Any] | None] = []

    class Counting(JobControl):
        def checkpoint(self, state: dict[str, Any] | None = None) -> None:
            beats.append(state)
            if state is None and len(beats) == 3:
                queue.cancel(jid)  # the client's DELETE arrives while the first view is read
            super().checkpoint(state)

    job = queue.claim("A", [export_job.KIND])
    assert job is not None
    with pytest.raises(LeaseLost):
        export_job.job_handler(services.fhir)(job, Counting(queue, job, "A"))
    assert None in beats  # lease renewals between checkpoints
    assert not (settings.data_dir / "exports" / "views" / jid).exists()


def test_files_are_plaintext_when_encryption_is_off(services, settings):
    ids = _stored(services)
    services.fhir.at_rest.encrypt = False
    r = _call(services, "POST", "ViewDefinition/$viewdefinition-export",
              _params({"name": "_format", "valueCode": "json"}, _ref_view(f"ViewDefinition/{ids['view']}")))
    jid = r.resource["parameter"][0]["valueString"]
    assert Worker(JobQueue(services.db), {export_job.KIND: export_job.job_handler(services.fhir)}).run_once()
    path = settings.data_dir / "exports" / "views" / jid / "001_patient_demographics.json"
    rows = orjson.loads(path.read_bytes())
    assert sorted(r["family"] for r in rows) == ["p1", "p2"]
    got = _call(services, "GET", "$viewdefinition-export-file", query=[("_jobId", jid), ("_file", path.name)])
    assert got.status == 200 and orjson.loads(b"".join(got.stream)) == rows


def test_requests_without_a_token_are_refused_when_auth_is_on(settings):
    from starlette.testclient import TestClient

    from medcloud.app import build_services, create_app

    s = settings.with_overrides(auth=True)
    svc = build_services(s)
    try:
        with TestClient(create_app(s, svc), base_url="http://testserver") as c:
            r = c.post(EXPORT, json=_params(_inline_view(OBS_VIEW)), headers=ASYNC)
            assert r.status_code == 401 and r.json()["resourceType"] == "OperationOutcome"
            assert c.get("/fhir/$viewdefinition-export-status", params={"_jobId": "x"}).status_code == 401
            assert c.get("/fhir/$viewdefinition-export-file", params={"_jobId": "x", "_file": "a"}).status_code == 401
            r = c.post(EXPORT, json=_params(_inline_view(OBS_VIEW)), headers={**ASYNC, "Authorization": "Bearer nope"})
            assert r.status_code == 401
    finally:
        svc.close()
