"""Bulk ``$export?_deidentify=...`` (medcloud extension) on a tagged Synthea patient, SQLite and PostgreSQL."""

from __future__ import annotations

import datetime as dt
import json
import re
import sys
import time
from pathlib import Path
from typing import Any

import orjson
import pytest

from medcloud.fhir.exchange import FhirRequest
from medcloud.fhir.router import dispatch
from medcloud.security.crypto import MAGIC

sys.path.insert(0, str(Path(__file__).parent))
from _tagging import CLASSES, as_stored, collect, report, survivors, tag_patients, terminology  # noqa: E402

ASYNC = {"Prefer": "respond-async", "Accept": "application/fhir+json"}


@pytest.fixture(scope="module")
def patient_resources(synthea_dir: Path) -> list[dict[str, Any]]:
    smallest = min(synthea_dir.glob("*.json"), key=lambda p: p.stat().st_size)
    return as_stored(tag_patients(json.loads(smallest.read_text()), 0))


@pytest.fixture
def loaded(client, services, patient_resources):
    with services.db.write() as conn:
        for r in patient_resources:
            resp = dispatch(services.fhir, conn, FhirRequest("PUT", f"{r['resourceType']}/{r['id']}", body=r,
                                                             in_bundle=True))
            assert resp.status in (200, 201), (r["resourceType"], resp.resource)
    return client


def _export(client, query: str) -> tuple[str, dict[str, list[dict[str, Any]]], bytes]:
    r = client.get(f"/fhir/$export?{query}", headers=ASYNC)
    assert r.status_code == 202, r.text
    status = r.headers["content-location"].replace("http://testserver", "")
    deadline = time.monotonic() + 120
    while (r := client.get(status)).status_code == 202:
        assert time.monotonic() < deadline, "export did not finish"
        time.sleep(0.1)
    assert r.status_code == 200, r.text
    files: dict[str, list[dict[str, Any]]] = {}
    raw = b""
    for item in r.json()["output"]:
        body = client.get(item["url"].replace("http://testserver", "")).content
        raw += body
        files.setdefault(item["type"], []).extend(orjson.loads(x) for x in body.splitlines())
    return status.split("_jobId=")[1], files, raw


def test_deidentified_export_leaves_none_of_the_18_classes_and_keeps_links(loaded, settings, patient_resources, capsys):
    job, files, raw = _export(loaded, "_deidentify=true")
    year = dt.datetime.now(dt.UTC).year
    tags = collect(patient_resources)
    assert set(CLASSES) <= set(tags)
    left = survivors(tags, raw.decode(), files["Patient"], year, terminology(patient_resources))
    with capsys.disabled():
        print(f"\n[$export _deidentify {settings.db_url.split(':')[0]}] {report(tags, left)}")
    assert left == {}
    assert sum(map(len, files.values())) == len(patient_resources)
    # linkage: every reference resolves to an exported resource; the patient's records point at it
    present = {f"{t}/{r['id']}" for t, rs in files.items() for r in rs}
    refs = set(re.findall(r'"reference":"([A-Za-z]+/[^"]+)"', raw.decode()))
    assert len(refs) > 100 and refs <= present
    (patient,) = files["Patient"]
    assert {o["subject"]["reference"] for o in files["Observation"]} == {f"Patient/{patient['id']}"}
    # the files on disk are encrypted, and the server's pseudonym key is not in them
    for p in (settings.data_dir / "exports" / job).iterdir():
        assert p.read_bytes()[:4] == MAGIC
    # the same pseudonyms in a second export (consistent across exports and types)
    _, again, _ = _export(loaded, "_deidentify=safe-harbor&_type=Patient,Encounter")
    assert again["Patient"] == files["Patient"]
    assert {e["id"] for e in again["Encounter"]} == {e["id"] for e in files["Encounter"]}


def test_date_shift_and_policy_files_by_name(loaded, settings, patient_resources):
    _, files, _ = _export(loaded, "_deidentify=date-shift&_type=Patient,Encounter")
    (patient,) = files["Patient"]
    original = next(r for r in patient_resources if r["resourceType"] == "Patient")
    assert original["birthDate"] == "1925-03-14"  # over 89: aggregated even when other dates are shifted
    assert patient["birthDate"] == str(dt.datetime.now(dt.UTC).year - 90)
    encounters = {r["id"]: r for r in patient_resources if r["resourceType"] == "Encounter"}
    deltas = set()
    shifted = sorted(e["period"]["start"] for e in files["Encounter"])
    before = sorted(e["period"]["start"] for e in encounters.values())
    for a, b in zip(shifted, before, strict=True):
        deltas.add((dt.datetime.fromisoformat(a) - dt.datetime.fromisoformat(b)).days)
    assert len(deltas) == 1
    policies = settings.data_dir / "deid-policies"
    policies.mkdir()
    (policies / "no-dates.toml").write_text('[actions]\ndates = "remove"\n')
    _, files, _ = _export(loaded, "_deidentify=no-dates&_type=Patient")
    assert "birthDate" not in files["Patient"][0]
    _, plain, _ = _export(loaded, "_deidentify=false&_type=Patient")
    assert plain["Patient"][0]["id"] == original["id"]


@pytest.mark.parametrize("value", ["../../etc/passwd", "nosuch", "UPPER CASE"])
def test_an_unknown_policy_is_refused_at_kickoff(client, value):
    r = client.get("/fhir/$export", params={"_deidentify": value}, headers=ASYNC)
    assert r.status_code == 400
    assert r.json()["resourceType"] == "OperationOutcome" and "_deidentify" in r.text
