"""Token :in / :not-in (ValueSet expansion) and :above / :below (subsumption), search.html#token."""

from __future__ import annotations

from typing import Any

import pytest

from medcloud.errors import Invalid, NotSupported
from medcloud.fhir.terminology import Terminology

SCT = "http://snomed.info/sct"
LOCAL = "http://example.org/cs/findings"


def _condition(system: str, code: str, cid: str) -> dict[str, Any]:
    return {"resourceType": "Condition", "id": cid, "subject": {"reference": "Patient/p"},
            "code": {"coding": [{"system": system, "code": code}]}}


@pytest.fixture
def coded(api: Any) -> Any:
    api.put({"resourceType": "Patient", "id": "p"})
    api.put(_condition(SCT, "44054006", "diabetes2"))
    api.put(_condition(SCT, "46635009", "diabetes1"))
    api.put(_condition(SCT, "38341003", "hypertension"))
    api.put(_condition(LOCAL, "lung-nodule", "nodule"))
    api.put(_condition(LOCAL, "lung-mass", "mass"))
    api.put(_condition(LOCAL, "fracture", "fracture"))
    api.put({"resourceType": "ValueSet", "id": "diabetes", "url": "http://example.org/vs/diabetes", "status": "active",
             "compose": {"include": [{"system": SCT, "concept": [{"code": "44054006"}, {"code": "46635009"}]}]}})
    api.put({"resourceType": "CodeSystem", "id": "findings", "url": LOCAL, "status": "active", "content": "complete",
             "concept": [{"code": "lung", "concept": [{"code": "lung-nodule"}, {"code": "lung-mass"}]},
                         {"code": "fracture"}]})
    api.put({"resourceType": "ValueSet", "id": "lung", "url": "http://example.org/vs/lung", "status": "active",
             "compose": {"include": [{"system": LOCAL, "filter": [{"property": "concept", "op": "is-a",
                                                                   "value": "lung"}]}]}})
    api.put({"resourceType": "ValueSet", "id": "all-but-fracture", "url": "http://example.org/vs/nofrac",
             "status": "active", "compose": {"include": [{"system": LOCAL}],
                                              "exclude": [{"system": LOCAL, "concept": [{"code": "fracture"}]}]}})
    return api


def test_in_matches_the_codes_of_a_stored_value_set(coded: Any) -> None:
    assert coded.ids("Condition", {"code:in": "http://example.org/vs/diabetes"}) == {"diabetes1", "diabetes2"}
    assert coded.ids("Condition", {"code:not-in": "http://example.org/vs/diabetes"}) == {
        "hypertension", "nodule", "mass", "fracture"}
    assert coded.ids("Condition", {"code:in": "http://example.org/vs/lung"}) == {"nodule", "mass"}
    assert coded.ids("Condition", {"code:in": "http://example.org/vs/nofrac"}) == {"nodule", "mass"}
    # OR of two value sets, and combined with another parameter
    assert coded.ids("Condition", {"code:in": "http://example.org/vs/lung,http://example.org/vs/diabetes"}) == {
        "nodule", "mass", "diabetes1", "diabetes2"}
    assert coded.ids("Patient", {"_has:Condition:subject:code:in": "http://example.org/vs/lung"}) == {"p"}


def test_below_and_above_walk_the_code_system_hierarchy(coded: Any) -> None:
    assert coded.ids("Condition", {"code:below": f"{LOCAL}|lung"}) == {"nodule", "mass"}
    assert coded.ids("Condition", {"code:below": f"{LOCAL}|lung-mass"}) == {"mass"}
    coded.put(_condition(LOCAL, "lung", "lung"))
    assert coded.ids("Condition", {"code:above": f"{LOCAL}|lung-mass"}) == {"mass", "lung"}


