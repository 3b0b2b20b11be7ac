"""FHIR R4 validation on write: medcloud/fhir/validation.py."""

from __future__ import annotations

import copy
import gzip
import json
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from medcloud.errors import Invalid, Issue, Unprocessable
from medcloud.fhir import _schema, validation
from medcloud.fhir._element_rules import CHOICES, NOT_R4
from medcloud.fhir.definitions import resource_types
from medcloud.fhir.validation import MAX_DEPTH, check_resource, validate_resource

OBSERVATION = {"resourceType": "Observation", "status": "final", "code": {"text": "weight"}}


def where(issues: list[Issue]) -> dict[str, str]:
    """expression -> issue code."""
    return {i.expression[0] if i.expression else "": i.code for i in issues}


def patient(**elements: Any) -> dict[str, Any]:
    return {"resourceType": "Patient", **elements}


def observation(**elements: Any) -> dict[str, Any]:
    return {**OBSERVATION, **elements}


# -- Synthea sample ------------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def synthea_bundles(synthea_dir: Path) -> list[dict[str, Any]]:
    paths = sorted(synthea_dir.glob("*.json"))
    assert paths
    return [json.loads(p.read_bytes()) for p in paths]


@pytest.fixture(scope="session")
def synthea_resources(synthea_bundles: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [entry["resource"] for bundle in synthea_bundles for entry in bundle["entry"]]


def test_every_synthea_resource_validates_clean(synthea_resources: list[dict[str, Any]]) -> None:
    failures = {r["resourceType"] + "/" + r["id"]: validate_resource(r) for r in synthea_resources}
    assert {k: v for k, v in failures.items() if v} == {}


def test_synthea_transaction_bundles_validate_clean(synthea_bundles: list[dict[str, Any]]) -> None:
    assert [validate_resource(b, expected_type="Bundle") for b in synthea_bundles] == [[]] * len(
        synthea_bundles
    )


def test_synthea_resources_pass_the_detailed_path_too(synthea_resources: list[dict[str, Any]]) -> None:
    sample = {r["resourceType"]: r for r in synthea_resources}.values()  # one of each type
    assert [validation._detailed(r, None) for r in sample] == [[]] * len(sample)


# -- resource type -------------------------------------------------------------------------------------


@pytest.mark.parametrize("value", [[], "Patient", 3, None, True])
def test_resource_that_is_not_an_object_is_a_structure_issue(value: Any) -> None:
    [issue] = validate_resource(value)
    assert issue.code == "structure"


def test_missing_resource_type_is_a_required_issue() -> None:
    assert where(validate_resource({"id": "a"})) == {"Resource.resourceType": "required"}


@pytest.mark.parametrize("rtype", ["Foo", "patient", "Project", "ViewDefinition", 7, ["Patient"]])
def test_unknown_resource_type_is_reported_including_non_r4_schema_types(rtype: Any) -> None:
    assert where(validate_resource({"resourceType": rtype})) == {"Resource.resourceType": "value"}


def test_resource_type_must_match_the_expected_type() -> None:
    assert where(validate_resource(patient(), expected_type="Observation")) == {
        "Patient.resourceType": "invalid"
    }
    assert validate_resource(patient(), expected_type="Patient") == []


def test_all_146_r4_resource_types_are_accepted_with_their_required_elements_only() -> None:
    assert len(resource_types()) == 146
    for rtype in ("Patient", "Binary", "Parameters", "Basic", "StructureDefinition"):
        issues = validate_resource({"resourceType": rtype})
        assert all(i.code == "required" for i in issues), (rtype, issues)


# -- structure -----------------------------------------------------------------------------------------


def test_unknown_element_is_reported_at_its_path() -> None:
    issues = validate_resource(patient(name=[{"family": "Doe"}, {"family": "Roe", "nickname": "R"}], foo=1))
    assert where(issues) == {"Patient.name[1].nickname": "structure", "Patient.foo": "structure"}


@pytest.mark.parametrize(
    ("resource", "expression"),
    [
        (patient(active="yes"), "Patient.active"),
        (patient(name={"family": "Doe"}), "Patient.name"),  # 0..* must be an array
        (patient(gender=["male"]), "Patient.gender"),  # 0..1 must not be an array
        (patient(maritalStatus="M"), "Patient.maritalStatus"),  # complex type given as a string
        (patient(name=[{"given": ["Ann", 3]}]), "Patient.name[0].given[1]"),
        (observation(valueQuantity={"value": "7"}), "Observation.valueQuantity.value"),
    ],
)
def test_wrong_json_type_is_a_structure_issue_at_the_element(
    resource: dict[str, Any], expression: str
) -> None:
    assert where(validate_resource(resource)) == {expression: "structure"}


@pytest.mark.parametrize(
    ("resource", "expression", "code"),
    [
        (patient(name=[]), "Patient.name", "structure"),
        (patient(name=[{}]), "Patient.name[0]", "structure"),
        (patient(maritalStatus={}), "Patient.maritalStatus", "structure"),
        (patient(gender=None), "Patient.gender", "structure"),
        (patient(name=[{"family": ""}]), "Patient.name[0].family", "value"),
        (patient(id=""), "Patient.id", "value"),
        (patient(_gender={}), "Patient._gender", "structure"),
    ],
)
def test_empty_values_and_nulls_are_rejected(resource: dict[str, Any], expression: str, code: str) -> None:
    assert where(validate_resource(resource)) == {expression: code}


def test_primitive_extension_without_value_is_valid() -> None:
    ext = {
        "extension": [
            {"url": "http://hl7.org/fhir/StructureDefinition/data-absent-reason", "valueCode": "unknown"}
        ]
    }
    assert validate_resource(patient(_birthDate=ext)) == []


def test_null_in_primitive_array_is_valid_when_paired_with_an_extension() -> None:
    ext = {"extension": [{"url": "http://example.org/x", "valueString": "y"}]}
    assert validate_resource(patient(name=[{"given": ["Ann", None], "_given": [None, ext]}])) == []


@pytest.mark.parametrize(
    ("name", "expression"),
    [
        ({"given": ["Ann", None]}, "Patient.name[0].given[1]"),
        ({"given": ["Ann", None], "_given": [None, None]}, "Patient.name[0].given[1]"),
        ({"given": ["Ann"], "_given": [None, {"id": "x"}]}, "Patient.name[0]._given"),
        ({"_given": [None]}, "Patient.name[0]._given[0]"),
    ],
)
def test_null_in_primitive_array_without_its_pair_is_a_structure_issue(
    name: dict[str, Any], expression: str
) -> None:
    issues = validate_resource(patient(name=[name]))
    assert where(issues)[expression] == "structure"


def test_elements_named_like_choice_variants_may_coexist() -> None:
    device = {
        "resourceType": "DeviceDefinition",
        "property": [{"type": {"text": "t"}, "valueQuantity": [{"value": 1}], "valueCode": [{"text": "c"}]}],
    }
    impression = {
        "resourceType": "ClinicalImpression",
        "status": "completed",
        "subject": {"reference": "Patient/1"},
        "finding": [{"itemCodeableConcept": {"text": "x"}, "itemReference": {"reference": "Condition/1"}}],
    }
    assert validate_resource(device) == []
    assert validate_resource(impression) == []


def test_choice_of_lookalike_keys_is_still_exclusive_where_it_is_a_choice() -> None:
    request = {
        "resourceType": "SupplyRequest",
        "quantity": {"value": 1},
        "itemCodeableConcept": {"text": "x"},
        "itemReference": {"reference": "Medication/1"},
    }
    assert where(validate_resource(request)) == {"SupplyRequest.itemReference": "invalid"}


def test_only_one_type_of_a_choice_element_may_be_present() -> None:
    issues = validate_resource(observation(valueString="x", valueQuantity={"value": 1}))
    assert [i.code for i in issues] == ["invalid"]
    assert issues[0].expression[0] in ("Observation.valueString", "Observation.valueQuantity")
    assert validate_resource(observation(valueString="x", _valueString={"id": "a"})) == []


# -- required elements ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("resource", "missing"),
    [
        ({"resourceType": "Observation"}, {"Observation.status", "Observation.code"}),
        (patient(link=[{"type": "seealso"}]), {"Patient.link[0].other"}),
        ({"resourceType": "Bundle"}, {"Bundle.type"}),
        (
            {"resourceType": "Bundle", "type": "batch", "entry": [{"request": {"method": "GET"}}]},
            {"Bundle.entry[0].request.url"},
        ),
        (patient(extension=[{"valueString": "x"}]), {"Patient.extension[0].url"}),
        (patient(text={"status": "generated"}), {"Patient.text.div"}),
    ],
)
def test_missing_required_element_is_reported_at_its_path(
    resource: dict[str, Any], missing: set[str]
) -> None:
    issues = validate_resource(resource)
    assert set(where(issues)) == missing
    assert {i.code for i in issues} == {"required"}


