"""De-identification of hand-made resources: each Safe Harbor class, and the policy's knobs."""

from __future__ import annotations

import copy
import json
import re

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from medcloud.errors import Invalid
from medcloud.security.deid import Action, DeidContext, DeidPolicy, deidentify

KEY = b"0123456789abcdef0123456789abcdef"
CTX = DeidContext(reference_year=2025)


@pytest.fixture
def policy():
    return DeidPolicy.safe_harbor(KEY)


PATIENT = {
    "resourceType": "Patient",
    "id": "pat-1",
    "meta": {"versionId": "3", "lastUpdated": "2024-05-06T07:08:09.123Z", "source": "http://ehr.example.org/x"},
    "text": {"status": "generated", "div": '<div xmlns="http://www.w3.org/1999/xhtml">Jane Q Public, 12 Elm St</div>'},
    "identifier": [
        {"type": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v2-0203", "code": "SS"}]},
         "system": "http://hl7.org/fhir/sid/us-ssn", "value": "123-45-6789"},
        {"type": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v2-0203", "code": "MR"}]},
         "system": "urn:mrn", "value": "MRN0042"},
        {"type": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v2-0203", "code": "DL"}]},
         "value": "D1234567", "period": {"start": "2015-03-04", "end": "2030-03-04"}},
        {"type": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v2-0203", "code": "PPN"}]},
         "value": "X98765432"},
    ],
    "name": [{"use": "official", "family": "Public", "given": ["Jane", "Quincy"], "prefix": ["Mrs."]}],
    "telecom": [{"system": "phone", "value": "617-555-0199"}, {"system": "fax", "value": "617-555-0100"},
                {"system": "email", "value": "jane.public@example.com"},
                {"system": "url", "value": "https://jane.example.com/blog"}],
    "gender": "female",
    "birthDate": "1929-07-14",
    "_birthDate": {"extension": [{"url": "http://hl7.org/fhir/StructureDefinition/patient-birthTime",
                                  "valueDateTime": "1929-07-14T04:05:00Z"}]},
    "address": [{"line": ["12 Elm St", "Apt 4"], "city": "Springfield", "district": "Hampden",
                 "state": "MA", "postalCode": "01103-1234", "country": "US",
                 "extension": [{"url": "http://hl7.org/fhir/StructureDefinition/geolocation",
                                "extension": [{"url": "latitude", "valueDecimal": 42.1015},
                                              {"url": "longitude", "valueDecimal": -72.5898}]}]}],
    "photo": [{"contentType": "image/jpeg", "data": "/9j/4AAQSkZJRgABAQ"}],
    "contact": [{"name": {"family": "Public", "given": ["John"]}, "telecom": [{"system": "phone", "value": "617-555-0111"}]}],
    "extension": [{"url": "http://hl7.org/fhir/StructureDefinition/patient-mothersMaidenName", "valueString": "Smithers"},
                  {"url": "http://hl7.org/fhir/StructureDefinition/patient-birthPlace",
                   "valueAddress": {"city": "Chicopee", "state": "MA", "country": "US"}}],
    "managingOrganization": {"reference": "Organization/org-9", "display": "Springfield General"},
    "generalPractitioner": [{"reference": "https://ehr.example.org/fhir/Practitioner/dr-7/_history/2",
                             "display": "Dr. Alice Carver"}],
}

IDENTIFYING = ["Jane", "Quincy", "Public", "John", "Smithers", "Springfield", "Hampden", "Chicopee", "Elm St",
               "Apt 4", "01103", "42.1015", "-72.5898", "617-555-0199", "617-555-0100", "617-555-0111",
               "jane.public@example.com", "jane.example.com", "123-45-6789", "MRN0042", "D1234567", "X98765432",
               "1929-07-14", "07-14", "2024-05-06", "2015-03-04", "/9j/4AAQ", "ehr.example.org", "Alice Carver",
               "pat-1", "dr-7", "org-9"]


def _dump(r) -> str:
    return json.dumps(r, ensure_ascii=False)


def test_every_identifying_value_of_a_patient_is_gone(policy):
    out = deidentify(PATIENT, policy, CTX)
    text = _dump(out)
    assert [s for s in IDENTIFYING if s in text] == []


