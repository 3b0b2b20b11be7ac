"""The operations this package registers show up in the CapabilityStatement with their definitions."""

from __future__ import annotations

BULK = "http://hl7.org/fhir/uv/bulkdata/OperationDefinition/"


def test_capability_statement_lists_operations_with_their_definitions(client):
    cs = client.get("/fhir/metadata").json()
    rest = cs["rest"][0]
    system = {o["name"]: o["definition"] for o in rest["operation"]}
    assert system == {"export": BULK + "export", "meta": "http://hl7.org/fhir/OperationDefinition/Resource-meta",
                      "viewdefinition-export": "http://sql-on-fhir.org/OperationDefinition/$viewdefinition-export",
                      "sqlquery-run": "http://sql-on-fhir.org/OperationDefinition/$sqlquery-run"}
    by_type = {r["type"]: {o["name"]: o["definition"] for o in r.get("operation", [])} for r in rest["resource"]}
    assert by_type["Patient"]["everything"] == "http://hl7.org/fhir/OperationDefinition/Patient-everything"
    assert by_type["Patient"]["export"] == BULK + "patient-export"
    assert by_type["Group"]["export"] == BULK + "group-export"
    assert "export" not in by_type["Observation"] and "everything" not in by_type["Observation"]
    assert by_type["Library"]["sqlquery-run"] == "http://sql-on-fhir.org/OperationDefinition/$sqlquery-run"
    assert {"validate", "meta", "meta-add", "meta-delete"} <= set(by_type["Observation"])
    assert "http://hl7.org/fhir/uv/bulkdata/CapabilityStatement/bulk-data" in cs["instantiates"]
