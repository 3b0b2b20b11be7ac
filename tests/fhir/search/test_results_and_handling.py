"""_summary, _elements, _total; lenient vs strict handling; hostile values (search.html#summary, #errors)."""

from __future__ import annotations

import pytest

SUBSETTED = "SUBSETTED"


def _full_patient(api):
    return api.create(api.patient("Chalmers", gender="male", birthDate="1974-12-25",
                                  text={"status": "generated", "div": "<div xmlns=\"http://www.w3.org/1999/xhtml\">P</div>"},
                                  maritalStatus={"text": "married"}, contact=[{"name": {"family": "X"}}]))


def _only(bundle):
    return bundle["entry"][0]["resource"]


def _tags(resource):
    return [t["code"] for t in resource["meta"].get("tag", [])]


def test_summary_true_keeps_summary_elements_and_marks_subsetted(api):
    _full_patient(api)
    r = _only(api.search("Patient", {"_summary": "true"}))
    assert {"id", "meta", "name", "gender", "birthDate"} <= set(r)
    assert "maritalStatus" not in r and "contact" not in r and "text" not in r
    assert SUBSETTED in _tags(r)


def test_summary_text_data_and_false(api):
    _full_patient(api)
    text = _only(api.search("Patient", {"_summary": "text"}))
    assert set(text) == {"resourceType", "id", "meta", "text"}
    data = _only(api.search("Patient", {"_summary": "data"}))
    assert "text" not in data and "contact" in data and SUBSETTED in _tags(data)
    full = _only(api.search("Patient", {"_summary": "false"}))
    assert "text" in full and SUBSETTED not in _tags(full)


def test_summary_text_keeps_mandatory_elements(api):
    api.create(api.observation(None, "x", 1))
    r = _only(api.search("Observation", {"_summary": "text"}))
    assert {"status", "code"} <= set(r) and "valueQuantity" not in r


def test_summary_count_returns_total_without_entries(api):
    for i in range(4):
        api.create(api.patient(f"P{i}"))
    b = api.search("Patient", {"_summary": "count"})
    assert b["total"] == 4 and "entry" not in b


def test_elements_keeps_listed_and_mandatory_elements(api):
    api.create(api.observation(None, "x", 1))
    r = _only(api.search("Observation", {"_elements": "value,subject"}))
    assert set(r) >= {"resourceType", "id", "meta", "valueQuantity", "status", "code"}
    assert "effectiveDateTime" not in r and SUBSETTED in _tags(r)
    assert api.status("Observation", {"_elements": "a b"}) == 400


def test_total_modes(api):
    for i in range(7):
        api.create(api.patient(f"P{i}"))
    assert api.search("Patient", {"_count": 3})  .get("total") is None  # not free: default leaves it out
    assert api.search("Patient", {"_count": 3, "_total": "accurate"})["total"] == 7
    assert api.search("Patient", {"_count": 3, "_total": "estimate"})["total"] == 7
    assert "total" not in api.search("Patient", {"_total": "none"})
    assert api.search("Patient")["total"] == 7  # the whole result fits the first page
    assert api.status("Patient", {"_total": "lots"}) == 400


def test_total_travels_with_the_next_link(api):
    for i in range(5):
        api.create(api.patient(f"P{i}"))
    b = api.search("Patient", {"_count": 2, "_total": "accurate"})
    b2 = api.search(api.link(b, "next"))
    assert b2["total"] == 5


def test_unknown_parameter_is_ignored_and_reported_in_lenient_mode(api):
    a = api.create(api.patient("A"))
    b = api.search("Patient", {"nonsense": "1", "_list": "x", "family": "a"})
    assert [e["resource"]["id"] for e in b["entry"] if e["search"]["mode"] == "match"] == [a]
    outcome = b["entry"][-1]
    assert outcome["search"]["mode"] == "outcome"
    diagnostics = " ".join(i["diagnostics"] for i in outcome["resource"]["issue"])
    assert "nonsense" in diagnostics and "_list" in diagnostics
    assert all(i["severity"] == "warning" for i in outcome["resource"]["issue"])


@pytest.mark.parametrize("param", ["nonsense", "_query", "_list", "_filter"])
def test_unknown_parameter_is_400_with_strict_handling(api, param):
    r = api.get("Patient", {param: "1"}, headers={"Prefer": "handling=strict"})
    assert r.status_code == 400 and r.json()["resourceType"] == "OperationOutcome"


def test_unknown_sort_key_is_lenient_or_strict(api):
    api.create(api.patient("A"))
    assert api.search("Patient", {"_sort": "nonsense"})["entry"][-1]["search"]["mode"] == "outcome"
    assert api.status("Patient", {"_sort": "nonsense"}, headers={"Prefer": "handling=strict"}) == 400


def test_unknown_modifier_is_400(api):
    assert api.status("Patient", {"family:fuzzy": "x"}) == 400
    assert api.status("Patient", {"birthdate:exact": "2000"}) == 400


@pytest.mark.parametrize("value", ["' OR 1=1 --", "x'; DROP TABLE resources; --", "\" OR \"\"=\"", "%' OR '1'='1",
                                   "\x00", "a" * 5000, "\\", "😀"])
def test_sql_looking_values_never_leak_or_fail(api, value):
    a = api.create(api.patient("Safe"))
    for p in ("family", "name:contains", "gender", "identifier", "_tag", "family:exact"):
        r = api.get("Patient", {p: value})
        assert r.status_code in (200, 400), (p, r.status_code, r.text)
        if r.status_code == 200:
            assert not [e for e in r.json().get("entry", []) if e["search"]["mode"] == "match"]
    for p in ("birthdate", "_id", "organization", "_lastUpdated"):
        assert api.status("Patient", {p: value}) == 400, p
    assert api.ids("Patient") == {a}


def test_content_and_text_search_the_resource_and_its_narrative(api):
    def narrative(words):
        return {"status": "generated", "div": f'<div xmlns="http://www.w3.org/1999/xhtml">{words}</div>'}

    a = api.create({**api.patient("Zorro"), "text": narrative("Prefers Spanish; allergic to Penicillin")})
    b = api.create({**api.patient("Alvarez"), "text": narrative("No known allergies")})
    c = api.create({**api.patient("Penicillin-Free"), "gender": "female"})
    assert api.ids("Patient", {"_text": "penicillin"}) == {a}
    assert api.ids("Patient", {"_content": "penicillin"}) == {a, c}
    assert api.ids("Patient", {"_content": "PENICILLIN", "gender": "female"}) == {c}
    assert api.ids("Patient", {"_text": "spanish,known"}) == {a, b}  # comma: OR
    assert api.ids("Patient", {"_text": ["allerg", "known"]}) == {b}  # repetition: AND
    assert api.ids("Patient", {"_content": "100%_"}) == set()  # LIKE wildcards are literal
    assert api.ids("", {"_content": "alvarez", "_type": "Patient,Observation"}) == {b}
    assert api.status("Patient", {"_text:exact": "x"}) == 400
    assert api.status("Patient", {"_content": ""}) == 400
