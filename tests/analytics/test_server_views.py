"""ViewDefinition resources and ``$run`` through the HTTP app, on SQLite and PostgreSQL (``client``)."""

from __future__ import annotations

import csv
import io
import json

import duckdb
import pytest

from ._views import OBS_VIEW
from ._views import PATIENT_VIEW as VIEW


def _patient(client, family: str, birth: str = "1980-01-01") -> str:
    r = client.post("/fhir/Patient", json={"resourceType": "Patient", "name": [{"family": family}],
                                           "birthDate": birth})
    assert r.status_code == 201, r.text
    return str(r.json()["id"])


def _obs(client, pid: str, text: str) -> str:
    r = client.post("/fhir/Observation", json={"resourceType": "Observation", "status": "final",
                                               "code": {"text": text}, "subject": {"reference": f"Patient/{pid}"}})
    assert r.status_code == 201, r.text
    return str(r.json()["id"])


@pytest.fixture
def stored(client):
    ids = {"smith": _patient(client, "Smith", "1970-05-01"), "jones": _patient(client, "Jones", "1990-02-03")}
    r = client.post("/fhir/ViewDefinition", json=VIEW)
    assert r.status_code == 201, r.text
    ids["view"] = r.json()["id"]
    return ids


def _params(*entries: dict) -> dict:
    return {"resourceType": "Parameters", "parameter": list(entries)}


def test_create_read_update_history_and_delete_a_view_definition(client, stored):
    vid = stored["view"]
    r = client.get(f"/fhir/ViewDefinition/{vid}")
    assert r.status_code == 200
    assert r.json()["name"] == "patient_demographics" and r.json()["meta"]["versionId"] == "1"
    changed = {**r.json(), "status": "retired"}
    r = client.put(f"/fhir/ViewDefinition/{vid}", json=changed)
    assert r.status_code == 200 and r.json()["meta"]["versionId"] == "2"
    r = client.get(f"/fhir/ViewDefinition/{vid}/_history")
    assert r.status_code == 200 and len(r.json()["entry"]) == 2
    assert client.get(f"/fhir/ViewDefinition/{vid}/_history/1").json()["status"] == "active"
    assert client.delete(f"/fhir/ViewDefinition/{vid}").status_code == 204
    assert client.get(f"/fhir/ViewDefinition/{vid}").status_code == 410
    assert client.get(f"/fhir/ViewDefinition/{vid}/$run").status_code == 404


def test_search_view_definitions_by_name_url_and_status(client, stored):
    client.post("/fhir/ViewDefinition", json=OBS_VIEW)

    def names(query: str) -> set[str]:
        r = client.get(f"/fhir/ViewDefinition?{query}")
        assert r.status_code == 200, r.text
        return {e["resource"]["name"] for e in r.json().get("entry", [])}

    assert names("") == {"patient_demographics", "obs"}
    assert names("name=patient") == {"patient_demographics"}
    assert names("name:exact=patient") == set()
    assert names(f"url={VIEW['url']}") == {"patient_demographics"}
    assert names(f"url={VIEW['url']}|2.0") == set()
    assert names("status=draft") == {"obs"}
    assert names("status=active,draft") == {"patient_demographics", "obs"}
    assert names("resource=Observation") == {"obs"}
    r = client.get("/fhir/ViewDefinition?title=x")
    assert r.status_code == 400 and r.json()["issue"][0]["expression"] == ["title"]


def test_invalid_view_definitions_are_refused_with_the_location(client):
    bad = {**VIEW, "select": [{"column": [{"name": "id", "path": "name.where("}]}]}
    r = client.post("/fhir/ViewDefinition", json=bad)
    assert r.status_code == 422
    assert r.json()["issue"][0]["expression"] == ["select[0].column[0].path"]
    dup = {**VIEW, "select": [{"column": [{"name": "a", "path": "id"}, {"name": "a", "path": "id"}]}]}
    r = client.post("/fhir/ViewDefinition", json=dup)
    assert r.status_code == 422 and "a" in r.json()["issue"][0]["diagnostics"]
    r = client.post("/fhir/ViewDefinition", json={**VIEW, "resourceType": "Patient"})
    assert r.status_code == 400
    assert client.get("/fhir/ViewDefinition").json().get("total") == 0


