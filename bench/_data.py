"""The Synthea bundles to load, and the few facts about them the searches need.

Bundles are kept as raw bytes (sent as they are); each is parsed once to note entry order and the
facts used to pick realistic search values and to compute the expected result counts
independently of the server.
"""

from __future__ import annotations

import subprocess
import sys
import unicodedata
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import orjson

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_SYNTHEA = Path("/tmp/synthea/p50")
LOINC = "http://loinc.org"
SNOMED = "http://snomed.info/sct"
OBS_CODES = ("8302-2", "85354-9", "29463-7", "39156-5")  # height, BP panel, weight, BMI


@dataclass
class Bundle:
    path: Path
    raw: bytes
    entries: list[tuple[str, str]]  # (resourceType, fullUrl) in entry order

    @property
    def size(self) -> int:
        return len(self.entries)


@dataclass
class Facts:
    """Per-resource facts keyed by fullUrl (urn:uuid:...), mapped to server ids after loading."""

    types: Counter[str] = field(default_factory=Counter)
    patients: dict[str, dict[str, object]] = field(default_factory=dict)  # fullUrl -> name parts, birthDate
    obs_by_patient: dict[str, Counter[str]] = field(default_factory=lambda: defaultdict(Counter))
    obs_count_by_patient: Counter[str] = field(default_factory=Counter)
    obs_patients_by_code: dict[str, set[str]] = field(default_factory=lambda: defaultdict(set))
    condition_codes: Counter[str] = field(default_factory=Counter)
    medreq_by_patient: Counter[str] = field(default_factory=Counter)
    encounter_periods: list[tuple[str, str]] = field(default_factory=list)  # (start, end) as written


def find_bundles(data_dir: Path) -> list[Path]:
    fhir = data_dir / "fhir" if (data_dir / "fhir").is_dir() else data_dir
    files = sorted(fhir.glob("*.json"))
    # Shared resources (Synthea's hospital/practitioner files, if written) go first.
    shared = [f for f in files if f.name.startswith(("hospital", "practitioner"))]
    return shared + [f for f in files if f not in shared]


def ensure_synthea(patients: int, out: Path) -> Path:
    """Reuse ``out`` if it holds ``patients`` bundles, else generate them with the installed CLI."""
    if len(list((out / "fhir").glob("*.json"))) >= patients:
        return out
    exe = Path(sys.executable).parent / "synthea"
    cmd = [str(exe), "-p", str(patients), "-s", "7", "-r", "20250101", "-o", str(out)]
    print(f"generating Synthea data: {' '.join(cmd)}", file=sys.stderr)
    subprocess.run(cmd, check=True, timeout=1800)
    return out


def load(paths: list[Path]) -> tuple[list[Bundle], Facts]:
    facts = Facts()
    bundles = []
    for path in paths:
        raw = path.read_bytes()
        doc = orjson.loads(raw)
        entries = []
        for e in doc.get("entry", []):
            res = e.get("resource") or {}
            rtype = res.get("resourceType", "?")
            entries.append((rtype, e.get("fullUrl", "")))
            facts.types[rtype] += 1
            _note(facts, rtype, e.get("fullUrl", ""), res)
        bundles.append(Bundle(path, raw, entries))
    return bundles, facts


def _note(f: Facts, rtype: str, full_url: str, res: dict) -> None:  # type: ignore[type-arg]
    if rtype == "Patient":
        parts: list[str] = []
        for n in res.get("name", []):
            parts += [
                n.get("family", ""),
                n.get("text", ""),
                *n.get("given", []),
                *n.get("prefix", []),
                *n.get("suffix", []),
            ]
        family = (res.get("name") or [{}])[0].get("family", "")
        f.patients[full_url] = {
            "family": family,
            "parts": [p for p in parts if p],
            "birthDate": res.get("birthDate", ""),
        }
    elif rtype == "Observation":
        subject = (res.get("subject") or {}).get("reference", "")
        f.obs_count_by_patient[subject] += 1
        for c in (res.get("code") or {}).get("coding", []):
            if c.get("system") == LOINC:
                f.obs_by_patient[subject][c.get("code", "")] += 1
                f.obs_patients_by_code[c.get("code", "")].add(subject)
    elif rtype == "Condition":
        codes = {
            c.get("code") for c in (res.get("code") or {}).get("coding", []) if c.get("system") == SNOMED
        }
        for code in codes:
            f.condition_codes[code] += 1
    elif rtype == "MedicationRequest":
        f.medreq_by_patient[(res.get("subject") or {}).get("reference", "")] += 1
    elif rtype == "Encounter":
        period = res.get("period") or {}
        if period.get("start"):
            f.encounter_periods.append((period["start"], period.get("end") or period["start"]))


def fold(s: str) -> str:
    """Case- and accent-insensitive form, as FHIR string search compares (search.html#string)."""
    return "".join(c for c in unicodedata.normalize("NFKD", s) if not unicodedata.combining(c)).casefold()


def patients_matching_name(f: Facts, value: str) -> set[str]:
    v = fold(value)
    return {url for url, p in f.patients.items() if any(fold(str(x)).startswith(v) for x in p["parts"])}  # type: ignore[attr-defined]


def encounter_window(f: Facts, days: int = 30) -> tuple[str, str, int]:
    """A ``days``-long window ``[lo, hi)`` starting at the 80th percentile of Encounter start dates, and
    how many Encounter periods overlap it: what ``date=ge{lo}&date=lt{hi}`` matches (search.html#prefix:
    ``ge`` = the period ends on or after ``lo``, ``lt`` = it starts before ``hi``). Synthea writes UTC
    times, so comparing the date parts is exact at day precision."""
    import datetime as dt

    if not f.encounter_periods:
        return "2020-01-01", "2020-02-01", 0
    starts = sorted(s[:10] for s, _ in f.encounter_periods)
    lo = starts[int(len(starts) * 0.8)]
    hi = (dt.date.fromisoformat(lo) + dt.timedelta(days=days)).isoformat()
    n = sum(1 for s, e in f.encounter_periods if e[:10] >= lo and s[:10] < hi)
    return lo, hi, n
