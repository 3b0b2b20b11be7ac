"""SQLQuery Libraries and ``$sqlquery-run`` (SQL-on-FHIR v2 SQLQueryRun), through the HTTP app on both backends."""

from __future__ import annotations

import base64
import csv
import io
import json
from typing import Any

import duckdb
import pytest

from medcloud.analytics import sqlquery
from medcloud.errors import Invalid

from ._views import OBS_VIEW, PATIENT_VIEW

OBS = {**OBS_VIEW, "url": "http://example.org/ViewDefinition/obs"}
SQL = ("SELECT p.family, count(o.id) AS n, min(CAST(p.birth_date AS DATE)) AS born FROM patient p "
       "LEFT JOIN obs o ON o.patient = p.id WHERE p.birth_date >= :from_date AND p.family <> :skip "
       "GROUP BY p.family ORDER BY p.family")


def _library(sql: str = SQL, params: list[dict[str, Any]] | None = None, **extra: Any) -> dict[str, Any]:
    return {
        "resourceType": "Library", "status": "active", "url": "http://example.org/Library/by-family",
        "type": {"coding": [{"system": sqlquery.LIBRARY_TYPES, "code": "sql-query"}]},
        "relatedArtifact": [
            {"type": "depends-on", "resource": PATIENT_VIEW["url"], "label": "patient"},
            {"type": "depends-on", "resource": OBS["url"], "label": "obs"},
        ],
        "parameter": params if params is not None else [
            {"name": "from_date", "type": "date", "use": "in"}, {"name": "skip", "type": "string", "use": "in"}],
        "content": [{"contentType": "application/sql", "data": base64.b64encode(sql.encode()).decode(),
                     "extension": [{"url": sqlquery.SQL_TEXT, "valueString": sql}]}],
        **extra,
    }


def _values(from_date: str = "1960-01-01", skip: str = "nobody") -> dict[str, Any]:
    return {"name": "parameters", "resource": {"resourceType": "Parameters", "parameter": [
        {"name": "from_date", "valueDate": from_date}, {"name": "skip", "valueString": skip}]}}


def _params(*entries: dict[str, Any]) -> dict[str, Any]:
    return {"resourceType": "Parameters", "parameter": list(entries)}


@pytest.fixture
def world(client):
    ids = {}
    for family, born in (("Smith", "1970-05-01"), ("Jones", "1990-02-03"), ("Old", "1920-01-01")):
        r = client.post("/fhir/Patient", json={"resourceType": "Patient", "name": [{"family": family}],
                                               "birthDate": born})
        assert r.status_code == 201, r.text
        ids[family] = r.json()["id"]
    for text in ("a", "b"):
        r = client.post("/fhir/Observation", json={"resourceType": "Observation", "status": "final",
                                                   "code": {"text": text},
                                                   "subject": {"reference": f"Patient/{ids['Smith']}"}})
        assert r.status_code == 201, r.text
    for view in (PATIENT_VIEW, OBS):
        assert client.post("/fhir/ViewDefinition", json=view).status_code == 201
    r = client.post("/fhir/Library", json=_library())
    assert r.status_code == 201, r.text
    ids["library"] = r.json()["id"]
    return ids


def test_instance_level_fhir_format_binds_parameters_and_types_the_columns(client, world):
    r = client.post(f"/fhir/Library/{world['library']}/$sqlquery-run",
                    json=_params({"name": "_format", "valueCode": "fhir"}, _values()))
    assert r.status_code == 200, r.text
    rows = [{p["name"]: p for p in row["part"]} for row in r.json()["parameter"]]
    assert [row["family"]["valueString"] for row in rows] == ["Jones", "Smith"]  # Old is before from_date
    assert [row["n"]["valueInteger64"] for row in rows] == ["0", "2"]  # count() is BIGINT
    assert rows[1]["born"] == {"name": "born", "valueDate": "1970-05-01"}