def test_run_a_stored_view_in_each_format(client, stored):
    vid = stored["view"]
    r = client.get(f"/fhir/ViewDefinition/{vid}/$run", params={"_format": "csv"})
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/csv")
    rows = list(csv.DictReader(io.StringIO(r.text)))
    assert {(x["family"], x["birth_date"]) for x in rows} == {("Smith", "1970-05-01"), ("Jones", "1990-02-03")}

    r = client.get(f"/fhir/ViewDefinition/{vid}/$run", params={"_format": "csv", "header": "false"})
    assert r.text.count("\n") == 2 and "family" not in r.text

    r = client.get(f"/fhir/ViewDefinition/{vid}/$run", params={"_format": "ndjson"})
    assert r.headers["content-type"].startswith("application/x-ndjson")
    assert sorted(json.loads(line)["family"] for line in r.text.splitlines()) == ["Jones", "Smith"]

    r = client.get(f"/fhir/ViewDefinition/{vid}/$run", headers={"Accept": "application/json"})
    assert sorted(row["id"] for row in r.json()) == sorted([stored["smith"], stored["jones"]])

    r = client.get(f"/fhir/ViewDefinition/{vid}/$run", params={"_format": "parquet"})
    assert r.status_code == 200 and r.content[:4] == b"PAR1"
    con = duckdb.connect()
    con.execute("CREATE TABLE t AS SELECT * FROM read_parquet(?)", [_tmp_parquet(r.content)])
    assert con.execute("SELECT family FROM t ORDER BY family").fetchall() == [("Jones",), ("Smith",)]
    assert str(con.execute("SELECT typeof(birth_date) FROM t LIMIT 1").fetchone()[0]) == "VARCHAR"


def _tmp_parquet(data: bytes) -> str:
    import tempfile

    with tempfile.NamedTemporaryFile(suffix=".parquet", delete=False) as fh:
        fh.write(data)
    return fh.name


def test_run_inline_view_by_reference_and_with_inline_resources(client, stored):
    r = client.post("/fhir/ViewDefinition/$run?_format=json", json=_params({"name": "viewResource",
                                                                             "resource": VIEW}))
    assert r.status_code == 200 and len(r.json()) == 2
    for ref in (f"ViewDefinition/{stored['view']}", VIEW["url"], f"{VIEW['url']}|1.0",
                f"http://testserver/fhir/ViewDefinition/{stored['view']}"):
        r = client.post("/fhir/ViewDefinition/$run", json=_params({"name": "viewReference", "valueReference":
                                                                   {"reference": ref}}, {"name": "_format",
                                                                                         "valueCode": "json"}))
        assert r.status_code == 200 and len(r.json()) == 2, (ref, r.text)
    r = client.get("/fhir/ViewDefinition/$run", params={"viewReference": f"ViewDefinition/{stored['view']}",
                                                        "_limit": "1", "_format": "ndjson"})
    assert r.status_code == 200 and len(r.text.splitlines()) == 1
    inline = [{"name": "resource", "resource": {"resourceType": "Patient", "id": "pt-1",
                                                "name": [{"family": "Cole"}], "birthDate": "2012-03-30"}},
              {"name": "resource", "resource": {"resourceType": "Observation", "id": "o1", "status": "final"}}]
    r = client.post("/fhir/ViewDefinition/$run", params={"_format": "csv"},
                    json=_params({"name": "viewResource", "resource": VIEW}, *inline))
    assert r.status_code == 200
    assert r.text.splitlines() == ["id,family,birth_date", "pt-1,Cole,2012-03-30"]


