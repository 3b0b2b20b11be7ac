"""``medcloud deid`` on a tagged set of Synthea patients: 0 of the 18 Safe Harbor classes left, links kept."""

from __future__ import annotations

import json
import re
import sys
from collections import defaultdict
from datetime import datetime
from pathlib import Path
from typing import Any

import orjson
import pytest
from typer.testing import CliRunner

from medcloud.cli import app
from medcloud.security.deid import DeidPolicy

sys.path.insert(0, str(Path(__file__).parent))
from _tagging import CLASSES, as_stored, collect, report, survivors, tag_patients, terminology  # noqa: E402

YEAR = 2025


@pytest.fixture(scope="module")
def tagged(synthea_dir: Path) -> list[dict[str, Any]]:
    bundles = [json.loads(p.read_text()) for p in sorted(synthea_dir.glob("*.json"))]
    patients = [b for b in bundles if any(e["resource"]["resourceType"] == "Patient" for e in b["entry"])]
    assert len(patients) >= 2
    return [tag_patients(b, n) for n, b in enumerate(patients)]


@pytest.fixture(scope="module")
def inputs(tagged, tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("deid-in")
    (root / "bundles").mkdir()
    for n, b in enumerate(tagged):
        (root / "bundles" / f"patient{n}.json").write_text(json.dumps(b))
    (root / "ndjson").mkdir()
    by_type: dict[str, list[bytes]] = defaultdict(list)
    for b in tagged:
        for r in as_stored(b):
            by_type[r["resourceType"]].append(orjson.dumps(r))
    for t, lines in by_type.items():
        (root / "ndjson" / f"{t}.ndjson").write_bytes(b"\n".join(lines) + b"\n")
    key = root / "pseudonym.key"
    key.write_text("a-secret-pseudonym-key-of-32-byt\n")
    return {"bundles": root / "bundles", "ndjson": root / "ndjson", "key": key}


def _deid(inputs: dict[str, Path], what: str, out: Path, *extra: str, key: Path | None = None):
    r = CliRunner().invoke(app, ["deid", str(inputs[what]), str(out), "--key-file", str(key or inputs["key"]),
                                 "--reference-year", str(YEAR), *extra])
    return r


def _text(r: Any) -> str:
    return " ".join(r.output.split())  # rich wraps long lines


def _ndjson(folder: Path) -> list[dict[str, Any]]:
    return [orjson.loads(x) for p in sorted(folder.glob("*.ndjson")) for x in p.read_bytes().splitlines() if x]


@pytest.mark.parametrize("what", ["bundles", "ndjson"])
def test_no_value_of_any_of_the_18_classes_survives(what, tagged, inputs, tmp_path, capsys):
    out = tmp_path / "out"
    r = _deid(inputs, what, out)
    assert r.exit_code == 0, r.output
    originals = [res for b in tagged for res in as_stored(b)]
    tags = collect(originals)
    assert set(CLASSES) | {"narrative"} <= set(tags), f"untagged classes: {set(CLASSES) - set(tags)}"
    text = b"".join(p.read_bytes() for p in sorted(out.iterdir())).decode()
    if what == "bundles":
        outputs = [e["resource"] for p in sorted(out.iterdir()) for e in json.loads(p.read_text())["entry"]]
    else:
        outputs = _ndjson(out)
    patients = [x for x in outputs if x["resourceType"] == "Patient"]
    left = survivors(tags, text, patients, YEAR, terminology(originals))
    with capsys.disabled():
        print(f"\n[deid {what}] {report(tags, left)}")
    assert left == {}
    # the control: the same search finds every class in the untouched input
    original_text = b"".join(p.read_bytes() for p in sorted(inputs[what].iterdir())).decode()
    assert set(survivors(tags, original_text, [r for r in originals if r["resourceType"] == "Patient"], YEAR)) == set(tags)
    assert len(outputs) == len(originals)


def test_references_between_a_patients_resources_still_resolve(inputs, tmp_path):
    out = tmp_path / "out"
    assert _deid(inputs, "ndjson", out).exit_code == 0
    resources = _ndjson(out)
    present = {f"{r['resourceType']}/{r['id']}" for r in resources}
    refs = re.findall(r'"reference":"([A-Za-z]+/[^"]+)"', b"".join(p.read_bytes() for p in out.iterdir()).decode())
    assert len(refs) > 1000
    assert set(refs) <= present
    patient_ids = {r["id"] for r in resources if r["resourceType"] == "Patient"}
    subjects = {r["subject"]["reference"] for r in resources if r["resourceType"] == "Observation"}
    assert {s.split("/")[1] for s in subjects} == patient_ids

    bundles_out = tmp_path / "bundles"
    assert _deid(inputs, "bundles", bundles_out).exit_code == 0
    for p in bundles_out.iterdir():
        b = json.loads(p.read_text())
        full = {e["fullUrl"] for e in b["entry"]}
        uuids = set(re.findall(r'"reference": "(urn:uuid:[^"]+)"', json.dumps(b)))
        assert uuids and uuids <= full


def test_the_same_key_links_runs_and_another_key_does_not(inputs, tmp_path):
    assert _deid(inputs, "ndjson", tmp_path / "a").exit_code == 0
    assert _deid(inputs, "ndjson", tmp_path / "b").exit_code == 0
    other = tmp_path / "other.key"
    other.write_bytes(b"another-key-another-key-another-key")
    assert _deid(inputs, "ndjson", tmp_path / "c", key=other).exit_code == 0
    ids = [sorted(r["id"] for r in _ndjson(tmp_path / x) if r["resourceType"] == "Patient") for x in "abc"]
    assert ids[0] == ids[1] and not set(ids[0]) & set(ids[2])


def test_date_shift_is_one_offset_per_patient(tagged, inputs, tmp_path):
    out = tmp_path / "out"
    r = _deid(inputs, "ndjson", out, "--date-shift")
    assert r.exit_code == 0 and "NOT Safe Harbor" in _text(r)
    policy = DeidPolicy.safe_harbor(inputs["key"].read_bytes().strip())
    after = {r["id"]: r for r in _ndjson(out) if r["resourceType"] == "Encounter"}
    offsets = []
    for b in tagged:
        resources = as_stored(b)
        pid = next(r["id"] for r in resources if r["resourceType"] == "Patient")
        deltas = set()
        for enc in (r for r in resources if r["resourceType"] == "Encounter"):
            shifted = after[policy.pseudonym_id(enc["id"])]
            assert shifted["subject"]["reference"] == f"Patient/{policy.pseudonym_id(pid)}"
            deltas.add((datetime.fromisoformat(shifted["period"]["start"]) - datetime.fromisoformat(enc["period"]["start"])).days)
        assert len(deltas) == 1 and 0 < abs(next(iter(deltas))) <= 365
        offsets.append(deltas.pop())
    assert len(offsets) == len(tagged)


def test_a_policy_file_is_applied(inputs, tmp_path):
    policy = tmp_path / "policy.toml"
    policy.write_text('[actions]\ndates = "remove"\n')
    out = tmp_path / "out"
    assert _deid(inputs, "ndjson", out, "--policy", str(policy)).exit_code == 0
    patients = [r for r in _ndjson(out) if r["resourceType"] == "Patient"]
    assert patients and all("birthDate" not in p for p in patients)
    policy.write_text('[actions]\nnames = "shift"\n')
    r = _deid(inputs, "ndjson", tmp_path / "bad", "--policy", str(policy))
    assert r.exit_code == 1 and "names cannot be 'shift'" in _text(r)


def test_bad_input_is_a_clear_error_and_writes_nothing(inputs, tmp_path):
    folder = tmp_path / "in"
    folder.mkdir()
    (folder / "A.ndjson").write_bytes(b'{"resourceType":"Patient","id":"a"}\n')
    (folder / "B.ndjson").write_bytes(b'{"resourceType":"Patient","id":"b"}\n{not json\n')
    out = tmp_path / "out"
    r = CliRunner().invoke(app, ["deid", str(folder), str(out), "--key-file", str(inputs["key"])])
    assert r.exit_code == 1 and "B.ndjson:2: not JSON" in r.output.replace("\n", "")
    assert not any(out.iterdir())  # A.ndjson, written first, was removed again
    (folder / "B.ndjson").write_bytes(b'[1, 2]\n')
    r = CliRunner().invoke(app, ["deid", str(folder), str(out), "--key-file", str(inputs["key"])])
    assert r.exit_code == 1 and "not a FHIR resource" in _text(r)
    r = CliRunner().invoke(app, ["deid", str(folder / "A.ndjson"), str(out)], env={"MEDCLOUD_DEID_KEY": ""})
    assert r.exit_code == 1 and "no pseudonym key" in _text(r)
    r = CliRunner().invoke(app, ["deid", str(tmp_path / "missing"), str(out), "--key-file", str(inputs["key"])])
    assert r.exit_code == 1 and "no such file" in _text(r)