def test_required_primitive_may_be_present_as_extension_only() -> None:
    ext = {
        "extension": [
            {"url": "http://hl7.org/fhir/StructureDefinition/data-absent-reason", "valueCode": "unknown"}
        ]
    }
    resource = {"resourceType": "Observation", "_status": ext, "code": {"text": "x"}}
    assert validate_resource(resource) == []


def test_missing_required_choice_element_is_reported_as_value_x() -> None:
    resource = {"resourceType": "ValueSet", "status": "draft", "useContext": [{"code": {"code": "age"}}]}
    [issue] = validate_resource(resource)
    assert (issue.code, issue.expression) == ("required", ("ValueSet.useContext[0].value",))
    assert "value[x]" in issue.diagnostics


# -- primitive formats ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("element", "value", "ok"),
    [
        ("birthDate", "2024-02-29", True),
        ("birthDate", "2023-02-29", False),
        ("birthDate", "2023-02-30", False),
        ("birthDate", "2023-04-31", False),
        ("birthDate", "2023-13", False),
        ("birthDate", "2023", True),
        ("birthDate", "2023-02", True),
        ("birthDate", "0000", False),
        ("birthDate", "2023-01-01T00:00:00Z", False),
        ("birthDate", "2023-01-01\n", False),
        ("deceasedDateTime", "2023-02-28T10:00:00+01:00", True),
        ("deceasedDateTime", "2023-02-30T10:00:00Z", False),
        ("deceasedDateTime", "2023-01-01T10:00:00", False),  # a time needs a zone
        ("deceasedDateTime", "2023-01-01T25:00:00Z", False),
    ],
)
def test_dates_must_be_real_calendar_dates(element: str, value: str, ok: bool) -> None:
    issues = validate_resource(patient(**{element: value}))
    assert where(issues) == ({} if ok else {f"Patient.{element}": "value"})


