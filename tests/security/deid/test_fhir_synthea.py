"""Safe Harbor on Synthea patients: 0 of the 18 identifier classes survive, linkage is kept.

The identifying values are tagged from the original Bundles by type (every HumanName part,
Address part, ContactPoint, Identifier value, date, geolocation, resource id, Reference
display...) and each is searched for, as a whole word, in the serialised de-identified output.
"""

from __future__ import annotations

import fcntl
import json
import re
import shutil
import subprocess
import sys
from collections import defaultdict
from pathlib import Path

import pytest

from medcloud.fhir.indexing._element_types import TYPES
from medcloud.security.deid import DeidContext, DeidPolicy, deidentify

KEY = b"synthea-test-key-0123456789abcdef"


@pytest.fixture(scope="session")
def synthea_bundles(tmp_path_factory) -> list[dict]:
    root = tmp_path_factory.getbasetemp().parent / "synthea-p2-s21-deid"
    with open(str(root) + ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not (root / "DONE").exists():
            shutil.rmtree(root, ignore_errors=True)
            exe = Path(sys.executable).parent / "synthea"
            subprocess.run([str(exe), "-p", "2", "-s", "21", "-r", "20250101", "-o", str(root)],
                           check=True, capture_output=True, timeout=600)
            (root / "DONE").write_text("ok")
    bundles = [json.loads(p.read_text()) for p in sorted((root / "fhir").glob("*.json"))]
    patients = [b for b in bundles if any(e["resource"]["resourceType"] == "Patient" for e in b["entry"])]
    assert len(patients) == 2
    return patients


def _tag(value, ftype: str, tags: dict[str, set[str]], owner: str = "", key: str = "") -> None:
    """Collect identifying strings from an original resource, by Safe Harbor class."""
    if isinstance(value, list):
        for v in value:
            _tag(v, ftype, tags, owner, key)
        return
    if ftype in ("date", "dateTime", "instant") and isinstance(value, str) and len(value) >= 7:
        tags["dates"].add(value[:10] if len(value) >= 10 else value)
        return
    if not isinstance(value, dict):
        return
    if ftype == "Resource":
        ftype = value.get("resourceType", "")
        if isinstance(value.get("id"), str):
            tags["resource ids"].add(value["id"])
    if ftype == "HumanName":
        for k in ("family", "given", "prefix", "suffix", "text"):
            for s in value.get(k) if isinstance(value.get(k), list) else [value.get(k)]:
                if isinstance(s, str):
                    tags["names"].update(w for w in re.split(r"\s+", s) if len(w) > 3)
    elif ftype == "Address":
        for k in ("line", "city", "district", "postalCode", "text"):
            for s in value.get(k) if isinstance(value.get(k), list) else [value.get(k)]:
                if isinstance(s, str) and s != "00000":
                    tags["geography"].add(s)
        for ext in value.get("extension", []):
            for sub in ext.get("extension", []):
                if "valueDecimal" in sub:
                    tags["geography"].add(repr(sub["valueDecimal"]))
    elif ftype == "ContactPoint" and isinstance(value.get("value"), str):
        tags["telecom"].add(value["value"])
    elif ftype == "Identifier" and isinstance(value.get("value"), str):
        tags["identifiers"].add(value["value"])
    elif ftype == "Attachment":
        for k in ("data", "url"):
            if isinstance(value.get(k), str):
                tags["urls and biometrics"].add(value[k][:40])
    props = TYPES.get(ftype, {})
    for k, v in value.items():
        if k in props:
            _tag(v, props[k], tags, ftype, k)


def _originals(bundle: dict) -> dict[str, set[str]]:
    tags: dict[str, set[str]] = defaultdict(set)
    for e in bundle["entry"]:  # practitioners' and organisations' identifiers count too
        _tag(e["resource"], "Resource", tags)
    return tags


def _survivors(tags: dict[str, set[str]], text: str) -> dict[str, list[str]]:
    # Ids and dates are thousands of values: compare against the output's tokens of the same
    # shape; the few dozen others are searched for as whole words.
    uuids = set(re.findall(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}", text))
    dates = set(re.findall(r"\d{4}-\d{2}(?:-\d{2})?", text))
    out = {}
    for cls, values in tags.items():
        if cls == "resource ids":
            left = [v for v in values if v in uuids or (not _UUID.fullmatch(v) and v in text)]
        elif cls == "dates":
            left = [v for v in values if v in dates or v[:7] in dates]
        elif cls == "urls and biometrics":  # prefixes of attachment data and URLs
            left = [v for v in values if v in text]
        else:
            left = [v for v in values if v in text and re.search(rf"(?<![\w.-]){re.escape(v)}(?![\w-])", text)]
        if left:
            out[cls] = sorted(left)[:5]
    return out


_UUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")


@pytest.fixture(scope="module")
def deidentified(synthea_bundles):
    policy = DeidPolicy.safe_harbor(KEY)
    return [(b, deidentify(b, policy, DeidContext(reference_year=2025))) for b in synthea_bundles]


def test_no_tagged_identifier_of_any_class_survives(deidentified):
    for original, out in deidentified:
        tags = _originals(original)
        assert {"names", "geography", "telecom", "identifiers", "dates", "resource ids"} <= set(tags)
        text = json.dumps(out, ensure_ascii=False)
        assert _survivors(tags, text) == {}


def test_no_date_element_below_the_year_survives(deidentified):
    for _, out in deidentified:
        text = json.dumps(out)
        assert not re.search(r"(?<![\w-])\d{4}-\d{2}(?![\w])", text)


def test_every_identifier_value_is_pseudonymised_and_types_are_kept(deidentified):
    for original, out in deidentified:
        before = next(e["resource"] for e in original["entry"] if e["resource"]["resourceType"] == "Patient")
        after = next(e["resource"] for e in out["entry"] if e["resource"]["resourceType"] == "Patient")
        assert [i.get("type") for i in after["identifier"]] == [i.get("type") for i in before["identifier"]]
        assert all(re.fullmatch(r"[0-9a-f]{32}", i["value"]) for i in after["identifier"])
        assert "name" not in after and "telecom" not in after and "photo" not in after
        assert after["birthDate"] == before["birthDate"][:4]
        assert all(set(a) <= {"use", "type", "state", "country", "postalCode"} for a in after["address"])


def test_a_patients_records_stay_linked_inside_the_bundle(deidentified):
    for original, out in deidentified:
        pid = next(e["fullUrl"] for e in original["entry"] if e["resource"]["resourceType"] == "Patient")
        new_pid = next(e["fullUrl"] for e in out["entry"] if e["resource"]["resourceType"] == "Patient")
        assert new_pid != pid
        linked_before = sum(json.dumps(e["resource"]).count(f'"{pid}"') for e in original["entry"])
        linked_after = sum(json.dumps(e["resource"]).count(f'"{new_pid}"') for e in out["entry"])
        assert linked_before > 50 and linked_after == linked_before
        # every reference still resolves inside the Bundle
        full_urls = {e["fullUrl"] for e in out["entry"]}
        refs = re.findall(r'"reference": "(urn:uuid:[^"]+)"', json.dumps(out))
        assert refs and set(refs) <= full_urls
        assert len(out["entry"]) == len(original["entry"])


def test_records_deidentified_one_at_a_time_link_the_same_way(synthea_bundles):
    policy = DeidPolicy.safe_harbor(KEY)
    ctx = DeidContext(reference_year=2025)
    bundle = synthea_bundles[0]
    patient = next(e["resource"] for e in bundle["entry"] if e["resource"]["resourceType"] == "Patient")
    obs = next(e["resource"] for e in bundle["entry"] if e["resource"]["resourceType"] == "Observation")
    obs = dict(obs, subject={"reference": f"Patient/{patient['id']}"})  # as stored on the server
    p2, o2 = deidentify(patient, policy, ctx), deidentify(obs, policy, ctx)
    assert o2["subject"]["reference"] == f"Patient/{p2['id']}"
    whole = deidentify(bundle, policy, ctx)
    assert any(e["resource"].get("id") == p2["id"] for e in whole["entry"])


def test_date_shifting_keeps_intervals_within_a_patient(synthea_bundles):
    policy = DeidPolicy.safe_harbor(KEY).with_actions(dates="shift")
    assert not policy.is_safe_harbor
    ctx = DeidContext(reference_year=2025)
    from datetime import datetime

    for bundle in synthea_bundles:
        out = deidentify(bundle, policy, ctx)
        before = [e["resource"]["period"]["start"] for e in bundle["entry"] if e["resource"]["resourceType"] == "Encounter"]
        after = [e["resource"]["period"]["start"] for e in out["entry"] if e["resource"]["resourceType"] == "Encounter"]
        deltas = {(datetime.fromisoformat(a) - datetime.fromisoformat(b)).days for a, b in zip(after, before, strict=True)}
        assert len(deltas) == 1 and 0 < abs(deltas.pop()) <= 365


def test_the_search_finds_every_class_in_the_untouched_original(synthea_bundles):
    # guards the test above against tagging nothing or searching wrongly
    for original in synthea_bundles:
        tags = _originals(original)
        found = _survivors(tags, json.dumps(original, ensure_ascii=False))
        assert set(found) == set(tags)
