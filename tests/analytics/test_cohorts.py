"""Cohorts on the server (SQLite and PostgreSQL): define, run, versions, Group export, authorization."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import orjson
import pytest
from typer.testing import CliRunner

from medcloud.analytics import cohorts
from medcloud.cli import app
from medcloud.fhir import router
from medcloud.fhir.exchange import SYSTEM, FhirRequest, Principal
from medcloud.security.policy import SmartPolicy

DIABETES = "http://snomed.info/sct|44054006"
PATIENTS_VIEW = {"resourceType": "ViewDefinition", "name": "patients", "resource": "Patient", "status": "active",
                 "select": [{"column": [{"name": "id", "path": "getResourceKey()"},
                                        {"name": "gender", "path": "gender"}]}]}


def _call(services: Any, method: str, path: str, body: Any = None, principal: Principal = SYSTEM) -> Any:
    resp = router.handle(services.fhir, FhirRequest(method, path, [], body=body, principal=principal))
    if resp.resource is None and resp.raw:
        resp.resource = orjson.loads(resp.raw)
    elif resp.resource is not None:  # search and history entries are pre-serialised fragments
        resp.resource = orjson.loads(orjson.dumps(resp.resource))
    return resp


@pytest.fixture
def people(services: Any) -> dict[str, str]:
    """p1 (f, diabetic), p2 (m, diabetic), p3 (f), p4 (m, hypertension)."""
    for pid, gender in (("p1", "female"), ("p2", "male"), ("p3", "female"), ("p4", "male")):
        assert _call(services, "PUT", f"Patient/{pid}", {"resourceType": "Patient", "id": pid,
                                                         "gender": gender}).status == 201
    for cid, pid, code in (("c1", "p1", "44054006"), ("c2", "p2", "44054006"), ("c3", "p4", "38341003")):
        cond = {"resourceType": "Condition", "id": cid, "subject": {"reference": f"Patient/{pid}"},
                "code": {"coding": [{"system": "http://snomed.info/sct", "code": code}]}}
        assert _call(services, "PUT", f"Condition/{cid}", cond).status == 201
    return {}


def _define(services: Any, definition: cohorts.CohortDefinition) -> Any:
    definition.check()
    resp = _call(services, "PUT", f"Group/{definition.id}", definition.to_group())
    assert resp.status in (200, 201), resp.resource
    return resp


def _members(group: dict[str, Any]) -> list[str]:
    return [m["entity"]["reference"] for m in group.get("member", [])]


def test_search_cohort_resolves_conditions_to_patients_and_each_run_is_a_version(services, people):
    d = cohorts.CohortDefinition("diabetes", cohorts.FHIR_QUERY, f"Condition?code={DIABETES}", "Diabetes")
    assert _define(services, d).status == 201
    run = _call(services, "POST", "Group/diabetes/$cohort-run")
    assert run.status == 200, run.resource
    assert run.resource["actual"] is True and run.resource["quantity"] == 2
    assert _members(run.resource) == ["Patient/p1", "Patient/p2"]
    assert run.resource["extension"][0]["valueReference"]["reference"] == "Group/diabetes/_history/1"
    # A new patient, a new definition version, a new run: history keeps both runs.
    _call(services, "PUT", "Condition/c4", {"resourceType": "Condition", "id": "c4",
                                            "subject": {"reference": "Patient/p3"},
                                            "code": {"coding": [{"system": "http://snomed.info/sct",
                                                                 "code": "44054006"}]}})
    assert _define(services, d).resource["meta"]["versionId"] == "2"
    again = _call(services, "POST", "Group/diabetes/$cohort-run").resource
    assert again["meta"]["versionId"] == "2" and again["quantity"] == 3
    assert again["extension"][0]["valueReference"]["reference"] == "Group/diabetes/_history/2"
    history = _call(services, "GET", "Group/diabetes-members/_history").resource
    assert sorted(e["resource"]["quantity"] for e in history["entry"]) == [2, 3]
    listed = _call(services, "GET", "Group/diabetes").resource
    assert cohorts.CohortDefinition.from_group(listed) == d


def test_sql_cohort_over_views_of_the_store(services, people):
    d = cohorts.CohortDefinition("women", cohorts.SQL,
                                 "SELECT id AS patient_id FROM patients WHERE gender = 'female'",
                                 views=(PATIENTS_VIEW,))
    _define(services, d)
    run = _call(services, "POST", "Group/women/$cohort-run")
    assert run.status == 200 and _members(run.resource) == ["Patient/p1", "Patient/p3"]


@pytest.mark.parametrize("sql", [
    "SELECT id AS patient_id FROM patients WHERE (SELECT count(*) FROM read_text('/etc/hostname')) > 0",
    "COPY (SELECT id AS patient_id FROM patients) TO '{out}'",
    "SET enable_external_access = true; "
    "SELECT id AS patient_id FROM patients WHERE (SELECT count(*) FROM read_text('/etc/hostname')) > 0",
])
def test_cohort_sql_cannot_touch_the_servers_files(services, people, tmp_path: Path, sql: str):
    out = tmp_path / "leak.csv"
    d = cohorts.CohortDefinition("leak", cohorts.SQL, sql.format(out=out), views=(PATIENTS_VIEW,))
    _define(services, d)
    run = _call(services, "POST", "Group/leak/$cohort-run")
    assert run.status in (400, 422), run.resource
    assert run.resource["resourceType"] == "OperationOutcome"
    assert not out.exists()


def test_group_export_of_a_materialised_cohort_returns_its_members_data(services, people, client):
    _define(services, cohorts.CohortDefinition("diabetes", cohorts.FHIR_QUERY, f"Condition?code={DIABETES}"))
    run = client.post("/fhir/Group/diabetes/$cohort-run")  # through the HTTP edge
    assert run.status_code == 200 and run.json()["quantity"] == 2
    assert run.headers["Location"].endswith("/Group/diabetes-members/_history/1")
    kick = client.get("/fhir/Group/diabetes-members/$export", headers={"Prefer": "respond-async"})
    assert kick.status_code == 202, kick.text
    status_url = kick.headers["Content-Location"].split("testserver", 1)[1]
    deadline = time.monotonic() + 60
    while (r := client.get(status_url)).status_code == 202:
        assert time.monotonic() < deadline
        time.sleep(0.2)
    assert r.status_code == 200, r.text
    ids = set()
    for f in r.json()["output"]:
        body = client.get(f["url"].split("testserver", 1)[1]).text
        ids |= {f"{(d := json.loads(line))['resourceType']}/{d['id']}" for line in body.splitlines() if line}
    assert {"Patient/p1", "Patient/p2", "Condition/c1", "Condition/c2"} <= ids
    assert not {"Patient/p3", "Patient/p4", "Condition/c3"} & ids


def test_patient_scoped_token_cannot_run_a_population_cohort(services, people):
    _define(services, cohorts.CohortDefinition("diabetes", cohorts.FHIR_QUERY, f"Condition?code={DIABETES}"))
    services.fhir.guard.policy = SmartPolicy()
    me = Principal(subject="app", scopes=("patient/*.cruds",), patient="p1")
    r = _call(services, "POST", "Group/diabetes/$cohort-run", principal=me)
    assert r.status in (403, 404) and r.resource["resourceType"] == "OperationOutcome"
    assert _call(services, "GET", "Group/diabetes-members", principal=SYSTEM).status == 404  # nothing written
    staff = Principal(subject="analyst", scopes=("user/*.cruds",))
    assert _call(services, "POST", "Group/diabetes/$cohort-run", principal=staff).status == 200


def test_patient_scope_is_refused_with_403_when_it_may_read_the_definition(services, people):
    # Group is in the Patient compartment only through members; a definition has none, so make the
    # policy see it as readable and check the population rule itself answers.
    _define(services, cohorts.CohortDefinition("diabetes", cohorts.FHIR_QUERY, f"Condition?code={DIABETES}"))
    services.fhir.guard.policy = SmartPolicy(shared_types=("Group",))
    me = Principal(subject="app", scopes=("patient/*.cruds",), patient="p1")
    r = _call(services, "POST", "Group/diabetes/$cohort-run", principal=me)
    assert r.status == 403 and "population-level" in r.resource["issue"][0]["diagnostics"]


def test_bad_cohorts_are_clear_errors_and_write_nothing(services, people):
    with pytest.raises(cohorts.Invalid, match="not a FHIR resource type"):
        cohorts.CohortDefinition("x", cohorts.FHIR_QUERY, "Nonsense?code=1").check()
    with pytest.raises(cohorts.Invalid, match="result parameter"):
        cohorts.CohortDefinition("x", cohorts.FHIR_QUERY, "Patient?_count=5").check()
    _define(services, cohorts.CohortDefinition("odd", cohorts.FHIR_QUERY, "Condition?frobnicate=1"))
    r = _call(services, "POST", "Group/odd/$cohort-run")
    assert r.status == 400 and "frobnicate" in r.resource["issue"][0]["diagnostics"]
    _define(services, cohorts.CohortDefinition("badsql", cohorts.SQL, "SELECT nope AS patient_id FROM patients",
                                               views=(PATIENTS_VIEW,)))
    r = _call(services, "POST", "Group/badsql/$cohort-run")
    assert r.status == 400 and "nope" in r.resource["issue"][0]["diagnostics"]
    for gid in ("odd-members", "badsql-members"):
        assert _call(services, "GET", f"Group/{gid}").status == 404
    plain = {"resourceType": "Group", "id": "plain", "type": "person", "actual": True}
    _call(services, "PUT", "Group/plain", plain)
    assert _call(services, "POST", "Group/plain/$cohort-run").status == 400


# ---------------------------------------------------------------- CLI

runner = CliRunner()


def _cli(settings: Any, *args: str) -> Any:
    return runner.invoke(app, ["cohort", *args, "--data-dir", str(settings.data_dir), "--db", settings.db_url])


def test_cli_define_run_list_and_sql_over_a_folder(services, people, settings, tmp_path: Path):
    r = _cli(settings, "define", "diabetes", "--search", f"Condition?code={DIABETES}", "--title", "Diabetes")
    assert r.exit_code == 0, r.output
    r = _cli(settings, "run", "diabetes", "--out", str(tmp_path / "m.csv"))
    assert r.exit_code == 0 and "2 patients" in r.output, r.output
    assert (tmp_path / "m.csv").read_text() == "patient_id\np1\np2\n"
    folder = tmp_path / "export"
    folder.mkdir()
    (folder / "Patient.ndjson").write_text("".join(json.dumps({"resourceType": "Patient", "id": f"x{i}",
                                                               "gender": g}) + "\n"
                                                   for i, g in enumerate(["female", "male", "female"])))
    (tmp_path / "view.json").write_text(json.dumps(PATIENTS_VIEW))
    (tmp_path / "q.sql").write_text("SELECT id AS patient_id FROM patients WHERE gender = 'female'")
    r = _cli(settings, "define", "women", "--sql", str(tmp_path / "q.sql"), "--view", str(tmp_path / "view.json"))
    assert r.exit_code == 0, r.output
    r = _cli(settings, "run", "women", "--source", str(folder))
    assert r.exit_code == 0 and "2 patients" in r.output, r.output
    r = _cli(settings, "list")
    assert r.exit_code == 0 and "diabetes" in r.output and "women" in r.output and "run v1" in r.output


def test_cli_bad_search_is_refused_before_it_is_saved(services, people, settings):
    r = _cli(settings, "define", "bad", "--search", "Condition?frobnicate=1")
    assert r.exit_code == 3 and "frobnicate" in r.output
    assert _call(services, "GET", "Group/bad").status == 404
    r = _cli(settings, "run", "missing")
    assert r.exit_code == 3 and "missing" in r.output