@pytest.mark.parametrize("fmt", ["csv", "json", "ndjson", "parquet"])
def test_flat_formats_by_reference_at_type_level(client, world, tmp_path, fmt):
    r = client.post("/fhir/Library/$sqlquery-run", json=_params(
        {"name": "_format", "valueCode": fmt}, {"name": "queryReference", "valueReference": {
            "reference": f"Library/{world['library']}"}}, _values(skip="Jones")))
    assert r.status_code == 200, r.text
    if fmt == "csv":
        assert list(csv.reader(io.StringIO(r.text))) == [["family", "n", "born"], ["Smith", "2", "1970-05-01"]]
    elif fmt == "json":
        assert r.json() == [{"family": "Smith", "n": 2, "born": "1970-05-01"}]
    elif fmt == "ndjson":
        assert [json.loads(line) for line in r.text.splitlines()] == [{"family": "Smith", "n": 2, "born": "1970-05-01"}]
    else:
        (tmp_path / "r.parquet").write_bytes(r.content)
        con = duckdb.connect()
        assert con.execute(f"SELECT family, n, born::VARCHAR FROM '{tmp_path / 'r.parquet'}'").fetchall() == [
            ("Smith", 2, "1970-05-01")]
        assert dict(con.execute(f"DESCRIBE SELECT * FROM '{tmp_path / 'r.parquet'}'").fetchall()[i][:2]
                    for i in range(3))["born"] == "DATE"


def test_system_level_with_canonical_url_and_parameter_parts(client, world):
    r = client.post("/fhir/$sqlquery-run", json=_params(
        {"name": "_format", "valueCode": "json"},
        {"name": "queryReference", "valueReference": {"reference": "http://example.org/Library/by-family"}},
        {"name": "parameter", "part": [{"name": "name", "valueString": "from_date"},
                                       {"name": "value", "valueDate": "1900-01-01"}]},
        {"name": "parameter", "part": [{"name": "name", "valueString": "skip"},
                                       {"name": "value", "valueString": "Smith"}]}))
    assert r.status_code == 200, r.text
    assert [row["family"] for row in r.json()] == ["Jones", "Old"]


def test_inline_library_and_injection_stays_a_value(client, world):
    r = client.post("/fhir/Library/$sqlquery-run", json=_params(
        {"name": "_format", "valueCode": "json"}, {"name": "queryResource", "resource": _library()},
        _values(skip="x' OR '1'='1")))
    assert r.status_code == 200, r.text
    assert [row["family"] for row in r.json()] == ["Jones", "Smith"]  # the quote is data, not SQL


@pytest.mark.parametrize(("body", "status", "says"), [
    (_params(_values() | {"resource": {"resourceType": "Parameters", "parameter": [
        {"name": "from_date", "valueDate": "2000-01-01"}]}}), 400, "missing parameter(s) skip"),
    (_params({"name": "parameters", "resource": {"resourceType": "Parameters", "parameter": [
        {"name": "from_date", "valueString": "2000-01-01"}, {"name": "skip", "valueString": "a"}]}}),
     400, "declared date"),
    (_params({"name": "parameters", "resource": {"resourceType": "Parameters", "parameter": [
        {"name": "from_date", "valueDate": "2000-01-01"}, {"name": "skip", "valueString": "a"},
        {"name": "other", "valueString": "a"}]}}), 400, "unknown parameter(s) other"),
    (_params({"name": "_format", "valueCode": "xml"}, _values()), 400, "not supported"),
])
def test_bad_parameters_are_400(client, world, body, status, says):
    r = client.post(f"/fhir/Library/{world['library']}/$sqlquery-run", json=body)
    assert r.status_code == status, r.text
    assert says in json.dumps(r.json())


