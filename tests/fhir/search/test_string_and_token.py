"""string and token parameters (search.html#string, #token), :missing, OR by comma, AND by repetition."""

from __future__ import annotations


def _people(api):
    a = api.create(api.patient("Chalmers", "Peter", gender="male", identifier=[
        {"system": "urn:mrn", "value": "12345",
         "type": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v2-0203", "code": "MR"}]}}]))
    b = api.create(api.patient("Müller", "Jürgen", gender="male", active=True))
    c = api.create(api.patient("Chalmer-Smith", "Anne", gender="female",
                               address=[{"city": "Springfield", "line": ["1 Main St"]}]))
    d = api.create({"resourceType": "Patient", "gender": "other", "name": [{"text": "Comma, Person"}]})
    return a, b, c, d


def test_string_default_is_case_and_accent_insensitive_starts_with(api):
    a, b, c, _ = _people(api)
    assert api.ids("Patient", {"family": "chalm"}) == {a, c}
    assert api.ids("Patient", {"name": "MULLER"}) == {b}
    assert api.ids("Patient", {"name": "jurg"}) == {b}
    assert api.ids("Patient", {"family": "halmers"}) == set()


def test_string_exact_is_case_and_accent_sensitive(api):
    a, b, _, _ = _people(api)
    assert api.ids("Patient", {"family:exact": "Chalmers"}) == {a}
    assert api.ids("Patient", {"family:exact": "chalmers"}) == set()
    assert api.ids("Patient", {"family:exact": "Müller"}) == {b}
    assert api.ids("Patient", {"family:exact": "Muller"}) == set()


def test_string_contains_matches_inside(api):
    a, _, c, _ = _people(api)
    assert api.ids("Patient", {"family:contains": "ALMER"}) == {a, c}
    assert api.ids("Patient", {"address:contains": "field"}) == {c}


def test_string_like_wildcards_are_literal(api):
    _people(api)
    assert api.ids("Patient", {"family": "%"}) == set()
    assert api.ids("Patient", {"family:contains": "_"}) == set()


def test_or_by_comma_and_by_repetition(api):
    a, b, c, _ = _people(api)
    assert api.ids("Patient", {"family": "chalmers,muller"}) == {a, b}
    assert api.ids("Patient", [("family", "chalm"), ("given", "anne")]) == {c}
    assert api.ids("Patient", [("family", "chalm"), ("family", "chalmer-")]) == {c}


def test_escaped_comma_is_part_of_the_value(api):
    _, _, _, d = _people(api)
    assert api.ids("Patient", {"name": r"comma\, person"}) == {d}
    assert api.ids("Patient", {"name": "zzz,comma"}) == {d}
    assert api.ids("Patient", {"name": r"person\, comma"}) == set()


def test_token_code_system_and_no_system_forms(api):
    ids = [api.create(api.observation(None, "8480-6")),
           api.create(api.observation(None, "8480-6", system="http://other")),
           api.create({"resourceType": "Observation", "status": "final", "code": {"coding": [{"code": "8480-6"}]}})]
    assert api.ids("Observation", {"code": "8480-6"}) == set(ids)
    assert api.ids("Observation", {"code": "http://loinc.org|8480-6"}) == {ids[0]}
    assert api.ids("Observation", {"code": "|8480-6"}) == {ids[2]}
    assert api.ids("Observation", {"code": "http://other|"}) == {ids[1]}


def test_token_is_case_sensitive_on_codes(api):
    a = api.create(api.observation(None, "ABC"))
    assert api.ids("Observation", {"code": "ABC"}) == {a}
    assert api.ids("Observation", {"code": "abc"}) == set()


def test_token_not_includes_resources_without_the_element(api):
    a, b, c, d = _people(api)
    assert api.ids("Patient", {"gender:not": "male"}) == {c, d}
    assert api.ids("Patient", {"active:not": "true"}) == {a, c, d}


def test_token_text_searches_display_and_text(api):
    a = api.create(api.observation(None, "1"))
    b = api.create({"resourceType": "Observation", "status": "final", "code": {"text": "Blood pressure panel"}})
    assert api.ids("Observation", {"code:text": "display"}) == {a}
    assert api.ids("Observation", {"code:text": "pressure"}) == {b}
    assert api.ids("Observation", {"code:text": "BLOOD"}) == {b}


def test_token_boolean_and_identifier(api):
    a, b, _, _ = _people(api)
    assert api.ids("Patient", {"active": "true"}) == {b}
    assert api.ids("Patient", {"identifier": "urn:mrn|12345"}) == {a}
    assert api.ids("Patient", {"identifier": "12345"}) == {a}
    assert api.ids("Patient", {"identifier": "urn:other|12345"}) == set()


def test_token_of_type_matches_identifier_type_and_value(api):
    a, _, _, _ = _people(api)
    v2 = "http://terminology.hl7.org/CodeSystem/v2-0203"
    assert api.ids("Patient", {"identifier:of-type": f"{v2}|MR|12345"}) == {a}
    assert api.ids("Patient", {"identifier:of-type": f"{v2}|MR|99999"}) == set()
    assert api.status("Patient", {"identifier:of-type": "MR|12345"}) == 400


def test_token_terminology_modifiers_on_a_plain_code(api):
    # gender is a plain code (no system in the data): :in matches by the value set's codes
    # (more in test_terminology.py); :above/:below need system|code.
    _people(api)
    everyone = api.ids("Patient")
    assert api.ids("Patient", {"gender:in": "http://hl7.org/fhir/ValueSet/administrative-gender"}) == everyone
    assert api.ids("Patient", {"gender:not-in": "http://hl7.org/fhir/ValueSet/administrative-gender"}) == set()
    for mod in ("above", "below"):
        r = api.get("Patient", {f"gender:{mod}": "http://hl7.org/fhir/ValueSet/administrative-gender"})
        assert r.status_code == 400 and "system|code" in r.json()["issue"][0]["diagnostics"]


def test_prefix_on_a_token_is_400(api):
    assert api.status("Observation", {"code": "gt100"}) == 400


def test_missing_true_and_false_for_string_and_token(api):
    a, b, c, d = _people(api)
    assert api.ids("Patient", {"family:missing": "true"}) == {d}
    assert api.ids("Patient", {"family:missing": "false"}) == {a, b, c}
    assert api.ids("Patient", {"active:missing": "true"}) == {a, c, d}
    assert api.ids("Patient", {"address-city:missing": "false"}) == {c}
    assert api.status("Patient", {"family:missing": "maybe"}) == 400


def test_id_parameter_matches_ids_with_or(api):
    a, b, _, _ = _people(api)
    assert api.ids("Patient", {"_id": f"{a},{b}"}) == {a, b}
    assert api.ids("Patient", {"_id": "nope"}) == set()


def test_tag_profile_security_and_source(api):
    meta = {"tag": [{"system": "urn:t", "code": "vip"}], "security": [{"system": "urn:s", "code": "R"}],
            "profile": ["http://example.org/StructureDefinition/p"], "source": "urn:src#1"}
    a = api.create(api.patient("Tagged", meta=meta))
    api.create(api.patient("Plain"))
    assert api.ids("Patient", {"_tag": "urn:t|vip"}) == {a}
    assert api.ids("Patient", {"_security": "R"}) == {a}
    assert api.ids("Patient", {"_profile": "http://example.org/StructureDefinition/p"}) == {a}
    assert api.ids("Patient", {"_source": "urn:src#1"}) == {a}
    assert api.ids("Patient", {"_tag:missing": "true"}) != set()