@pytest.mark.parametrize(
    ("value", "ok"),
    [
        ("2023-01-01T10:00:00Z", True),
        ("2023-01-01T10:00:00.123+14:00", True),
        ("2023-01-01", False),
        ("2023-02-29T10:00:00Z", False),
        ("2023-01-01T10:00Z", False),
    ],
)
def test_instant_needs_a_full_valid_timestamp(value: str, ok: bool) -> None:
    issues = validate_resource(observation(issued=value))
    assert where(issues) == ({} if ok else {"Observation.issued": "value"})


@pytest.mark.parametrize(
    ("value", "ok"), [("10:30:00", True), ("23:59:60", True), ("24:00:00", False), ("10:30", False)]
)
def test_time_format(value: str, ok: bool) -> None:
    issues = validate_resource(observation(valueTime=value))
    assert where(issues) == ({} if ok else {"Observation.valueTime": "value"})


@pytest.mark.parametrize(
    ("value", "ok"),
    [
        ("a-B.9", True),
        ("x" * 64, True),
        ("x" * 65, False),
        ("a b", False),
        ("a_b", False),
        ("a/b", False),
        ("a\n", False),
    ],
)
def test_resource_id_format(value: str, ok: bool) -> None:
    assert where(validate_resource(patient(id=value))) == ({} if ok else {"Patient.id": "value"})


@pytest.mark.parametrize(
    ("element", "value", "ok"),
    [
        ("multipleBirthInteger", 2**31 - 1, True),
        ("multipleBirthInteger", 2**31, False),
        ("multipleBirthInteger", -(2**31) - 1, False),
        ("multipleBirthInteger", 1.5, False),
        ("multipleBirthInteger", True, False),
        ("multipleBirthInteger", "2", False),
        ("multipleBirthBoolean", "true", False),
    ],
)
def test_integers_are_32_bit_whole_numbers(element: str, value: Any, ok: bool) -> None:
    issues = validate_resource(patient(**{element: value}))
    assert (issues == []) is ok
    assert all(i.expression == (f"Patient.{element}",) for i in issues)


