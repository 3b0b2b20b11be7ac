"""Schema-aware DuckDB compilation gives the same rows as the general collection path.

The compiler reads members the R4 schema knows with plain JSON extraction (single values, folded
JSONPaths); ``schema_aware=False`` reads everything through the general path. Both must agree on
valid FHIR, and on elements the schema does not know the general path must still be taken.
"""

from __future__ import annotations

from typing import Any

import pytest

from medcloud.analytics import DuckDBEngine
from medcloud.fhir.definitions import elements

PATIENTS: list[dict[str, Any]] = [
    {
        "resourceType": "Patient", "id": "p1", "gender": "female", "birthDate": "1970-06-01", "active": True,
        "name": [{"use": "official", "family": "Doe", "given": ["Jane", "Q"]}, {"use": "nickname", "given": ["JJ"]}],
        "address": [{"city": "Oslo", "line": ["a", "b"]}, {"city": "Bergen"}],
        "deceasedDateTime": "2020-01-02T03:04:05Z",
        "extension": [
            {"url": "http://hl7.org/fhir/us/core/StructureDefinition/us-core-race",
             "extension": [{"url": "ombCategory", "valueCoding": {"system": "urn:oid:2.16.840.1.113883.6.238",
                                                                  "code": "2106-3", "display": "White"}},
                           {"url": "text", "valueString": "White"}]},
            {"url": "http://x/n", "valueInteger": 3},
        ],
        "contact": [{"name": {"family": "Kin"}, "telecom": [{"system": "phone", "value": "1"}]}],
        "multipleBirthInteger": 2,
    },
    {"resourceType": "Patient", "id": "p2", "deceasedBoolean": False, "name": [{"family": "Roe"}]},
    {"resourceType": "Patient", "id": "p3"},
]
OBSERVATIONS: list[dict[str, Any]] = [
    {"resourceType": "Observation", "id": "o1", "status": "final",
     "code": {"coding": [{"system": "http://loinc.org", "code": "8480-6"}, {"system": "s", "code": "x"}]},
     "subject": {"reference": "Patient/p1"}, "valueQuantity": {"value": 120.5, "unit": "mm[Hg]"},
     "component": [{"code": {"coding": [{"code": "a"}]}, "valueQuantity": {"value": 1}},
                   {"code": {"coding": [{"code": "b"}]}, "valueString": "s"}],
     "effectivePeriod": {"start": "2020-01-01", "end": "2020-02-01T10:00:00Z"}},
    {"resourceType": "Observation", "id": "o2", "status": "amended", "code": {"text": "t"},
     "valueString": "v", "effectiveDateTime": "2021-05-05"},
]

PATIENT_PATHS = [
    "getResourceKey()", "gender", "birthDate", "active", "name.family", "name.given",
    "name.where(use = 'official').family.first()", "name.where(use = 'official').given.join(' ')",
    "name.given.join(',')", "name.given.first()", "name.first().given", "address.first().city",
    "address.line", "address.city.first()", "address.last().city", "deceased.ofType(dateTime)",
    "deceased.ofType(boolean)", "deceased.ofType(dateTime).exists()", "deceased.exists()",
    "multipleBirth.ofType(integer)",
    "extension('http://hl7.org/fhir/us/core/StructureDefinition/us-core-race').extension('ombCategory')"
    ".value.ofType(Coding).code.first()",
    "extension.where(url = 'http://x/n').value.ofType(integer)", "contact.name.family",
    "contact.telecom.where(system = 'phone').value", "name.exists()", "name.count()",
    "name.given.count()", "birthDate.lowBoundary()", "name.where(given.exists()).family",
    "name.select(given.first())", "gender = 'female'", "name.family | name.given",
    "notAnElement", "address.notAnElement.first()", "name.first().family.empty()",
]
OBSERVATION_PATHS = [
    "status", "code.coding.code", "code.coding.where(system = 'http://loinc.org').code.first()",
    "value.ofType(Quantity).value", "value.ofType(Quantity).unit", "value.ofType(string)",
    "component.value.ofType(Quantity).value", "component.code.coding.code", "subject.getReferenceKey(Patient)",
    "effective.ofType(Period).start", "effective.ofType(dateTime)", "effective.ofType(Period).end.highBoundary()",
    "code.text", "component.where(code.coding.code = 'b').value.ofType(string).first()",
]


