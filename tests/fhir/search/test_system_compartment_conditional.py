"""System-level search with _type, compartment search, and ``matches`` for conditional interactions."""

from __future__ import annotations


def test_system_search_with_type_filters_types(api):
    p = api.create(api.patient("A"))
    o = api.create(api.observation(f"Patient/{p}", "x"))
    api.create({"resourceType": "Organization", "name": "Org"})
    b = api.search("", {"_type": "Patient,Observation"})
    assert {(e["resource"]["resourceType"], e["resource"]["id"]) for e in b["entry"]} == {("Patient", p), ("Observation", o)}
    assert b["total"] == 2
    assert len(api.search("")["entry"]) == 3


def test_system_search_with_common_parameters(api):
    meta = {"tag": [{"system": "urn:t", "code": "vip"}]}
    p = api.create(api.patient("A", meta=meta))
    o = api.create(api.observation(None, "x", meta=meta))
    api.create(api.patient("B"))
    assert api.ids("", {"_tag": "urn:t|vip"}) == {p, o}
    assert api.ids("", {"_type": "Patient", "_tag": "vip"}) == {p}
    assert api.ids("", {"_type": "Patient", "family": "a"}) == {p}
    assert api.ids("", {"_id": p}) == {p}
    r = api.client.post("/fhir/_search", data={"_type": "Observation"},
                        headers={"Content-Type": "application/x-www-form-urlencoded"})
    assert r.status_code == 200 and [e["resource"]["id"] for e in r.json()["entry"]] == [o]


def test_system_search_param_not_common_to_all_types_is_unknown(api):
    api.create(api.patient("A"))
    b = api.search("", {"_type": "Patient,Observation", "family": "a"})
    assert b["entry"][-1]["search"]["mode"] == "outcome"
    assert api.status("", {"_type": "Nonsense"}) == 400


def test_system_search_pages_across_types(api):
    ids = {api.create(api.patient(f"P{i}")) for i in range(3)} | {api.create(api.observation(None, "x")) for _ in range(3)}
    b = api.search("", {"_count": 4})
    seen = [e["resource"]["id"] for e in b["entry"]]
    b = api.search(api.link(b, "next"))
    seen += [e["resource"]["id"] for e in b["entry"]]
    assert sorted(seen) == sorted(ids)


def test_compartment_search_returns_only_the_patients_resources(api):
    api.put(api.patient("A", id="pa"))
    api.put(api.patient("B", id="pb"))
    mine = {api.create(api.observation("Patient/pa", "x")), api.create(api.observation("Patient/pa", "y"))}
    api.create(api.observation("Patient/pb", "x"))
    assert api.ids("Patient/pa/Observation") == mine
    assert len(api.ids("Patient/pa/Observation", {"code": "x"})) == 1
    assert api.ids("Patient/nobody/Observation") == set()
    assert api.ids("Patient/pa/Patient") == {"pa"}
    assert api.status("Patient/pa/Organization") == 400
    page = api.search("Patient/pa/Observation", {"_count": 1})
    assert "Patient/pa/Observation" in api.link(page, "self")
    assert len(api.search(api.link(page, "next"))["entry"]) == 1


def test_conditional_create_uses_search_matches(api):
    ident = {"system": "urn:mrn", "value": "77"}
    r1 = api.client.post("/fhir/Patient", json=api.patient("A", identifier=[ident]),
                         headers={"If-None-Exist": "identifier=urn:mrn|77"})
    assert r1.status_code == 201
    r2 = api.client.post("/fhir/Patient", json=api.patient("A", identifier=[ident]),
                         headers={"If-None-Exist": "identifier=urn:mrn|77"})
    assert r2.status_code == 200 and r2.json()["id"] == r1.json()["id"]


def test_conditional_update_and_delete_are_strict(api):
    api.create(api.patient("A", identifier=[{"system": "urn:mrn", "value": "1"}]))
    api.create(api.patient("A", identifier=[{"system": "urn:mrn", "value": "2"}]))
    assert api.client.put("/fhir/Patient?nonsense=1", json=api.patient("X")).status_code == 400
    assert api.client.put("/fhir/Patient?family=a&_sort=family", json=api.patient("X")).status_code == 400
    assert api.client.delete("/fhir/Patient?family=a").status_code == 412
    r = api.client.put("/fhir/Patient?identifier=urn:mrn|2", json=api.patient("Updated"))
    assert r.status_code == 200
    assert api.ids("Patient", {"family": "updated"})