@pytest.mark.parametrize(("value", "ok"), [(0, True), (-1, False), (2**31, False)])
def test_unsigned_int_is_not_negative(value: int, ok: bool) -> None:
    study = {
        "resourceType": "ImagingStudy",
        "status": "available",
        "subject": {"reference": "Patient/1"},
        "numberOfSeries": value,
    }  # unsignedInt
    assert where(validate_resource(study)) == ({} if ok else {"ImagingStudy.numberOfSeries": "value"})


@pytest.mark.parametrize(("value", "ok"), [(1, True), (0, False), (-3, False)])
def test_positive_int_is_greater_than_zero(value: int, ok: bool) -> None:
    sampled = {
        "origin": {"value": 0},
        "period": 1,
        "dimensions": value,
    }  # SampledData.dimensions: positiveInt
    issues = validate_resource(observation(valueSampledData=sampled))
    assert where(issues) == ({} if ok else {"Observation.valueSampledData.dimensions": "value"})


@pytest.mark.parametrize(
    ("value", "ok"),
    [(1.5, True), (-0.0, True), (10**30, True), (float("nan"), False), (float("inf"), False), ("1.5", False)],
)
def test_decimal_is_a_finite_json_number(value: Any, ok: bool) -> None:
    issues = validate_resource(observation(valueQuantity={"value": value}))
    assert (issues == []) is ok
    assert all(i.expression == ("Observation.valueQuantity.value",) for i in issues)


@pytest.mark.parametrize(
    ("resource", "expression"),
    [
        (patient(implicitRules="http://example.org/a rule"), "Patient.implicitRules"),  # uri: no whitespace
        (patient(implicitRules=""), "Patient.implicitRules"),
        (patient(language=" en"), "Patient.language"),  # code: no leading/trailing whitespace
        (patient(language="en "), "Patient.language"),
        (patient(language="en  US"), "Patient.language"),
        (patient(photo=[{"data": "not base64!"}]), "Patient.photo[0].data"),
        (patient(photo=[{"data": "abc"}]), "Patient.photo[0].data"),  # bad padding
        (patient(text={"status": "generated", "div": "plain text"}), "Patient.text.div"),
    ],
)
def test_bad_primitive_format_is_a_value_issue(resource: dict[str, Any], expression: str) -> None:
    assert where(validate_resource(resource)) == {expression: "value"}


def test_good_primitive_formats_pass() -> None:
    resource = patient(
        implicitRules="http://example.org/rules",
        language="en-US",
        photo=[{"data": "aGVsbG8=", "contentType": "text/plain"}],
        text={"status": "generated", "div": '<div xmlns="http://www.w3.org/1999/xhtml">x</div>'},
    )
    assert validate_resource(resource) == []


def test_code_outside_a_required_binding_is_code_invalid() -> None:
    assert where(validate_resource(observation(status="done"))) == {"Observation.status": "code-invalid"}


# -- references ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "reference",
    [
        "Patient/123",
        "Patient/a-b.c",
        "Patient/123/_history/2",
        "http://example.org/fhir/Patient/123",
        "https://example.org/fhir/Patient/123/_history/1",
        "urn:uuid:85c63cf3-278e-454c-b5ba-df5889815eb7",
        "urn:oid:1.2.840.113619.2.62",
    ],
)
def test_valid_reference_syntax_is_accepted(reference: str) -> None:
    assert validate_resource(observation(subject={"reference": reference})) == []


@pytest.mark.parametrize(
    "reference",
    [
        "Foo/123",  # not a resource type
        "Project/123",  # Medplum type, not R4
        "patient/123",
        "Patient/",
        "Patient/a b",
        "Patient/" + "x" * 65,
        "Patient/123/_history/",
        "Patient/123/foo/2",
        "Patient",
        "123",
        "",
        " Patient/123",
        "urn:uuid:not-a-uuid",
        "urn:oid:abc",
        "urn:isbn:0451450523",
        "http://",
        "ftp://example.org/Patient/1",
        "#missing",
    ],
)
def test_invalid_reference_is_reported_at_the_reference_element(reference: str) -> None:
    issues = validate_resource(observation(subject={"reference": reference}))
    assert where(issues) == {"Observation.subject.reference": "value"}


