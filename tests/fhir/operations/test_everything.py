"""Patient/[id]/$everything: compartment, referenced resources, paging, filters, guard."""

from __future__ import annotations

from typing import Any

P1_EVERYTHING = {"Patient/p1", "Encounter/e1", "Observation/o1", "Condition/c1", "Practitioner/dr",
                 "Organization/org", "Location/ward"}


def _key(entry: dict[str, Any]) -> str:
    return f"{entry['resource']['resourceType']}/{entry['resource']['id']}"


def _all_pages(client, url: str, **params: Any) -> tuple[list[str], int]:
    got: list[str] = []
    pages = 0
    r = client.get(url, params=params) if params else client.get(url)
    while True:
        assert r.status_code == 200, r.text
        b = r.json()
        assert b["type"] == "searchset"
        pages += 1
        got += [_key(e) for e in b.get("entry", []) if e["resource"]["resourceType"] != "OperationOutcome"]
        nxt = [link["url"] for link in b["link"] if link["relation"] == "next"]
        if not nxt:
            return got, pages
        r = client.get(nxt[0].replace("http://testserver", ""))


def test_everything_returns_patient_first_its_compartment_and_referenced_resources(loaded_graph):
    client = loaded_graph
    r = client.get("/fhir/Patient/p1/$everything")
    assert r.status_code == 200, r.text
    b = r.json()
    keys = [_key(e) for e in b["entry"]]
    assert keys[0] == "Patient/p1"
    assert set(keys) == P1_EVERYTHING and len(keys) == len(P1_EVERYTHING)
    modes = {_key(e): e["search"]["mode"] for e in b["entry"]}
    assert modes["Observation/o1"] == "match" and modes["Organization/org"] == "include"
    assert b["entry"][0]["fullUrl"] == "http://testserver/fhir/Patient/p1"


def test_everything_pages_with_count_without_duplicates(loaded_graph):
    client = loaded_graph
    got, pages = _all_pages(client, "/fhir/Patient/p1/$everything", _count=2)
    assert sorted(got) == sorted(P1_EVERYTHING)
    assert pages == 4


def test_everything_paging_is_stable_under_concurrent_writes(loaded_graph):
    client = loaded_graph
    first = client.get("/fhir/Patient/p1/$everything", params={"_count": 3}).json()
    seen = [_key(e) for e in first["entry"]]
    # Between pages: a new member appears and an already-returned one is updated.
    client.put("/fhir/Observation/o3", json={"resourceType": "Observation", "id": "o3", "status": "final",
                                             "code": {"text": "bp"}, "subject": {"reference": "Patient/p1"}})
    client.put("/fhir/Condition/c1", json={"resourceType": "Condition", "id": "c1", "subject": {"reference": "Patient/p1"},
                                           "code": {"text": "cold"}})
    nxt = next(link["url"] for link in first["link"] if link["relation"] == "next")
    rest, _ = _all_pages(client, nxt.replace("http://testserver", ""))
    allkeys = seen + rest
    assert len(allkeys) == len(set(allkeys))
    assert set(allkeys) >= P1_EVERYTHING
    assert "Observation/o3" in allkeys


def test_everything_filters_by_type_and_since(loaded_graph):
    client = loaded_graph
    r = client.get("/fhir/Patient/p1/$everything", params={"_type": "Observation,Practitioner"})
    assert {_key(e) for e in r.json()["entry"]} == {"Observation/o1", "Practitioner/dr"}
    lu = client.get("/fhir/Condition/c1").json()["meta"]["lastUpdated"]
    r = client.get("/fhir/Patient/p1/$everything", params={"_since": lu})
    assert {_key(e) for e in r.json()["entry"]} == {"Condition/c1"}


def test_everything_by_post_with_parameters(loaded_graph):
    client = loaded_graph
    body = {"resourceType": "Parameters", "parameter": [{"name": "_type", "valueString": "Encounter"},
                                                        {"name": "_count", "valueInteger": 5}]}
    r = client.post("/fhir/Patient/p1/$everything", json=body)
    assert r.status_code == 200, r.text
    assert [_key(e) for e in r.json()["entry"]] == ["Encounter/e1"]


