"""Run a CDS service over a cohort (``medcloud cds evaluate``): score distribution, and calibration
where outcomes are known.

Patients come from FHIR files: a Bundle per file (Synthea writes one transaction Bundle per
patient) or NDJSON, grouped by the Patient compartment (``subject``/``patient`` reference). Each
patient is evaluated exactly as an invocation would evaluate the prefetch: ``PatientRecord`` of
their resources, at ``now``. Outcomes: a CSV with ``patient_id,outcome`` (1/0, true/false).
"""

from __future__ import annotations

import csv
import json
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np

from medcloud.cds.assessment import Assessment
from medcloud.cds.record import PatientRecord
from medcloud.errors import Invalid


def patients(paths: Iterable[Path]) -> Iterator[tuple[str, list[dict[str, Any]]]]:
    """(patient id, resources) per patient found under ``paths`` (files or folders of .json/.ndjson)."""
    files: list[Path] = []
    for p in paths:
        if p.is_dir():
            files += sorted(q for q in p.rglob("*") if q.suffix in (".json", ".ndjson"))
        elif p.exists():
            files.append(p)
        else:
            raise Invalid(f"{p}: no such file or folder")
    loose: dict[str, list[dict[str, Any]]] = {}
    for f in files:
        if f.suffix == ".ndjson":
            for line in f.read_text().splitlines():
                if line.strip():
                    r = json.loads(line)
                    loose.setdefault(_owner(r), []).append(r)
            continue
        try:
            doc = json.loads(f.read_text())
        except json.JSONDecodeError as e:
            raise Invalid(f"{f}: not JSON ({e})") from e
        if doc.get("resourceType") == "Bundle":
            resources = [_local(e["resource"], e.get("fullUrl")) for e in doc.get("entry") or []
                         if isinstance(e, dict) and isinstance(e.get("resource"), dict)]
            pats = [r for r in resources if r.get("resourceType") == "Patient"]
            if len(pats) == 1:
                yield str(pats[0].get("id")), resources
                continue
            for r in resources:
                loose.setdefault(_owner(r), []).append(r)
        elif isinstance(doc, dict):
            loose.setdefault(_owner(doc), []).append(doc)
    for pid, resources in loose.items():
        if pid:
            yield pid, resources


def _local(r: dict[str, Any], full_url: Any) -> dict[str, Any]:
    """Synthea's entries have ``urn:uuid:`` fullUrls and no ids: give them ids from the URL."""
    if "id" not in r and isinstance(full_url, str):
        return {**r, "id": full_url.rsplit(":", 1)[-1].rsplit("/", 1)[-1]}
    return r


def _owner(r: dict[str, Any]) -> str:
    if r.get("resourceType") == "Patient":
        return str(r.get("id", ""))
    for key in ("subject", "patient"):
        ref = (r.get(key) or {}).get("reference", "") if isinstance(r.get(key), dict) else ""
        if ref.startswith(("Patient/", "urn:uuid:")):
            return str(ref.rsplit("/", 1)[-1].rsplit(":", 1)[-1])
    return ""


def outcomes(path: Path) -> dict[str, int]:
    out: dict[str, int] = {}
    with path.open(newline="") as f:
        for row in csv.DictReader(f):
            pid, value = row.get("patient_id"), str(row.get("outcome", "")).strip().lower()
            if not pid or value not in ("1", "0", "true", "false"):
                raise Invalid(f"{path}: each row needs patient_id and outcome 1/0 (got {row})")
            out[pid] = int(value in ("1", "true"))
    return out


@dataclass
class CohortReport:
    service: str
    patients: int = 0
    status: Counter[str] = field(default_factory=Counter)
    reasons: Counter[str] = field(default_factory=Counter)
    scores: list[float] = field(default_factory=list)
    calibration: list[tuple[float, float, int]] = field(default_factory=list)
    with_outcome: int = 0

    def to_json(self) -> dict[str, Any]:
        s = np.asarray(self.scores)
        dist = {} if not len(s) else {
            "n": len(s), "mean": float(s.mean()),
            **{f"p{q}": float(np.percentile(s, q)) for q in (5, 25, 50, 75, 95)},
            "histogram": [int(c) for c in np.histogram(s, bins=10, range=(0.0, 1.0) if s.max() <= 1 else None)[0]],
        }
        return {"service": self.service, "patients": self.patients, "status": dict(self.status),
                "not_computed_because": dict(self.reasons.most_common(10)), "scores": dist,
                "calibration": [{"mean_predicted": p, "observed": o, "n": n} for p, o, n in self.calibration],
                "with_outcome": self.with_outcome}


def evaluate(service: Any, cohort: Iterable[tuple[str, list[dict[str, Any]]]], now: datetime,
             known: dict[str, int] | None = None) -> CohortReport:
    from medcloud.analytics.ml import calibration_bins

    report = CohortReport(service.id)
    ys: list[int] = []
    ps: list[float] = []
    for pid, resources in cohort:
        report.patients += 1
        a: Assessment = service.evaluate(PatientRecord(resources, now), {"patientId": pid})
        report.status[a.status] += 1
        value = a.probability if a.probability is not None else a.score
        if a.status != "ok" or value is None:
            report.reasons[a.summary[:100]] += 1
            continue
        report.scores.append(float(value))
        if known and pid in known and a.probability is not None:
            ys.append(known[pid])
            ps.append(a.probability)
    if ys:
        report.calibration = calibration_bins(np.asarray(ys), np.asarray(ps))
        report.with_outcome = len(ys)
    return report