def test_local_reference_must_name_a_contained_resource() -> None:
    contained = [{"resourceType": "Organization", "id": "org1", "name": "Acme"}]
    assert validate_resource(patient(contained=contained, managingOrganization={"reference": "#org1"})) == []
    issues = validate_resource(patient(contained=contained, managingOrganization={"reference": "#org2"}))
    assert where(issues) == {"Patient.managingOrganization.reference": "value"}


def test_contained_resources_may_reference_each_other_and_their_container() -> None:
    contained = [
        {"resourceType": "Organization", "id": "org1", "name": "Acme"},
        {
            "resourceType": "Practitioner",
            "id": "p1",
            "extension": [
                {"url": "http://example.org/employer", "valueReference": {"reference": "#org1"}},
                {"url": "http://example.org/patient", "valueReference": {"reference": "#"}},
            ],
        },
    ]
    resource = patient(
        contained=contained,
        managingOrganization={"reference": "#org1"},
        generalPractitioner=[{"reference": "#p1"}],
    )
    assert validate_resource(resource) == []


# -- nested resources ----------------------------------------------------------------------------------


def test_contained_resources_are_validated_against_their_own_type() -> None:
    contained = [
        {"resourceType": "Organization", "id": "o", "active": "yes"},
        {"resourceType": "Nope", "id": "n"},
    ]
    issues = validate_resource(patient(contained=contained))
    assert where(issues) == {
        "Patient.contained[0].active": "structure",
        "Patient.contained[1].resourceType": "value",
    }


def test_contained_resource_must_not_have_version_meta_or_contain_resources() -> None:
    inner = {"resourceType": "Organization", "id": "x"}
    contained = [
        {
            "resourceType": "Organization",
            "id": "o",
            "meta": {"versionId": "1", "lastUpdated": "2023-01-01T00:00:00Z"},
            "contained": [inner],
        }
    ]
    issues = validate_resource(patient(contained=contained))
    assert where(issues) == {
        "Patient.contained[0].meta.versionId": "invalid",
        "Patient.contained[0].meta.lastUpdated": "invalid",
        "Patient.contained[0].contained": "invalid",
    }


def test_bundle_entry_resources_are_validated_against_their_own_type() -> None:
    bundle = {
        "resourceType": "Bundle",
        "type": "transaction",
        "entry": [
            {
                "fullUrl": "urn:uuid:85c63cf3-278e-454c-b5ba-df5889815eb7",
                "resource": patient(),
                "request": {"method": "POST", "url": "Patient"},
            },
            {
                "resource": {"resourceType": "Observation", "status": "final"},
                "request": {"method": "POST", "url": "Observation"},
            },
        ],
    }
    assert where(validate_resource(bundle)) == {"Bundle.entry[1].resource.code": "required"}


def test_bundle_response_outcome_is_validated_as_an_operation_outcome() -> None:
    bundle = {
        "resourceType": "Bundle",
        "type": "transaction-response",
        "entry": [
            {
                "response": {
                    "status": "400",
                    "outcome": {"resourceType": "OperationOutcome", "issue": [{"severity": "bad"}]},
                }
            }
        ],
    }
    issues = validate_resource(bundle)
    assert where(issues) == {
        "Bundle.entry[0].response.outcome.issue[0].severity": "code-invalid",
        "Bundle.entry[0].response.outcome.issue[0].code": "required",
    }


def test_parameters_resources_are_validated_at_any_part_depth() -> None:
    params = {
        "resourceType": "Parameters",
        "parameter": [
            {"name": "a", "part": [{"name": "b", "part": [{"name": "c", "resource": patient(active=1)}]}]},
        ],
    }
    assert where(validate_resource(params)) == {
        "Parameters.parameter[0].part[0].part[0].resource.active": "structure"
    }