def test_everything_of_unknown_or_deleted_patient_is_404_or_410(loaded_graph):
    client = loaded_graph
    assert client.get("/fhir/Patient/nobody/$everything").status_code == 404
    client.delete("/fhir/Patient/p2")
    assert client.get("/fhir/Patient/p2/$everything").status_code == 410


def test_everything_rejects_bad_parameters_with_400(loaded_graph):
    client = loaded_graph
    assert client.get("/fhir/Patient/p1/$everything", params={"_count": "x"}).status_code == 400
    assert client.get("/fhir/Patient/p1/$everything", params={"_type": "Nope"}).status_code == 400
    assert client.get("/fhir/Patient/p1/$everything", params={"_since": "yesterday"}).status_code == 400
    assert client.get("/fhir/Patient/p1/$everything", params={"_cursor": "garbage"}).status_code == 400
    assert client.get("/fhir/Observation/o1/$everything").status_code == 404


def test_everything_entries_pass_the_guard(loaded_graph, services):
    client = loaded_graph

    class NoPractitioners:
        def may(self, principal, interaction, rtype):
            return True

        def may_read(self, principal, stored):
            return stored.type != "Practitioner"

        def may_write(self, principal, rtype, resource):
            return True

    services.fhir.guard.policy = NoPractitioners()
    keys = {_key(e) for e in client.get("/fhir/Patient/p1/$everything").json()["entry"]}
    assert keys == P1_EVERYTHING - {"Practitioner/dr"}


def test_everything_of_a_synthea_patient_matches_counts_from_the_file(client, services, synthea):
    files = synthea.files()
    assert files
    path = min(files, key=lambda p: p.stat().st_size)
    items = synthea.resources_of(path)
    synthea.put_all(services.fhir, items)
    by_key = {f"{r['resourceType']}/{r['id']}": r for r in items}
    pid = next(r["id"] for r in items if r["resourceType"] == "Patient")
    members = {k for k, r in by_key.items() if f"Patient/{pid}" in synthea.references(r)} | {f"Patient/{pid}"}
    expected = members | {t for k in members for t in synthea.references(by_key[k])}
    got, _ = _all_pages(client, f"/fhir/Patient/{pid}/$everything", _count=200)
    assert len(got) == len(set(got))
    assert set(got) == expected


def test_everything_start_end_keeps_care_in_the_period_and_undated_members(client):
    def put(resource: dict[str, Any]) -> None:
        assert client.put(f"/fhir/{resource['resourceType']}/{resource['id']}", json=resource).status_code in (200, 201)

    put({"resourceType": "Patient", "id": "pt"})
    for i, when in enumerate(("2019-06-01", "2020-03-15", "2021-11-30")):
        put({"resourceType": "Observation", "id": f"o{i}", "status": "final", "code": {"text": "x"},
             "subject": {"reference": "Patient/pt"}, "effectiveDateTime": when})
    put({"resourceType": "Encounter", "id": "e", "status": "finished", "subject": {"reference": "Patient/pt"},
         "class": {"code": "AMB"}, "period": {"start": "2019-12-30", "end": "2020-01-02"}})
    put({"resourceType": "Condition", "id": "c", "subject": {"reference": "Patient/pt"}, "onsetDateTime": "2018-01-01"})
    put({"resourceType": "AllergyIntolerance", "id": "a", "patient": {"reference": "Patient/pt"}})  # undated

    def keys(**params: str) -> set[str]:
        r = client.get("/fhir/Patient/pt/$everything", params=params)
        assert r.status_code == 200, r.text
        return {_key(e) for e in r.json()["entry"]}

    assert keys(start="2020-01-01", end="2020-12-31") == {"Patient/pt", "Observation/o1", "Encounter/e",
                                                          "AllergyIntolerance/a"}
    assert keys(start="2021") == {"Patient/pt", "Observation/o2", "AllergyIntolerance/a"}
    assert keys(end="2018-12") == {"Patient/pt", "Condition/c", "AllergyIntolerance/a"}
    assert client.get("/fhir/Patient/pt/$everything", params={"start": "2021", "end": "2020"}).status_code == 400
    assert client.get("/fhir/Patient/pt/$everything", params={"start": "soon"}).status_code == 400
