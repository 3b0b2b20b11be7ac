"""_sort, _count and keyset paging that stays correct while others write (search.html#sort, #count)."""

from __future__ import annotations

from urllib.parse import parse_qs, urlparse

from medcloud.fhir import router
from medcloud.fhir.exchange import ANONYMOUS_SCOPES, FhirRequest, Principal


def _all_pages(api, path, params):
    b = api.search(path, params)
    pages = [b]
    while (nxt := api.link(b, "next")) is not None:
        b = api.search(nxt)
        pages.append(b)
    return pages


def _match_ids(bundle):
    return [e["resource"]["id"] for e in bundle.get("entry", []) if e["search"]["mode"] == "match"]


def test_sort_by_string_ascending_and_descending(api):
    for fam in ("Baker", "adams", "Carter"):
        api.create(api.patient(fam))
    def fams(sort):
        return [e["resource"]["name"][0]["family"] for e in api.search("Patient", {"_sort": sort})["entry"]]
    assert fams("family") == ["adams", "Baker", "Carter"]
    assert fams("-family") == ["Carter", "Baker", "adams"]


def test_sort_by_date_desc_puts_missing_values_last(api):
    a = api.create(api.observation(None, "x", when="2020-01-01"))
    b = api.create(api.observation(None, "x", when="2022-01-01"))
    c = api.create({"resourceType": "Observation", "status": "final", "code": {"text": "no date"}})
    d = api.create(api.observation(None, "x", when="2021-06-01"))
    assert _match_ids(api.search("Observation", {"_sort": "-date"})) == [b, d, a, c]
    assert _match_ids(api.search("Observation", {"_sort": "date"})) == [a, d, b, c]


def test_sort_by_several_keys_and_special_params(api):
    ids = [api.put(api.patient(fam, given, id=i, gender=g)) for i, fam, given, g in [
        ("p3", "Same", "Zed", "male"), ("p1", "Same", "Amy", "female"), ("p2", "Other", "Bob", "male")]]
    assert _match_ids(api.search("Patient", {"_sort": "family,given"})) == ["p2", "p1", "p3"]
    assert _match_ids(api.search("Patient", {"_sort": "-gender,_id"})) == ["p2", "p3", "p1"]
    assert _match_ids(api.search("Patient", {"_sort": "_id"})) == ["p1", "p2", "p3"]
    assert _match_ids(api.search("Patient", {"_sort": "-_lastUpdated"})) == list(reversed(ids))


def test_sort_by_number_quantity_reference_and_token(api):
    a = api.create(api.observation("Patient/b", "2", 5))
    b = api.create(api.observation("Patient/a", "1", 50))
    assert _match_ids(api.search("Observation", {"_sort": "-value-quantity"})) == [b, a]
    assert _match_ids(api.search("Observation", {"_sort": "subject"})) == [b, a]
    assert _match_ids(api.search("Observation", {"_sort": "code"})) == [b, a]


def test_count_limits_the_page_and_next_links_walk_every_match_once(api):
    ids = {api.create(api.patient(f"F{i:02d}")) for i in range(23)}
    pages = _all_pages(api, "Patient", {"_count": 5, "_sort": "family"})
    assert [len(_match_ids(p)) for p in pages] == [5, 5, 5, 5, 3]
    seen = [i for p in pages for i in _match_ids(p)]
    assert sorted(seen) == sorted(ids) and len(seen) == len(set(seen))
    nxt = api.link(pages[0], "next")
    assert set(parse_qs(urlparse(nxt).query)) == {"_cursor"}


def test_paging_under_concurrent_inserts_and_deletes_has_no_duplicates_or_skips(api):
    before = [api.create(api.observation(None, "x", when=f"2020-01-{d:02d}")) for d in range(1, 21)]
    for sort in ({"_count": 4}, {"_count": 4, "_sort": "-date"}, {"_count": 4, "_sort": "code,date"}):
        b = api.search("Observation", {"code": "x", **sort})
        seen = _match_ids(b)
        deleted: set[str] = set()
        day = 0
        while (nxt := api.link(b, "next")) is not None:
            day += 1
            api.create(api.observation(None, "x", when=f"2020-01-{day:02d}T12:00:00Z"))  # sorts into the middle
            victim = next((i for i in before if i not in seen and i not in deleted), None)
            if victim is not None:
                api.client.delete(f"/fhir/Observation/{victim}")
                deleted.add(victim)
            b = api.search(nxt)
            seen += _match_ids(b)
        assert len(seen) == len(set(seen)), "a resource appeared on two pages"
        missing = set(before) - set(seen) - deleted
        assert not missing, f"pre-existing resources skipped: {missing}"
        before = [i for i in before if i not in deleted]


