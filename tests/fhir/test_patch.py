"""patch (http.html#patch): JSON Patch (RFC 6902) and FHIRPath Patch (fhirpatch.html)."""

from __future__ import annotations

import copy

import pytest

from medcloud.errors import Invalid, Unprocessable
from medcloud.fhir.interactions._fhirpatch import apply

JSON_PATCH = "application/json-patch+json"
FHIR = "application/fhir+json"


def _patient(**extra):
    return {"resourceType": "Patient", "name": [{"family": "Chalmers", "given": ["Peter", "James"]}],
            "gender": "male", **extra}


def _op(kind, path, **parts):
    out = [{"name": "type", "valueCode": kind}, {"name": "path", "valueString": path}]
    for name, value in parts.items():
        if name == "name":
            out.append({"name": "name", "valueString": value})
        elif name in ("index", "source", "destination"):
            out.append({"name": name, "valueInteger": value})
        else:
            out.append({"name": "value", **value})
    return {"name": "operation", "part": out}


def _params(*ops):
    return {"resourceType": "Parameters", "parameter": list(ops)}


def _patch(client, path, doc, ctype=JSON_PATCH, **headers):
    return client.patch(f"/fhir/{path}", json=doc, headers={"Content-Type": ctype, **headers})


# -- over HTTP --------------------------------------------------------------------------------------


def test_json_patch_makes_a_new_version(client):
    client.put("/fhir/Patient/jp", json=_patient(id="jp"))
    r = _patch(client, "Patient/jp", [{"op": "replace", "path": "/gender", "value": "female"},
                                      {"op": "add", "path": "/name/0/given/-", "value": "Jim"},
                                      {"op": "remove", "path": "/name/0/given/0"}])
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["gender"] == "female" and body["name"][0]["given"] == ["James", "Jim"]
    assert body["meta"]["versionId"] == "2" and r.headers["etag"] == 'W/"2"'
    assert client.get("/fhir/Patient/jp/_history/1").json()["gender"] == "male"


def test_fhirpath_patch_over_http(client):
    client.put("/fhir/Patient/fp", json=_patient(id="fp"))
    r = _patch(client, "Patient/fp", _params(_op("replace", "Patient.gender", value={"valueCode": "other"})), FHIR)
    assert r.status_code == 200, r.text
    assert client.get("/fhir/Patient/fp").json()["gender"] == "other"


def test_json_patch_test_operation_failure_is_422_and_nothing_changes(client):
    client.put("/fhir/Patient/jt", json=_patient(id="jt"))
    r = _patch(client, "Patient/jt", [{"op": "replace", "path": "/gender", "value": "female"},
                                      {"op": "test", "path": "/gender", "value": "male"}])
    assert r.status_code == 422
    assert "operation 1" in r.json()["issue"][0]["diagnostics"]
    assert client.get("/fhir/Patient/jt").json()["meta"]["versionId"] == "1"


@pytest.mark.parametrize(
    ("doc", "index"),
    [
        ([{"op": "replace", "path": "/gender", "value": "female"}, {"op": "jump", "path": "/x"}], 1),
        ([{"op": "add", "path": "/gender"}], 0),
        ([{"op": "replace", "path": "/gender", "value": "f"}, {"op": "remove", "path": "gender"}], 1),
        ([{"op": "move", "path": "/gender"}], 0),
        (["not an object"], 0),
    ],
)
def test_malformed_json_patch_is_400_naming_the_operation(client, doc, index):
    client.put("/fhir/Patient/jm", json=_patient(id="jm"))
    r = _patch(client, "Patient/jm", doc)
    assert r.status_code == 400, r.text
    assert f"operation {index}" in r.json()["issue"][0]["diagnostics"]


def test_json_patch_document_must_be_an_array(client):
    client.put("/fhir/Patient/ja", json=_patient(id="ja"))
    assert _patch(client, "Patient/ja", {"op": "remove", "path": "/gender"}).status_code == 400


def test_json_patch_on_a_missing_path_is_422(client):
    client.put("/fhir/Patient/jx", json=_patient(id="jx"))
    r = _patch(client, "Patient/jx", [{"op": "remove", "path": "/birthDate"}])
    assert r.status_code == 422


def test_patch_that_changes_id_or_type_is_422(client):
    client.put("/fhir/Patient/ji", json=_patient(id="ji"))
    assert _patch(client, "Patient/ji", [{"op": "replace", "path": "/id", "value": "other"}]).status_code == 422
    assert _patch(client, "Patient/ji", [{"op": "replace", "path": "/resourceType",
                                          "value": "Group"}]).status_code == 422
    assert _patch(client, "Patient/ji", [{"op": "remove", "path": "/id"}]).status_code == 422