def test_in_with_an_r4_value_set_of_a_whole_code_system(api: Any) -> None:
    for i, status in enumerate(("final", "amended", "preliminary")):
        api.put({"resourceType": "Observation", "id": f"o{i}", "status": status, "code": {"text": "x"}})
    # Observation.status is a plain code (no system recorded): matched by the value set's codes
    assert api.ids("Observation", {"status:in": "http://hl7.org/fhir/ValueSet/observation-status"}) == {"o0", "o1", "o2"}
    api.put({"resourceType": "ValueSet", "id": "done", "url": "http://example.org/vs/done", "status": "active",
             "compose": {"include": [{"system": "http://hl7.org/fhir/observation-status",
                                      "concept": [{"code": "final"}, {"code": "amended"}]}]}})
    assert api.ids("Observation", {"status:in": "http://example.org/vs/done"}) == {"o0", "o1"}
    assert api.ids("Observation", {"status:not-in": "http://example.org/vs/done"}) == {"o2"}
    api.put({"resourceType": "Observation", "id": "cat", "status": "final", "code": {"text": "y"},
             "category": [{"coding": [{"system": "http://terminology.hl7.org/CodeSystem/observation-category",
                                       "code": "laboratory"}]}]})
    assert api.ids("Observation", {"category:in": "http://hl7.org/fhir/ValueSet/observation-category"}) == {"cat"}


@pytest.mark.parametrize(("params", "why"), [
    ({"code:in": "http://example.org/vs/unknown"}, "unknown ValueSet"),
    ({"code:in": "http://hl7.org/fhir/ValueSet/condition-code"}, "terminology server"),  # filters SNOMED CT
    ({"code:below": "lung"}, "system|code"),
    ({"code:below": f"{SCT}|44054006"}, "does not know"),
])
def test_what_cannot_be_evaluated_is_a_clear_400(coded: Any, params: dict[str, str], why: str) -> None:
    r = coded.get("Condition", params)
    assert r.status_code == 400, r.text
    outcome = r.json()
    assert outcome["resourceType"] == "OperationOutcome" and why in outcome["issue"][0]["diagnostics"]


def test_expansion_rules() -> None:
    stored = {
        "http://x/cs": {"resourceType": "CodeSystem", "url": "http://x/cs", "content": "complete", "concept": [
            {"code": "a", "concept": [{"code": "a1"}, {"code": "a2", "concept": [{"code": "a2x"}]}]},
            {"code": "b", "property": [{"code": "status", "valueCode": "retired"}]}]},
        "http://x/vs1": {"resourceType": "ValueSet", "url": "http://x/vs1", "compose": {"include": [
            {"system": "http://x/cs", "filter": [{"property": "concept", "op": "descendent-of", "value": "a"}]}]}},
        "http://x/vs2": {"resourceType": "ValueSet", "url": "http://x/vs2", "compose": {"include": [
            {"valueSet": ["http://x/vs1"], "system": "http://x/cs", "filter": [
                {"property": "concept", "op": "is-not-a", "value": "a2"}]}]}},
        "http://x/vs3": {"resourceType": "ValueSet", "url": "http://x/vs3", "compose": {"include": [
            {"system": "http://x/cs", "filter": [{"property": "status", "op": "=", "value": "retired"}]}]}},
        "http://x/loop": {"resourceType": "ValueSet", "url": "http://x/loop", "compose": {"include": [
            {"valueSet": ["http://x/loop"]}]}},
        "http://x/pre": {"resourceType": "ValueSet", "url": "http://x/pre", "expansion": {"contains": [
            {"system": "s", "code": "1", "contains": [{"system": "s", "code": "2"}]}]}},
    }
    t = Terminology(lambda rtype, url: stored.get(url.split("|")[0]))
    assert {c for _, c in t.expand("http://x/vs1").codes} == {"a1", "a2", "a2x"}
    assert {c for _, c in t.expand("http://x/vs2").codes} == {"a1"}
    assert {c for _, c in t.expand("http://x/vs3").codes} == {"b"}
    assert t.expand("http://x/pre").codes == {("s", "1"), ("s", "2")}
    assert {c for _, c in t.subsumption("http://x/cs", "a2x", "above").codes} == {"a2x", "a2", "a"}
    with pytest.raises(Invalid):
        t.expand("http://x/loop")
    with pytest.raises(NotSupported):
        t.subsumption("http://unknown/cs", "1", "below")
    gender = Terminology().expand("http://hl7.org/fhir/ValueSet/administrative-gender")
    assert gender.systems == {"http://hl7.org/fhir/administrative-gender"}
