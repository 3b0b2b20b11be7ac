"""_include and _revinclude (search.html#include): typed, wildcard, :iterate, search.mode."""

from __future__ import annotations


def _world(api):
    api.put({"resourceType": "Organization", "id": "org", "name": "Acme", "partOf": {"reference": "Organization/parent"}})
    api.put({"resourceType": "Organization", "id": "parent", "name": "Parent", "partOf": {"reference": "Organization/org"}})
    api.put(api.patient("A", id="pa", managingOrganization={"reference": "Organization/org"}))
    api.put({"resourceType": "Practitioner", "id": "dr", "name": [{"family": "Who"}]})
    obs = [api.create(api.observation("Patient/pa", "1", performer=[{"reference": "Practitioner/dr"}])),
           api.create(api.observation("Patient/pa", "2"))]
    return obs


def _modes(bundle):
    return {(e["resource"]["resourceType"], e["resource"]["id"]): e["search"]["mode"] for e in bundle["entry"]}


def test_include_adds_referenced_resources_once_marked_include(api):
    obs = _world(api)
    b = api.search("Observation", {"_include": "Observation:subject"})
    modes = _modes(b)
    assert modes == {("Observation", obs[0]): "match", ("Observation", obs[1]): "match", ("Patient", "pa"): "include"}
    assert len(b["entry"]) == 3
    assert b["total"] == 2  # total counts matches only


def test_include_with_target_type_and_wildcard(api):
    _world(api)
    b = api.search("Observation", {"_include": "Observation:subject:Group"})
    assert {k[0] for k in _modes(b)} == {"Observation"}
    b = api.search("Observation", {"_include": "Observation:*"})
    assert {k for k, m in _modes(b).items() if m == "include"} == {("Patient", "pa"), ("Practitioner", "dr")}


def test_revinclude(api):
    obs = _world(api)
    b = api.search("Patient", {"_revinclude": "Observation:subject"})
    assert _modes(b) == {("Patient", "pa"): "match", ("Observation", obs[0]): "include", ("Observation", obs[1]): "include"}


def test_include_iterate_follows_included_resources_and_stops_on_cycles(api):
    _world(api)
    q = [("_include", "Observation:subject"), ("_include:iterate", "Patient:organization"),
         ("_include:iterate", "Organization:partof")]
    modes = _modes(api.search("Observation", q))
    assert modes[("Patient", "pa")] == "include"
    assert modes[("Organization", "org")] == "include"
    assert modes[("Organization", "parent")] == "include"  # org -> parent -> org is a cycle: no duplicates
    assert len(modes) == 5
    without_iterate = _modes(api.search("Observation", [("_include", "Observation:subject"),
                                                        ("_include", "Patient:organization")]))
    assert ("Organization", "org") not in without_iterate


def test_revinclude_iterate(api):
    _world(api)
    q = [("_revinclude", "Patient:organization"), ("_revinclude:iterate", "Observation:subject")]
    modes = _modes(api.search("Organization", {"_id": "org", **dict(q[:1])} if False else [("_id", "org"), *q]))
    assert modes[("Patient", "pa")] == "include"
    assert sum(1 for k in modes if k[0] == "Observation") == 2


def test_include_of_deleted_target_is_left_out(api):
    _world(api)
    api.client.delete("/fhir/Patient/pa")
    b = api.search("Observation", {"_include": "Observation:subject"})
    assert {k[0] for k in _modes(b)} == {"Observation"}


def test_unknown_include_is_reported_leniently_and_400_strictly(api):
    _world(api)
    b = api.search("Observation", {"_include": "Observation:nonsense"})
    assert b["entry"][-1]["search"]["mode"] == "outcome"
    r = api.get("Observation", {"_include": "Observation:nonsense"}, headers={"Prefer": "handling=strict"})
    assert r.status_code == 400
    assert api.status("Observation", {"_include": "garbage"}) == 400


def test_revinclude_with_wildcard_parameter(api):
    obs = _world(api)
    modes = _modes(api.search("Patient", {"_revinclude": "Observation:*"}))
    assert {k for k, m in modes.items() if m == "include"} == {("Observation", o) for o in obs}
    modes = _modes(api.search("Practitioner", {"_revinclude": "Observation:*"}))
    assert {k for k, m in modes.items() if m == "include"} == {("Observation", obs[0])}
