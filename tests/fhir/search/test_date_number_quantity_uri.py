"""date, number, quantity and uri parameters: prefixes, precision and ranges (search.html#prefix)."""

from __future__ import annotations

import pytest


@pytest.fixture
def dated(api):
    day = api.create(api.observation(None, "x", when="2020-03-15"))
    instant = api.create(api.observation(None, "x", when="2020-03-15T10:30:00Z"))
    month = api.create(api.observation(None, "x", when="2020-04"))
    period = api.create({"resourceType": "Observation", "status": "final", "code": {"text": "p"},
                         "effectivePeriod": {"start": "2020-03-10", "end": "2020-03-20"}})
    open_end = api.create({"resourceType": "Observation", "status": "final", "code": {"text": "p"},
                           "effectivePeriod": {"start": "2021-01-01"}})
    return {"day": day, "instant": instant, "month": month, "period": period, "open": open_end}


def _names(d, ids):
    inv = {v: k for k, v in d.items()}
    return {inv[i] for i in ids}


@pytest.mark.parametrize(("value", "expected"), [
    ("2020-03-15", {"day", "instant"}),
    ("2020-03", {"day", "instant", "period"}),
    ("2020", {"day", "instant", "month", "period"}),
    ("eq2020-03-15T10:30:00Z", {"instant"}),
    ("ne2020-03", {"month", "open"}),
    ("gt2020-03-15", {"month", "period", "open"}),
    ("lt2020-03-15", {"period"}),
    ("ge2020-03-15", {"day", "instant", "month", "period", "open"}),
    ("le2020-03-15", {"day", "instant", "period"}),
    ("sa2020-03-15", {"month", "open"}),
    ("eb2020-03-15", set()),
    ("eb2020-03-21", {"day", "instant", "period"}),
    ("gt2030", {"open"}),
    ("2020-03-15T10:30", {"instant"}),
])
def test_date_prefixes_follow_range_semantics(api, dated, value, expected):
    assert _names(dated, api.ids("Observation", {"date": value})) == expected


def test_date_range_by_repetition_and_approximately(api, dated):
    ids = api.ids("Observation", [("date", "ge2020-03-01"), ("date", "le2020-03-31")])
    assert _names(dated, ids) == {"day", "instant", "period"}
    assert {"day", "instant"} <= _names(dated, api.ids("Observation", {"date": "ap2020-03-16"}))


def test_date_with_time_zone_offset_is_compared_in_utc(api, dated):
    assert _names(dated, api.ids("Observation", {"date": "2020-03-15T12:30:00+02:00"})) == {"instant"}


@pytest.mark.parametrize("bad", ["2020-13", "20200101", "gt", "yesterday", "2020-02-30", "' OR 1=1 --"])
def test_malformed_dates_are_400(api, bad):
    r = api.get("Observation", {"date": bad})
    assert r.status_code == 400
    assert r.json()["resourceType"] == "OperationOutcome"


def test_last_updated_uses_the_resource_table(api):
    a = api.create(api.patient("A"))
    lu = api.get(f"Patient/{a}").json()["meta"]["lastUpdated"]
    assert api.ids("Patient", {"_lastUpdated": f"ge{lu[:10]}"}) == {a}
    assert api.ids("Patient", {"_lastUpdated": "lt2000-01-01"}) == set()
    assert api.ids("Patient", {"_lastUpdated": "gt2000"}) == {a}


def _risk(api, value):
    return api.create({"resourceType": "RiskAssessment", "status": "final", "subject": {"reference": "Patient/x"},
                       "prediction": [{"probabilityDecimal": value}]})


def test_number_equality_uses_the_implicit_precision_of_the_search_value(api):
    low, mid, high, other = _risk(api, 99.4), _risk(api, 99.5), _risk(api, 100.4), _risk(api, 100.5)
    assert api.ids("RiskAssessment", {"probability": "100"}) == {mid, high}
    assert api.ids("RiskAssessment", {"probability": "100.4"}) == {high}
    assert api.ids("RiskAssessment", {"probability": "gt100"}) == {high, other}
    assert api.ids("RiskAssessment", {"probability": "le99.5"}) == {low, mid}
    assert api.ids("RiskAssessment", {"probability": "ne100"}) == {low, other}
    assert api.ids("RiskAssessment", {"probability": "1e2"}) == {low, mid, high, other}
    assert api.status("RiskAssessment", {"probability": "abc"}) == 400


def test_quantity_value_system_code_and_unit(api):
    a = api.create(api.observation(None, "x", 120, unit="mm[Hg]"))
    b = api.create(api.observation(None, "x", 90, unit="mm[Hg]"))
    c = api.create({"resourceType": "Observation", "status": "final", "code": {"text": "w"},
                    "valueQuantity": {"value": 120, "unit": "kg"}})
    assert api.ids("Observation", {"value-quantity": "120"}) == {a, c}
    assert api.ids("Observation", {"value-quantity": "gt100|http://unitsofmeasure.org|mm[Hg]"}) == {a}
    assert api.ids("Observation", {"value-quantity": "lt100||mm[Hg]"}) == {b}
    assert api.ids("Observation", {"value-quantity": "120||kg"}) == {c}
    assert api.ids("Observation", {"value-quantity": "120.0"}) == {a, c}
    assert api.ids("Observation", {"value-quantity": "119.9"}) == set()
    assert api.status("Observation", {"value-quantity": "120|kg"}) == 400
    assert api.status("Observation", {"value-quantity": "lots"}) == 400


def test_uri_exact_above_and_below(api):
    a = api.create({"resourceType": "ValueSet", "status": "active", "url": "http://acme.org/fhir/ValueSet/a"})
    b = api.create({"resourceType": "ValueSet", "status": "active", "url": "http://acme.org/fhir"})
    c = api.create({"resourceType": "ValueSet", "status": "active", "url": "http://other.org/ValueSet/a"})
    assert api.ids("ValueSet", {"url": "http://acme.org/fhir/ValueSet/a"}) == {a}
    assert api.ids("ValueSet", {"url": "http://acme.org/fhir/ValueSet"}) == set()
    assert api.ids("ValueSet", {"url:below": "http://acme.org/fhir"}) == {a, b}
    assert api.ids("ValueSet", {"url:above": "http://acme.org/fhir/ValueSet/a/b"}) == {a, b}
    assert c not in api.ids("ValueSet", {"url:below": "http://acme.org"})


def test_composite_components_must_match_the_same_element(api):
    bp = {"resourceType": "Observation", "status": "final", "code": {"text": "bp"}, "component": [
        {"code": {"coding": [{"system": "http://loinc.org", "code": "8480-6"}]}, "valueQuantity": {"value": 90}},
        {"code": {"coding": [{"system": "http://loinc.org", "code": "8462-4"}]}, "valueQuantity": {"value": 140}},
    ]}
    a = api.create(bp)
    q = "component-code-value-quantity"
    assert api.ids("Observation", {q: "http://loinc.org|8462-4$gt100"}) == {a}
    assert api.ids("Observation", {q: "http://loinc.org|8480-6$gt100"}) == set()
    assert api.ids("Observation", {q: "8480-6$lt100,8480-6$gt1000"}) == {a}
    simple = api.create(api.observation(None, "8480-6", 130))
    assert api.ids("Observation", {"code-value-quantity": "http://loinc.org|8480-6$gt100"}) == {simple}
    assert api.status("Observation", {q: "8480-6"}) == 400