def test_what_is_kept_is_useful_and_valid(policy):
    out = deidentify(PATIENT, policy, CTX)
    assert out["gender"] == "female"
    assert out["birthDate"] == "1935"  # 96 years old: aggregated into "90 or older" (2025 - 90)
    assert out["address"] == [{"state": "MA", "country": "US", "postalCode": "011"}]
    assert out["extension"] == [{"url": "http://hl7.org/fhir/StructureDefinition/patient-birthPlace",
                                 "valueAddress": {"state": "MA", "country": "US"}}]
    assert [i["type"]["coding"][0]["code"] for i in out["identifier"]] == ["SS", "MR", "DL", "PPN"]
    assert out["identifier"][2]["period"] == {"start": "2015", "end": "2030"}
    assert out["text"]["div"].startswith('<div xmlns="http://www.w3.org/1999/xhtml">')
    assert out["meta"] == {"versionId": "3"}
    assert out["managingOrganization"] == {"reference": f"Organization/{policy.pseudonym_id('org-9')}"}
    assert out["generalPractitioner"] == [{"reference": f"Practitioner/{policy.pseudonym_id('dr-7')}/_history/2"}]
    assert out["id"] == policy.pseudonym_id("pat-1")
    for k in ("name", "telecom", "photo", "contact", "_birthDate"):  # birthTime would tell the year
        assert k not in out
    young = deidentify(dict(PATIENT, birthDate="1990-07-14"), policy, CTX)
    assert young["_birthDate"]["extension"][0]["valueDateTime"] == "1929"  # (a made-up mismatch) -> year only


def test_input_is_not_changed(policy):
    before = copy.deepcopy(PATIENT)
    deidentify(PATIENT, policy, CTX)
    assert before == PATIENT


@pytest.mark.parametrize(("zip_code", "expected"), [
    ("02138", "021"), ("02138-1234", "021"), ("03601", "000"), ("89301", "000"), ("82100", "000"),
    ("SW1A 1AA", None), ("1234", None), ("", None),
])
def test_zip_codes_keep_three_digits_unless_the_area_is_small(policy, zip_code, expected):
    assert policy.generalise_zip(zip_code) == expected


def test_ages_over_89_are_aggregated_and_younger_ages_kept(policy):
    cond = {"resourceType": "Condition", "id": "c1", "subject": {"reference": "Patient/p"},
            "onsetAge": {"value": 93, "unit": "years", "system": "http://unitsofmeasure.org", "code": "a"},
            "abatementAge": {"value": 45, "unit": "years", "system": "http://unitsofmeasure.org", "code": "a"}}
    out = deidentify(cond, policy, CTX)
    assert out["onsetAge"] == {"system": "http://unitsofmeasure.org", "value": 90, "comparator": ">=", "unit": "a", "code": "a"}
    assert out["abatementAge"]["value"] == 45
    young = dict(PATIENT, birthDate="1990-02-03")
    assert deidentify(young, policy, CTX)["birthDate"] == "1990"
    dead = dict(PATIENT, birthDate="1900-01-01", deceasedDateTime="1985-06-07")
    out = deidentify(dead, policy, CTX)
    assert out["birthDate"] == "1900" and out["deceasedDateTime"] == "1985"  # died at 85: nothing to aggregate


def test_free_text_is_removed_and_coded_concepts_keep_their_label(policy):
    obs = {"resourceType": "Observation", "id": "o1", "status": "final",
           "code": {"coding": [{"system": "http://loinc.org", "code": "8302-2", "display": "Body height"}],
                    "text": "Body height"},
           "valueString": "patient Jane says her neighbour Bob visits daily",
           "note": [{"text": "Called Jane at 617-555-0199", "time": "2020-01-02T03:04:05Z"}],
           "method": {"text": "measured at Jane's home on Elm St"},
           "effectivePeriod": {"start": "2020-01-02T03:04:05+01:00", "end": "2020-01-03"},
           "issued": "2020-01-02T03:04:05.000Z",
           "subject": {"reference": "Patient/pat-1", "display": "Jane Public"}}
    out = deidentify(obs, policy, CTX)
    assert out["code"]["text"] == "Body height"
    assert "method" not in out and "note" not in out and "valueString" not in out and "issued" not in out
    assert out["effectivePeriod"] == {"start": "2020", "end": "2020"}
    assert "Jane" not in _dump(out)


def test_urls_ips_and_device_serials_are_removed(policy):
    audit = {"resourceType": "AuditEvent", "id": "a1", "type": {"code": "rest"}, "recorded": "2020-01-01T00:00:00Z",
             "agent": [{"requestor": True, "who": {"reference": "Patient/pat-1"},
                        "network": {"address": "192.168.10.20", "type": "2"}}],
             "source": {"observer": {"display": "medcloud"}}}
    out = deidentify(audit, policy, CTX)
    assert "192.168" not in _dump(out) and "recorded" not in out
    device = {"resourceType": "Device", "id": "d1", "serialNumber": "SN-778899", "lotNumber": "LOT1",
              "udiCarrier": [{"deviceIdentifier": "00844588003288", "carrierHRF": "(01)00844588003288"}],
              "url": "https://device.example.com/d1", "patient": {"reference": "Patient/pat-1"}}
    text = _dump(deidentify(device, policy, CTX))
    assert not any(s in text for s in ("SN-778899", "LOT1", "00844588003288", "device.example.com"))
    doc = {"resourceType": "DocumentReference", "id": "r1", "status": "current",
           "content": [{"attachment": {"contentType": "text/plain", "data": "SmFuZSBQdWJsaWM=",
                                       "url": "https://files.example.com/r1.txt", "title": "Jane's note"}}]}
    assert deidentify(doc, policy, CTX)["content"] == [{"attachment": {"contentType": "text/plain"}}]