def test_schema_any_resource_slots_are_exactly_the_ones_validated_recursively() -> None:
    # _nested_resources hard-codes where resources nest; the schema's ResourceList references say where.
    path = Path(_schema.__file__).parent / "_spec" / "fhir.schema.json.gz"
    defs = json.loads(gzip.decompress(path.read_bytes()))["definitions"]
    slots = {
        (name, key)
        for name, d in defs.items()
        if name in resource_types() or "_" in name
        for key, prop in d.get("properties", {}).items()
        if prop.get("items", prop).get("$ref") == "#/definitions/ResourceList"
        and name.split("_")[0] in resource_types()
        and key not in NOT_R4.get(name, ())
    }
    assert {s for s in slots if s[1] != "contained"} == {
        ("Bundle_Entry", "resource"),
        ("Bundle_Response", "outcome"),
        ("Parameters_Parameter", "resource"),
    }
    assert {name for name, key in slots if key == "contained"} == set(resource_types()) - {
        "Bundle",
        "Binary",
        "Parameters",
    }


@pytest.mark.parametrize(
    "resource",
    [
        patient(meta={"project": "p1"}),  # Medplum's Meta.project
        {
            "resourceType": "OperationOutcome",
            "issue": [{"severity": "error", "code": "invalid"}],
            "status": "ok",
        },
        observation(subject={"reference": "Patient/1", "resource": {"resourceType": "Patient"}}),
    ],
)
def test_non_r4_elements_of_the_bundled_schema_are_unknown_elements(resource: dict[str, Any]) -> None:
    assert list(where(validate_resource(resource)).values()) == ["structure"]


def test_choice_keys_never_collide_with_plain_elements() -> None:
    # The pre-pass checks "one of value[x]" by key name alone; that is sound only if no definition has
    # two keys that map to the same choice name without being variants of that choice there.
    groups = _schema.choice_groups()
    path = Path(_schema.__file__).parent / "_spec" / "fhir.schema.json.gz"
    schema = json.loads(gzip.decompress(path.read_bytes()))
    medplum_only = set(schema["discriminator"]["mapping"]) - set(resource_types())  # never validated
    for name, definition in _schema.definitions().items():
        if name.split("_")[0] in medplum_only:
            continue
        keys = [
            k
            for k, prop in definition.get("properties", {}).items()
            if not k.startswith("_") and k in groups and prop.get("type") != "array"
        ]
        by_group: dict[str, set[str]] = {}
        for key in keys:
            by_group.setdefault(groups[key], set()).add(key)
        for group, members in by_group.items():
            if len(members) > 1:
                assert members <= set(CHOICES.get(name, {}).get(group, ())), (name, group, members)


# -- depth and robustness ------------------------------------------------------------------------------


def nested_extensions(levels: int, leaf: Any = "x") -> dict[str, Any]:
    node: dict[str, Any] = {"url": "http://example.org/x", "valueString": leaf}
    for _ in range(levels):
        node = {"url": "http://example.org/x", "extension": [node]}
    return node


def test_deep_nesting_is_refused_with_an_issue_not_a_recursion_error() -> None:
    issues = validate_resource(patient(extension=[nested_extensions(10_000)]))
    assert [i.code for i in issues] == ["structure"]
    assert str(MAX_DEPTH) in issues[0].diagnostics


def test_nesting_just_under_the_limit_is_validated_in_full() -> None:
    levels = (MAX_DEPTH - 4) // 2
    assert validate_resource(patient(extension=[nested_extensions(levels)])) == []
    issues = validate_resource(patient(extension=[nested_extensions(levels, leaf=5)]))
    assert [i.code for i in issues] == ["structure"]
    assert issues[0].expression[0].endswith("extension[0].valueString")


def test_deeply_nested_lists_are_refused() -> None:
    value: Any = "x"
    for _ in range(5000):
        value = [value]
    assert [i.code for i in validate_resource(patient(name=value))] == ["structure"]


@pytest.mark.parametrize("value", [(1, 2), {1, 2}, b"x", object(), 1j])
def test_non_json_python_values_are_structure_issues(value: Any) -> None:
    assert [i.code for i in validate_resource(patient(name=[{"family": value}]))] == ["structure"]


def test_non_string_keys_are_structure_issues() -> None:
    assert [i.code for i in validate_resource({"resourceType": "Patient", 1: "x"})] == ["structure"]