def test_previous_links_walk_back_over_the_same_pages(api):
    for i in range(11):
        api.create(api.observation(None, "x", when=f"2020-01-{(i % 4) + 1:02d}"))
    for params in ({"_count": 3}, {"_count": 3, "_sort": "-date"}):
        pages = _all_pages(api, "Observation", params)
        assert [len(_match_ids(p)) for p in pages] == [3, 3, 3, 2]
        assert api.link(pages[0], "previous") is None
        b = pages[-1]
        back = [_match_ids(b)]
        while (prev := api.link(b, "previous")) is not None:
            b = api.search(prev)
            back.append(_match_ids(b))
        assert list(reversed(back)) == [_match_ids(p) for p in pages]
        assert api.link(pages[2], "first") is not None


def test_count_zero_returns_only_the_total(api):
    for i in range(3):
        api.create(api.patient(f"P{i}"))
    b = api.search("Patient", {"_count": 0})
    assert b["total"] == 3 and "entry" not in b


def test_count_above_the_maximum_is_capped_and_malformed_count_is_400(api):
    api.create(api.patient("A"))
    assert api.status("Patient", {"_count": "2000"}) == 200
    assert api.status("Patient", {"_count": "-1"}) == 400
    assert api.status("Patient", {"_count": "lots"}) == 400


def test_tampered_or_expired_cursor_is_refused_cleanly(api, services):
    for i in range(3):
        api.create(api.patient(f"P{i}"))
    nxt = api.link(api.search("Patient", {"_count": 1}), "next")
    r = api.get(nxt[:-3] + "AAA")
    assert r.status_code == 400 and r.json()["resourceType"] == "OperationOutcome"
    ctx = services.fhir
    real = ctx.clock
    ctx.clock = lambda: real() + (ctx.settings.cursor_ttl + 5) * 1_000_000
    try:
        r = api.get(nxt)
        assert r.status_code == 410 and r.json()["resourceType"] == "OperationOutcome"
    finally:
        ctx.clock = real


def test_cursor_is_bound_to_its_search_and_to_who_asked(api, services):
    for i in range(3):
        api.create(api.patient(f"P{i}"))
    nxt = api.link(api.search("Patient", {"_count": 1}), "next")
    token = parse_qs(urlparse(nxt).query)["_cursor"][0]
    assert api.status("Observation", {"_cursor": token}) == 400
    other = FhirRequest("GET", "Patient", [("_cursor", token)], principal=Principal(subject="mallory", scopes=ANONYMOUS_SCOPES))
    assert router.handle(services.fhir, other).status == 403
    narrower = Principal(subject="anonymous", scopes=("system/Patient.rs",))
    assert router.handle(services.fhir, FhirRequest("GET", "Patient", [("_cursor", token)], principal=narrower)).status == 403
    same = Principal(subject="anonymous", scopes=ANONYMOUS_SCOPES)
    assert router.handle(services.fhir, FhirRequest("GET", "Patient", [("_cursor", token)], principal=same)).status == 200


def test_self_link_shows_only_the_parameters_used(api):
    api.create(api.patient("A"))
    b = api.search("Patient", {"family": "a", "bogus": "1"})
    q = parse_qs(urlparse(api.link(b, "self")).query)
    assert q == {"family": ["a"]}


def test_post_search_with_form_body_equals_get(api):
    a = api.create(api.patient("Formy"))
    api.create(api.patient("Other"))
    r = api.client.post("/fhir/Patient/_search", data={"family": "formy"},
                        headers={"Content-Type": "application/x-www-form-urlencoded"})
    assert r.status_code == 200
    assert [e["resource"]["id"] for e in r.json()["entry"]] == [a]