def test_imaging_uids_are_replaced_consistently(policy):
    study = {"resourceType": "ImagingStudy", "id": "s1", "status": "available", "subject": {"reference": "Patient/pat-1"},
             "identifier": [{"system": "urn:dicom:uid", "value": "urn:oid:1.2.840.99.1"}],
             "series": [{"uid": "1.2.840.99.1.1", "modality": {"code": "CT"},
                         "instance": [{"uid": "1.2.840.99.1.1.1", "sopClass": {"code": "1.2.840.10008.5.1.4.1.1.2"}}]}]}
    a, b = deidentify(study, policy, CTX), deidentify(study, policy, CTX)
    assert a == b
    assert re.fullmatch(r"2\.25\.\d+", a["series"][0]["uid"])
    assert "1.2.840.99" not in _dump(a)


def test_bundle_conditional_references_use_the_same_identifier_pseudonyms(policy):
    bundle = {"resourceType": "Bundle", "type": "transaction", "link": [{"relation": "self", "url": "https://x/fhir?name=Jane"}],
              "entry": [
                  {"fullUrl": "urn:uuid:11111111-1111-4111-8111-111111111111",
                   "resource": {"resourceType": "Practitioner", "id": "11111111-1111-4111-8111-111111111111",
                                "identifier": [{"system": "http://hl7.org/fhir/sid/us-npi", "value": "9999912345"}]},
                   "request": {"method": "POST", "url": "Practitioner",
                               "ifNoneExist": "identifier=http://hl7.org/fhir/sid/us-npi|9999912345"}},
                  {"fullUrl": "urn:uuid:22222222-2222-4222-8222-222222222222",
                   "resource": {"resourceType": "Encounter", "id": "22222222-2222-4222-8222-222222222222", "status": "finished",
                                "class": {"code": "AMB"},
                                "participant": [{"individual": {
                                    "reference": "Practitioner?identifier=http://hl7.org/fhir/sid/us-npi|9999912345"}}]},
                   "request": {"method": "PUT", "url": "Encounter/22222222-2222-4222-8222-222222222222"}},
              ]}
    out = deidentify(bundle, policy, CTX)
    text = _dump(out)
    assert "9999912345" not in text and "Jane" not in text and "link" not in out
    npi = out["entry"][0]["resource"]["identifier"][0]["value"]
    assert out["entry"][0]["request"]["ifNoneExist"] == f"identifier=http://hl7.org/fhir/sid/us-npi|{npi}"
    assert out["entry"][1]["resource"]["participant"][0]["individual"]["reference"] == \
        f"Practitioner?identifier=http://hl7.org/fhir/sid/us-npi|{npi}"
    eid = out["entry"][1]["resource"]["id"]
    assert out["entry"][1]["fullUrl"] == f"urn:uuid:{eid}" and out["entry"][1]["request"]["url"] == f"Encounter/{eid}"


def test_contained_resources_are_walked_and_keep_local_ids(policy):
    eob = {"resourceType": "ExplanationOfBenefit", "id": "e1",
           "contained": [{"resourceType": "Coverage", "id": "cov", "status": "active",
                          "subscriberId": "HP-123456", "beneficiary": {"reference": "Patient/pat-1"},
                          "payor": [{"display": "Acme Health"}]}],
           "insurance": [{"focal": True, "coverage": {"reference": "#cov"}}],
           "patient": {"reference": "Patient/pat-1"}}
    out = deidentify(eob, policy, CTX)
    assert out["contained"][0]["id"] == "cov" and out["insurance"][0]["coverage"] == {"reference": "#cov"}
    assert "HP-123456" not in _dump(out)


def test_pseudonymised_names_and_telecom_are_consistent(policy):
    p = policy.with_actions(names="pseudonymise", telecom="pseudonymise")
    a, b = deidentify(PATIENT, p, CTX), deidentify(PATIENT, p, CTX)
    assert a["name"] == b["name"] and a["name"][0]["text"].startswith("Anonymous-")
    assert "Jane" not in _dump(a) and "617-555-0199" not in _dump(a)