def test_patch_result_is_validated_like_an_update(client):
    client.put("/fhir/Patient/jv", json=_patient(id="jv"))
    r = _patch(client, "Patient/jv", [{"op": "replace", "path": "/gender", "value": 12}])
    assert r.status_code in (400, 422)
    assert client.get("/fhir/Patient/jv").json()["meta"]["versionId"] == "1"


def test_patch_honours_if_match(client):
    client.put("/fhir/Patient/jim", json=_patient(id="jim"))
    doc = [{"op": "replace", "path": "/gender", "value": "female"}]
    assert _patch(client, "Patient/jim", doc, **{"If-Match": 'W/"2"'}).status_code == 412
    assert _patch(client, "Patient/jim", doc, **{"If-Match": 'W/"1"'}).status_code == 200


def test_patch_of_unknown_is_404_and_of_deleted_is_410(client):
    doc = [{"op": "replace", "path": "/gender", "value": "female"}]
    assert _patch(client, "Patient/nobody", doc).status_code == 404
    client.put("/fhir/Patient/jd", json=_patient(id="jd"))
    client.delete("/fhir/Patient/jd")
    assert _patch(client, "Patient/jd", doc).status_code == 410


def test_patch_with_an_unsupported_media_type_is_415(client):
    client.put("/fhir/Patient/jmt", json=_patient(id="jmt"))
    r = client.patch("/fhir/Patient/jmt", content=b"<x/>", headers={"Content-Type": "application/xml-patch+xml"})
    assert r.status_code == 415


def test_conditional_patch(client):
    client.post("/fhir/Patient", json=_patient(identifier=[{"system": "s", "value": "cp1"}]))
    doc = [{"op": "replace", "path": "/gender", "value": "female"}]
    r = _patch(client, "Patient?identifier=s|cp1", doc)
    assert r.status_code == 200, r.text
    assert r.json()["gender"] == "female"
    assert _patch(client, "Patient?identifier=s|none", doc).status_code == 404
    client.post("/fhir/Patient", json=_patient(identifier=[{"system": "s", "value": "cp1"}]))
    assert _patch(client, "Patient?identifier=s|cp1", doc).status_code == 412


# -- FHIRPath Patch operations ------------------------------------------------------------------


def _apply(resource, *ops):
    return apply(copy.deepcopy(resource), _params(*ops))


def test_add_appends_to_a_repeating_element_and_creates_arrays():
    out = _apply(_patient(), _op("add", "Patient.name[0]", name="given", value={"valueString": "Jim"}),
                 _op("add", "Patient", name="identifier", value={"valueIdentifier": {"system": "s", "value": "1"}}))
    assert out["name"][0]["given"] == ["Peter", "James", "Jim"]
    assert out["identifier"] == [{"system": "s", "value": "1"}]


def test_add_a_non_repeating_element_and_refuses_an_existing_one():
    out = _apply(_patient(), _op("add", "Patient", name="birthDate", value={"valueDate": "1970-01-01"}))
    assert out["birthDate"] == "1970-01-01"
    with pytest.raises(Unprocessable):
        _apply(_patient(), _op("add", "Patient", name="gender", value={"valueCode": "female"}))


def test_add_an_anonymous_backbone_value_from_parts():
    op = _op("add", "Patient", name="contact", value={})
    op["part"][-1] = {"name": "value", "part": [
        {"name": "name", "valueHumanName": {"text": "a contact"}},
        {"name": "gender", "valueCode": "female"},
        {"name": "telecom", "valueContactPoint": {"system": "phone", "value": "555"}},
    ]}
    out = _apply(_patient(), op)
    assert out["contact"] == [{"name": {"text": "a contact"}, "gender": "female",
                               "telecom": [{"system": "phone", "value": "555"}]}]


def test_add_a_choice_element_uses_the_value_type():
    obs = {"resourceType": "Observation", "status": "final", "code": {"text": "x"}}
    out = _apply(obs, _op("add", "Observation", name="value", value={"valueQuantity": {"value": 5, "unit": "kg"}}))
    assert out["valueQuantity"] == {"value": 5, "unit": "kg"}


def test_insert_at_an_index_and_at_the_end():
    out = _apply(_patient(), _op("insert", "Patient.name[0].given", index=1, value={"valueString": "X"}),
                 _op("insert", "Patient.name[0].given", index=3, value={"valueString": "Z"}))
    assert out["name"][0]["given"] == ["Peter", "X", "James", "Z"]
    with pytest.raises(Unprocessable):
        _apply(_patient(), _op("insert", "Patient.name[0].given", index=5, value={"valueString": "X"}))