def _view(resource: str, path: str) -> dict[str, Any]:
    return {"resourceType": "ViewDefinition", "resource": resource, "status": "active",
            "select": [{"column": [{"name": "v", "path": path, "collection": True}]}]}


def _rows(resource: str, path: str, data: list[dict[str, Any]], schema_aware: bool) -> list[Any]:
    with DuckDBEngine(schema_aware=schema_aware) as engine:
        return engine.run(_view(resource, path), data).rows


@pytest.mark.parametrize("path", PATIENT_PATHS)
def test_patient_paths_agree_with_the_general_path(path: str) -> None:
    assert _rows("Patient", path, PATIENTS, True) == _rows("Patient", path, PATIENTS, False)


@pytest.mark.parametrize("path", OBSERVATION_PATHS)
def test_observation_paths_agree_with_the_general_path(path: str) -> None:
    assert _rows("Observation", path, OBSERVATIONS, True) == _rows("Observation", path, OBSERVATIONS, False)


def test_known_members_give_the_expected_values() -> None:
    got = _rows("Patient", "name.where(use = 'official').given.join(' ')", PATIENTS, True)
    assert [r["v"] for r in got] == [["Jane Q"], [""], [""]]
    got = _rows("Patient", "address.first().city", PATIENTS, True)
    assert [r["v"] for r in got] == [["Oslo"], [], []]
    got = _rows("Observation", "component.value.ofType(Quantity).value", OBSERVATIONS, True)
    assert [r["v"] for r in got] == [[1], []]


def test_typed_output_of_known_and_unknown_columns(tmp_path: Any) -> None:
    from medcloud.analytics.engines._sources import ResourcesSource

    view = {"resourceType": "ViewDefinition", "resource": "Patient", "status": "active", "select": [{"column": [
        {"name": "id", "path": "getResourceKey()"}, {"name": "gender", "path": "gender", "type": "code"},
        {"name": "active", "path": "active", "type": "boolean"},
        {"name": "family", "path": "name.family.first()", "type": "string"},
        {"name": "dead", "path": "deceased.ofType(dateTime).exists()", "type": "boolean"},
        {"name": "other", "path": "notAnElement", "type": "string"}]}]}
    with DuckDBEngine() as engine:
        out = engine.write(view, ResourcesSource(tuple(PATIENTS)), tmp_path / "p.csv", "csv")
        assert out.rows == 3
    lines = (tmp_path / "p.csv").read_text().splitlines()
    assert lines == ["id,gender,active,family,dead,other", "p1,female,true,Doe,true,", "p2,,,Roe,false,",
                     "p3,,,,false,"]


def test_elements_outside_the_schema_still_read_through_the_general_path() -> None:
    odd = [{"resourceType": "Patient", "id": "x", "custom": ["a", "b"], "name": [{"family": "F", "nick": "n"}]}]
    assert _rows("Patient", "custom", odd, True)[0]["v"] == ["a", "b"]
    assert _rows("Patient", "name.nick", odd, True)[0]["v"] == ["n"]


def test_element_table_from_the_r4_schema() -> None:
    table = elements()
    assert table["Patient"]["gender"] == ("code", False)  # an inlined enum is a code
    assert table["Patient"]["name"] == ("HumanName", True)
    assert table["Patient"]["deceasedDateTime"] == ("dateTime", False)  # a choice of a primitive type
    assert table["Extension"]["valueCoding"] == ("Coding", False)
    assert table["Patient"]["contained"] == (None, True)  # any resource type
    assert table["Patient_Contact"]["telecom"] == ("ContactPoint", True)