def test_date_shift_is_consistent_per_patient_and_differs_between_patients(policy):
    shift = policy.with_actions(dates="shift")
    assert shift.shift_days("pat-1") == shift.shift_days("pat-1") != 0
    assert len({shift.shift_days(f"p{i}") for i in range(50)}) > 25
    obs = {"resourceType": "Observation", "id": "o", "status": "final", "code": {"text": "x"},
           "subject": {"reference": "Patient/pat-1"}, "effectiveDateTime": "2020-02-28T23:00:00Z"}
    out = deidentify(obs, shift, CTX)
    from datetime import datetime, timedelta
    assert datetime.fromisoformat(out["effectiveDateTime"].replace("Z", "+00:00")) == \
        datetime.fromisoformat("2020-02-28T23:00:00+00:00") + timedelta(days=shift.shift_days("pat-1"))
    pat = deidentify(dict(PATIENT, birthDate="1990-02-03"), shift, CTX)
    from datetime import date
    assert date.fromisoformat(pat["birthDate"]) == date(1990, 2, 3) + timedelta(days=shift.shift_days("pat-1"))


def test_keep_everything_policy_is_not_safe_harbor_and_keeps_the_resource():
    keep = DeidPolicy(key=KEY, **{c: "keep" for c in ("names", "geography", "dates", "ages", "telecom", "identifiers",
                                                      "urls", "ip_addresses", "biometrics", "free_text", "resource_ids")})
    assert not keep.is_safe_harbor and DeidPolicy.safe_harbor(KEY).is_safe_harbor
    out = deidentify(PATIENT, keep, CTX)
    assert out["name"] == PATIENT["name"] and out["birthDate"] == PATIENT["birthDate"]


def test_policy_loads_from_toml_and_json_and_refuses_mistakes(tmp_path):
    toml = tmp_path / "p.toml"
    toml.write_text('[actions]\ndates = "shift"\nnames = "pseudonymise"\n[options]\nshift_max_days = 30\n'
                    'restricted_zip3 = ["021"]\n')
    p = DeidPolicy.load(toml, key=KEY)
    assert p.dates is Action.SHIFT and p.names is Action.PSEUDONYMISE and p.shift_max_days == 30
    assert p.generalise_zip("02138") == "000"
    js = tmp_path / "p.json"
    js.write_text(json.dumps({"actions": {"free_text": "remove"}, "options": {"codeable_concept_text": "remove"}}))
    assert DeidPolicy.load(js, key=KEY).codeable_concept_text == "remove"
    for bad in ({"actions": {"nmaes": "remove"}}, {"actions": {"urls": "pseudonymise"}},
                {"actions": {"dates": "blur"}}, {"options": {"key": "x"}}, {"other": {}}):
        with pytest.raises(Invalid):
            DeidPolicy.from_mapping(bad, key=KEY)
    with pytest.raises(Invalid):
        DeidPolicy(key=b"short")
    (tmp_path / "bad.toml").write_text("[actions\n")
    with pytest.raises(Invalid):
        DeidPolicy.load(tmp_path / "bad.toml", key=KEY)


def test_pseudonyms_depend_on_the_key():
    a, b = DeidPolicy.safe_harbor(KEY), DeidPolicy.safe_harbor(KEY[::-1])
    assert a.pseudonym_id("pat-1") != b.pseudonym_id("pat-1")
    assert a.pseudonym("identifier", "x") != b.pseudonym("identifier", "x")


_json = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(
        st.sampled_from(["name", "address", "telecom", "identifier", "birthDate", "text", "subject", "reference",
                         "value", "valueString", "extension", "url", "coding", "period", "start", "_birthDate",
                         "contained", "entry", "resource", "fullUrl", "note", "onsetAge", "photo", "x"]),
        children, max_size=6),
    max_leaves=30,
)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.sampled_from(["Patient", "Observation", "Bundle", "Condition", "Device", "Unknown"]),
       st.dictionaries(st.text(max_size=12), _json, max_size=8) | st.dictionaries(
           st.sampled_from(["name", "address", "telecom", "identifier", "birthDate", "text", "subject", "entry",
                            "contained", "extension", "onsetAge", "deceasedDateTime", "id"]), _json, max_size=8))
def test_deidentify_never_fails_on_malformed_resources(rtype, body):
    for dates in ("generalise", "shift"):
        out = deidentify({**body, "resourceType": rtype}, DeidPolicy.safe_harbor(KEY).with_actions(dates=dates), CTX)
        assert out["resourceType"] == rtype
        json.dumps(out)