def test_insert_into_an_absent_list_creates_it():
    out = _apply(_patient(), _op("insert", "Patient.identifier", index=0, value={"valueIdentifier": {"value": "1"}}))
    assert out["identifier"] == [{"value": "1"}]


def test_delete_a_list_item_an_element_and_nothing():
    out = _apply(_patient(), _op("delete", "Patient.name[0].given[0]"), _op("delete", "Patient.gender"),
                 _op("delete", "Patient.birthDate"))
    assert out["name"][0]["given"] == ["James"] and "gender" not in out


def test_delete_of_the_last_item_removes_the_list():
    out = _apply(_patient(telecom=[{"system": "phone", "value": "1"}]), _op("delete", "Patient.telecom[0]"))
    assert "telecom" not in out


def test_delete_matching_several_is_422():
    with pytest.raises(Unprocessable, match="operation 0"):
        _apply(_patient(), _op("delete", "Patient.name[0].given"))


def test_replace_a_primitive_a_list_item_and_through_where():
    p = _patient(identifier=[{"system": "a", "value": "1"}, {"system": "b", "value": "2"}])
    out = _apply(p, _op("replace", "Patient.name[0].given[1]", value={"valueString": "Jo"}),
                 _op("replace", "Patient.identifier.where(system = 'b').value", value={"valueString": "22"}))
    assert out["name"][0]["given"] == ["Peter", "Jo"]
    assert out["identifier"][1] == {"system": "b", "value": "22"}


def test_replace_a_choice_element_with_another_type():
    obs = {"resourceType": "Observation", "status": "final", "code": {"text": "x"}, "valueQuantity": {"value": 1}}
    out = _apply(obs, _op("replace", "Observation.value", value={"valueString": "high"}))
    assert out["valueString"] == "high" and "valueQuantity" not in out
    out = _apply(obs, _op("replace", "Observation.value.ofType(Quantity).value", value={"valueDecimal": 2}))
    assert out["valueQuantity"] == {"value": 2}


def test_replace_needs_exactly_one_match():
    with pytest.raises(Unprocessable):
        _apply(_patient(), _op("replace", "Patient.birthDate", value={"valueDate": "2000-01-01"}))


def test_move_reorders_a_list():
    out = _apply(_patient(), _op("move", "Patient.name[0].given", source=0, destination=1))
    assert out["name"][0]["given"] == ["James", "Peter"]
    with pytest.raises(Unprocessable):
        _apply(_patient(), _op("move", "Patient.name[0].given", source=0, destination=2))


def test_extension_function_and_first_last():
    p = _patient(extension=[{"url": "u1", "valueString": "a"}, {"url": "u2", "valueString": "b"}])
    out = _apply(p, _op("replace", "Patient.extension('u2').value", value={"valueString": "c"}),
                 _op("delete", "Patient.name.first().given.last()"))
    assert out["extension"][1] == {"url": "u2", "valueString": "c"}
    assert out["name"][0]["given"] == ["Peter"]


@pytest.mark.parametrize(
    "params",
    [
        {"resourceType": "Patient"},
        _params(),
        _params({"name": "op", "part": []}),
        _params(_op("add", "Patient")),
        _params({"name": "operation", "part": [{"name": "type", "valueCode": "frobnicate"},
                                              {"name": "path", "valueString": "Patient"}]}),
        _params({"name": "operation", "part": [{"name": "type", "valueCode": "delete"}]}),
        _params(_op("insert", "Patient.name", value={"valueHumanName": {"text": "x"}})),
        _params(_op("delete", "Patient.name.unknownFunction()")),
        _params(_op("delete", "Patient..name")),
    ],
    ids=["not-parameters", "no-operations", "wrong-parameter-name", "add-without-name-or-value", "unknown-type",
         "no-path", "insert-without-index", "unsupported-function", "bad-path"],
)
def test_malformed_fhirpath_patch_is_invalid(params):
    with pytest.raises(Invalid) as info:
        apply(_patient(), params)
    assert not isinstance(info.value, Unprocessable)


def test_fhirpath_patch_error_names_the_operation_index(client):
    client.put("/fhir/Patient/fe", json=_patient(id="fe"))
    r = _patch(client, "Patient/fe", _params(_op("replace", "Patient.gender", value={"valueCode": "other"}),
                                             {"name": "operation", "part": [{"name": "type", "valueCode": "nope"}]}),
               FHIR)
    assert r.status_code == 400
    issue = r.json()["issue"][0]
    assert "operation 1" in issue["diagnostics"] and issue["expression"] == ["Parameters.parameter[1]"]