def test_run_filters_by_patient_group_and_since(client, stored):
    smith, jones = stored["smith"], stored["jones"]
    _obs(client, smith, "a")
    _obs(client, jones, "b")
    run = "/fhir/ViewDefinition/$run"
    body = {"name": "viewResource", "resource": OBS_VIEW}
    r = client.post(run, params={"_format": "json", "patient": f"Patient/{smith}"}, json=_params(body))
    assert r.status_code == 200 and [x["code"] for x in r.json()] == ["a"]
    group = client.post("/fhir/Group", json={"resourceType": "Group", "type": "person", "actual": True,
                                             "member": [{"entity": {"reference": f"Patient/{jones}"}}]}).json()
    r = client.post(run, params={"_format": "json", "group": f"Group/{group['id']}"}, json=_params(body))
    assert [x["code"] for x in r.json()] == ["b"]
    last = client.get(f"/fhir/Patient/{jones}").json()["meta"]["lastUpdated"]
    r = client.post(run, params={"_format": "json", "_since": last}, json=_params(body))
    assert sorted(x["code"] for x in r.json()) == ["a", "b"]  # both observations were written after
    r = client.post(run, params={"_format": "json", "_since": "2999-01-01T00:00:00Z"}, json=_params(body))
    assert r.json() == []


@pytest.mark.parametrize(("query", "body", "status", "expression"), [
    ({"_format": "xml"}, True, 400, "_format"),
    ({"_format": "json", "source": "s3://bucket"}, True, 400, "source"),
    ({"_format": "json", "_limit": "0"}, True, 400, "_limit"),
    ({"_format": "json", "_since": "yesterday"}, True, 400, "_since"),
    ({"_format": "json", "frobnicate": "1"}, True, 400, "frobnicate"),
    ({"_format": "json", "patient": "Patient/nobody"}, True, 400, "patient"),
    ({"_format": "json", "group": "Group/nothing"}, True, 400, "group"),
    ({"_format": "json"}, False, 400, None),
])
def test_bad_run_parameters_answer_an_operation_outcome(client, stored, query, body, status, expression):
    payload = _params({"name": "viewResource", "resource": VIEW}) if body else _params()
    r = client.post("/fhir/ViewDefinition/$run", params=query, json=payload)
    assert r.status_code == status, r.text
    issue = r.json()["issue"][0]
    assert r.json()["resourceType"] == "OperationOutcome"
    if expression:
        assert issue["expression"] == [expression]


def test_run_of_an_invalid_inline_view_is_422_located_under_view_resource(client):
    bad = {**VIEW, "select": [{"column": [{"name": "id", "path": "invalid.("}]}]}
    r = client.post("/fhir/ViewDefinition/$run", json=_params({"name": "viewResource", "resource": bad}))
    assert r.status_code == 422
    assert r.json()["issue"][0]["expression"] == ["viewResource.select[0].column[0].path"]


def test_run_of_an_unknown_view_is_404_and_both_view_parameters_are_400(client, stored):
    assert client.get("/fhir/ViewDefinition/non-existent/$run").status_code == 404
    both = _params({"name": "viewResource", "resource": VIEW},
                   {"name": "viewReference", "valueReference": {"reference": f"ViewDefinition/{stored['view']}"}})
    assert client.post("/fhir/ViewDefinition/$run", json=both).status_code == 400
    inst = client.post(f"/fhir/ViewDefinition/{stored['view']}/$run", json=_params({"name": "viewResource",
                                                                                 "resource": VIEW}))
    assert inst.status_code == 400


def test_evaluation_errors_are_422_not_a_partial_body(client, stored):
    many = {**VIEW, "select": [{"column": [{"name": "given", "path": "name.family"}]}]}
    client.post("/fhir/Patient", json={"resourceType": "Patient", "name": [{"family": "A"}, {"family": "B"}]})
    r = client.post("/fhir/ViewDefinition/$run", json=_params({"name": "viewResource", "resource": many}))
    assert r.status_code == 422 and r.json()["resourceType"] == "OperationOutcome"


def test_capability_statement_lists_view_definition_and_run(client):
    cs = client.get("/fhir/metadata").json()
    vd = next(r for r in cs["rest"][0]["resource"] if r["type"] == "ViewDefinition")
    assert {"name": "run", "definition": "http://sql-on-fhir.org/OperationDefinition/$run"} in vd["operation"]
    assert {"read", "create", "search-type", "update", "delete"} <= {i["code"] for i in vd["interaction"]}
    assert all(o["name"] != "run" for r in cs["rest"][0]["resource"] if r["type"] == "Patient"
               for o in r.get("operation", []))
