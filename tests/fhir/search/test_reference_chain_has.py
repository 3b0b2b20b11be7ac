"""reference parameters, chaining and reverse chaining (search.html#reference, #chaining, #has)."""

from __future__ import annotations

import pytest


@pytest.fixture
def world(api):
    org = api.put({"resourceType": "Organization", "id": "org1", "name": "Acme Health"})
    other_org = api.put({"resourceType": "Organization", "id": "org2", "name": "Other Clinic"})
    p1 = api.put(api.patient("Chalmers", id="p1", managingOrganization={"reference": "Organization/org1"}))
    p2 = api.put(api.patient("Windsor", id="p2", managingOrganization={"reference": "Organization/org2"}))
    grp = api.put({"resourceType": "Group", "id": "g1", "type": "person", "actual": True, "name": "Chalmers group"})
    o1 = api.create(api.observation("Patient/p1", "8480-6", 120))
    o2 = api.create(api.observation("Patient/p2", "8480-6", 90))
    o3 = api.create(api.observation("Group/g1", "1234-5"))
    o4 = api.create(api.observation("http://elsewhere.org/fhir/Patient/p1", "8480-6"))
    o5 = api.create({**api.observation(None, "9"), "subject": {"identifier": {"system": "urn:mrn", "value": "42"}}})
    loc = api.put({"resourceType": "Location", "id": "l1", "name": "Chalmers Wing"})
    o6 = api.create(api.observation("Location/l1", "5"))
    enc = api.create({"resourceType": "Encounter", "status": "finished", "class": {"code": "AMB"},
                      "subject": {"reference": "Patient/p1"}})
    return locals()


def test_reference_by_type_and_id_plain_id_and_type_modifier(api, world):
    w = world
    assert api.ids("Observation", {"subject": "Patient/p1"}) == {w["o1"]}
    assert api.ids("Observation", {"subject": "p1"}) == {w["o1"]}
    assert api.ids("Observation", {"subject:Patient": "p1"}) == {w["o1"]}
    assert api.ids("Observation", {"subject:Group": "p1"}) == set()
    assert api.ids("Observation", {"subject": "Group/g1,Patient/p2"}) == {w["o2"], w["o3"]}
    assert api.ids("Observation", {"patient": "p1"}) == {w["o1"]}


def test_absolute_reference_on_our_base_is_local_and_foreign_urls_match_exactly(api, world):
    w = world
    assert api.ids("Observation", {"subject": "http://testserver/fhir/Patient/p1"}) == {w["o1"]}
    assert api.ids("Observation", {"subject": "http://elsewhere.org/fhir/Patient/p1"}) == {w["o4"]}


def test_reference_identifier_modifier(api, world):
    assert api.ids("Observation", {"subject:identifier": "urn:mrn|42"}) == {world["o5"]}
    assert api.ids("Observation", {"subject:identifier": "urn:mrn|43"}) == set()


def test_reference_missing(api, world):
    w = world
    assert api.ids("Patient", {"organization:missing": "false"}) == {w["p1"], w["p2"]}
    assert w["o5"] in api.ids("Observation", {"subject:missing": "true"})


def test_bad_reference_values_are_400(api, world):
    assert api.status("Observation", {"subject": "not a reference"}) == 400
    assert api.status("Observation", {"subject": "' OR 1=1 --"}) == 400
    assert api.status("Observation", {"subject:Patient": "Group/g1"}) == 400


def test_typed_chain(api, world):
    assert api.ids("Observation", {"subject:Patient.name": "chalmers"}) == {world["o1"]}
    assert api.ids("Observation", {"subject:Location.name": "chalmers"}) == {world["o6"]}
    # Group has no "name" parameter: an unknown chain, ignored with a warning.
    assert api.search("Observation", {"subject:Group.name": "x"})["entry"][-1]["search"]["mode"] == "outcome"


def test_untyped_chain_over_multi_target_reference_searches_every_target(api, world):
    # subject may be a Patient, Group, Device or Location; Patient and Location have "name".
    assert api.ids("Observation", {"subject.name": "chalmers"}) == {world["o1"], world["o6"]}


def test_multi_level_chain(api, world):
    w = world
    assert api.ids("Observation", {"subject:Patient.organization.name": "acme"}) == {w["o1"]}
    assert api.ids("Encounter", {"subject:Patient.organization.name": "other"}) == set()
    assert api.ids("Observation", {"patient.organization.name:exact": "Other Clinic"}) == {w["o2"]}


def test_chain_with_unknown_parameter_is_ignored_in_lenient_and_400_in_strict(api, world):
    b = api.search("Observation", {"subject:Patient.nonsense": "x"})
    assert b["entry"][-1]["search"]["mode"] == "outcome"
    assert api.status("Observation", {"subject:Patient.nonsense": "x"}, headers={"Prefer": "handling=strict"}) == 400
    assert api.status("Observation", {"code.name": "x"}) == 400  # a token cannot be chained


def test_reverse_chain_has(api, world):
    w = world
    assert api.ids("Patient", {"_has:Observation:patient:code": "8480-6"}) == {w["p1"], w["p2"]}
    assert api.ids("Patient", {"_has:Observation:subject:value-quantity": "gt100"}) == {w["p1"]}
    assert api.ids("Group", {"_has:Observation:subject:code": "1234-5"}) == {w["grp"]}
    assert api.ids("Patient", {"_has:Encounter:subject:status": "finished"}) == {w["p1"]}


def test_nested_has(api, world):
    # Organizations managing a patient that has a blood-pressure observation above 100.
    q = {"_has:Patient:organization:_has:Observation:patient:value-quantity": "gt100"}
    assert api.ids("Organization", q) == {world["org"]}


def test_has_combined_with_chain_and_other_params(api, world):
    q = [("_has:Observation:patient:code", "8480-6"), ("organization.name", "other")]
    assert api.ids("Patient", q) == {world["p2"]}


def test_malformed_has_is_400(api, world):
    assert api.status("Patient", {"_has:Observation": "x"}) == 400