def test_missing_library_or_view_is_404_and_sql_errors_are_422(client, world):
    r = client.post("/fhir/Library/nope/$sqlquery-run", json=_params(_values()))
    assert r.status_code == 404
    lib = _library()
    lib["relatedArtifact"][1]["resource"] = "http://example.org/ViewDefinition/none"
    r = client.post("/fhir/$sqlquery-run", json=_params({"name": "queryResource", "resource": lib}, _values()))
    assert r.status_code == 404 and "not on this server" in r.text
    bad = _library("SELECT no_such_column FROM patient", params=[])
    r = client.post("/fhir/$sqlquery-run", json=_params({"name": "queryResource", "resource": bad}))
    assert r.status_code == 422, r.text
    lists = _library("SELECT [1, 2] AS l FROM patient", params=[])
    r = client.post("/fhir/$sqlquery-run", json=_params({"name": "queryResource", "resource": lists},
                                                         {"name": "_format", "valueCode": "fhir"}))
    assert r.status_code == 422 and "no FHIR type" in r.text


@pytest.mark.parametrize("sql", [
    "SELECT * FROM read_text('/etc/hostname')",
    "COPY patient TO '/tmp/medcloud-sqlquery-leak.csv'",
    "DROP TABLE patient",
    "SELECT 1; SELECT 2",
])
def test_only_one_sandboxed_select_runs(client, world, sql):
    r = client.post("/fhir/$sqlquery-run", json=_params({"name": "queryResource", "resource": _library(sql, [])}))
    assert r.status_code in (400, 422), r.text
    assert r.json()["resourceType"] == "OperationOutcome"


def test_the_caller_sees_only_what_it_may_read(services, world):
    from medcloud.fhir import router
    from medcloud.fhir.exchange import FhirRequest, Principal

    body = _params({"name": "_format", "valueCode": "fhir"}, _values(from_date="1900-01-01"))
    path = f"Library/{world['library']}/$sqlquery-run"
    from medcloud.security.policy import SmartPolicy

    services.fhir.guard.policy = SmartPolicy()
    confined = Principal(subject="app", scopes=("patient/*.rs", "user/Library.rs"), patient=world["Smith"])
    r = router.handle(services.fhir, FhirRequest("POST", path, [], body=body, principal=confined))
    assert r.status == 200, r.resource
    assert [p["valueString"] for row in r.resource["parameter"] for p in row["part"] if p["name"] == "family"] == [
        "Smith"]
    no_obs = Principal(subject="app", scopes=("user/Patient.rs", "user/Library.rs", "user/ViewDefinition.rs"))
    r = router.handle(services.fhir, FhirRequest("POST", path, [], body=body, principal=no_obs))
    assert r.status == 403


def test_placeholders_are_replaced_outside_literals_and_comments_only() -> None:
    sql = "SELECT ':a', \"x:a\", y::INTEGER, l[1:a] FROM t -- :a\nWHERE b = :a /* :a */ AND c = :ab"
    assert sqlquery.placeholders(sql, {"a"}) == (
        "SELECT ':a', \"x:a\", y::INTEGER, l[1:a] FROM t -- :a\nWHERE b = $a /* :a */ AND c = :ab")


def test_library_validation_names_the_element() -> None:
    with pytest.raises(Invalid) as e:
        sqlquery.parse_library({**_library(), "type": {"coding": [{"code": "logic-library"}]}})
    assert e.value.issues[0].expression == ("Library.type",)
    lib = _library()
    lib["relatedArtifact"][1]["label"] = "patient"
    with pytest.raises(Invalid, match="used twice"):
        sqlquery.parse_library(lib)
    lib = _library()
    lib["content"] = [{"contentType": "application/sql;dialect=postgresql", "data": "U0VMRUNUIDE="}]
    with pytest.raises(Invalid, match="no application/sql content"):
        sqlquery.parse_library(lib)
    lib["content"].append({"contentType": "application/sql;dialect=duckdb",
                           "data": base64.b64encode(b"SELECT 2").decode()})
    assert sqlquery.parse_library(lib).sql == "SELECT 2"