def test_all_issues_are_reported_at_once() -> None:
    resource = {
        "resourceType": "Observation",
        "status": "nope",
        "foo": 1,
        "issued": "yesterday",
        "subject": {"reference": "Nope/1"},
        "valueString": "",
    }
    assert where(validate_resource(resource)) == {
        "Observation.status": "code-invalid",
        "Observation.foo": "structure",
        "Observation.issued": "value",
        "Observation.subject.reference": "value",
        "Observation.valueString": "value",
        "Observation.code": "required",
    }


# -- check_resource ------------------------------------------------------------------------------------


def test_check_resource_accepts_a_valid_resource() -> None:
    check_resource(OBSERVATION, expected_type="Observation")


def test_check_resource_raises_unprocessable_with_every_issue() -> None:
    with pytest.raises(Unprocessable) as raised:
        check_resource({"resourceType": "Observation", "foo": 1})
    assert isinstance(raised.value, Invalid)
    assert raised.value.category == "unprocessable"
    assert where(raised.value.issues) == {
        "Observation.foo": "structure",
        "Observation.status": "required",
        "Observation.code": "required",
    }
    assert "Observation." in raised.value.message


# -- property tests ------------------------------------------------------------------------------------

json_scalars = st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20)
json_values = st.recursive(
    json_scalars,
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=12), children, max_size=4)
    ),
    max_leaves=30,
)
element_names = st.sampled_from(
    [
        "id",
        "meta",
        "text",
        "status",
        "code",
        "subject",
        "valueQuantity",
        "name",
        "given",
        "_given",
        "extension",
        "url",
        "reference",
        "contained",
        "entry",
        "resource",
        "birthDate",
        "effectiveDateTime",
        "component",
        "coding",
    ]
)


def as_resource(drawn: dict[str, Any]) -> dict[str, Any]:
    return {"resourceType": drawn["resourceType"], **drawn.get("extra", {})}


resource_dicts = st.fixed_dictionaries(
    {"resourceType": st.sampled_from(["Patient", "Observation", "Bundle", "Parameters", "Foo"])},
    optional={"extra": st.dictionaries(element_names, json_values, max_size=5)},
).map(as_resource)


def assert_well_formed(issues: list[Issue]) -> None:
    assert isinstance(issues, list)
    for issue in issues:
        assert isinstance(issue, Issue)
        assert issue.code in {"structure", "required", "value", "code-invalid", "invalid"}
        assert not issue.diagnostics.startswith("Schema check failed"), issue  # both validators agree


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(value=json_values | resource_dicts)
def test_random_json_never_crashes_validation(value: Any) -> None:
    assert_well_formed(validate_resource(value))
    assert_well_formed(validate_resource(value, expected_type="Patient"))


def mutate(resource: Any, data: st.DataObject) -> Any:
    """Replace, drop or add one element somewhere in a copy of ``resource``."""
    resource = copy.deepcopy(resource)
    node = resource
    while True:
        children = list(node.items()) if isinstance(node, dict) else list(enumerate(node))
        containers = [(k, v) for k, v in children if isinstance(v, (dict, list)) and v]
        if not containers or data.draw(st.booleans()):
            break
        _, node = data.draw(st.sampled_from(containers))
    action = data.draw(st.sampled_from(["replace", "drop", "add"]))
    if isinstance(node, dict) and node:
        key = data.draw(st.sampled_from(sorted(node)))
        if action == "replace":
            node[key] = data.draw(json_values)
        elif action == "drop":
            del node[key]
        else:
            node[data.draw(element_names)] = data.draw(json_values)
    elif isinstance(node, list) and node:
        index = data.draw(st.integers(0, len(node) - 1))
        if action == "drop":
            del node[index]
        else:
            node[index] = data.draw(json_values)
    return resource


@settings(
    max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large]
)
@given(data=st.data())
def test_mutated_synthea_resources_never_crash_and_both_paths_agree(
    synthea_resources: list[dict[str, Any]], data: st.DataObject
) -> None:
    pool = {r["resourceType"]: r for r in synthea_resources}  # one of each type keeps compile time down
    original = data.draw(st.sampled_from(sorted(pool.values(), key=lambda r: r["resourceType"])))
    resource = mutate(original, data)
    issues = validate_resource(resource)
    assert_well_formed(issues)
    # The fast accept path must never accept what the detailed path rejects.
    if validation._accept(resource, None):
        assert validation._detailed(resource, None) == []
    else:
        assert_well_formed(validation._detailed(resource, None))
