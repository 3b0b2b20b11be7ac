"""The slice of a patient record a CDS service reads: resources in, the latest coded values out.

Services never search the store themselves: the prefetch (sent by the EHR, or fetched by
``prefetch.py``) is flattened into a ``PatientRecord``, so a card computed from prefetch and one
computed from a server-side fetch see the same resources and say the same thing. Observations are
matched on ``Observation.code`` and on ``Observation.component.code`` (Synthea writes systolic
pressure inside the 85354-9 blood pressure panel).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, date, datetime
from typing import Any

LOINC = "http://loinc.org"
SNOMED = "http://snomed.info/sct"
UCUM = "http://unitsofmeasure.org"


@dataclass(frozen=True)
class Observed:
    """One observed value with where it came from."""

    ref: str  # "Observation/123"
    value: float | None
    unit: str | None
    codes: frozenset[str]  # valueCodeableConcept codes ("system|code"), for coded answers
    text: str  # valueString / concept text / display, for coded answers
    effective: datetime | None


def codings(concept: Any) -> set[str]:
    out = set()
    if isinstance(concept, dict):
        for c in concept.get("coding") or []:
            if isinstance(c, dict) and c.get("code"):
                out.add(f"{c.get('system', '')}|{c['code']}")
    return out


def parse_instant(text: Any) -> datetime | None:
    if not isinstance(text, str) or len(text) < 4:
        return None
    try:
        if len(text) == 4:
            return datetime(int(text), 1, 1, tzinfo=UTC)
        if len(text) == 7:
            return datetime(int(text[:4]), int(text[5:7]), 1, tzinfo=UTC)
        if len(text) == 10:
            return datetime.fromisoformat(text).replace(tzinfo=UTC)
        value = datetime.fromisoformat(text.replace("Z", "+00:00"))
        return value if value.tzinfo else value.replace(tzinfo=UTC)
    except ValueError:
        return None


def _effective(obs: dict[str, Any]) -> datetime | None:
    if "effectiveDateTime" in obs:
        return parse_instant(obs["effectiveDateTime"])
    if "effectiveInstant" in obs:
        return parse_instant(obs["effectiveInstant"])
    period = obs.get("effectivePeriod")
    if isinstance(period, dict):
        return parse_instant(period.get("end") or period.get("start"))
    return parse_instant(obs.get("issued"))


def _value(holder: dict[str, Any]) -> tuple[float | None, str | None, frozenset[str], str]:
    q = holder.get("valueQuantity")
    if isinstance(q, dict) and isinstance(q.get("value"), int | float) and not isinstance(q.get("value"), bool):
        unit = q.get("code") if q.get("system") == UCUM and q.get("code") else q.get("unit") or q.get("code")
        return float(q["value"]), unit, frozenset(), ""
    cc = holder.get("valueCodeableConcept")
    if isinstance(cc, dict):
        text = cc.get("text") or " ".join(str(c.get("display", "")) for c in cc.get("coding") or [] if isinstance(c, dict))
        return None, None, frozenset(codings(cc)), str(text)
    if isinstance(holder.get("valueInteger"), int):
        return float(holder["valueInteger"]), None, frozenset(), ""
    if isinstance(holder.get("valueString"), str):
        return None, None, frozenset(), holder["valueString"]
    if isinstance(holder.get("valueBoolean"), bool):
        return float(holder["valueBoolean"]), None, frozenset(), ""
    return None, None, frozenset(), ""


class PatientRecord:
    """Resources of one patient, indexed for "the latest value coded X"."""

    def __init__(self, resources: Iterable[dict[str, Any]], now: datetime):
        self.now = now
        self.patient: dict[str, Any] | None = None
        self.by_type: dict[str, list[dict[str, Any]]] = {}
        seen: set[tuple[str, str]] = set()
        for r in resources:
            if not isinstance(r, dict) or not isinstance(r.get("resourceType"), str):
                continue
            key = (r["resourceType"], str(r.get("id", id(r))))
            if key in seen:  # the same resource in two prefetch keys
                continue
            seen.add(key)
            if r["resourceType"] == "Patient" and self.patient is None:
                self.patient = r
            self.by_type.setdefault(r["resourceType"], []).append(r)

    def of_type(self, rtype: str) -> list[dict[str, Any]]:
        return self.by_type.get(rtype, [])

    def latest(self, codes: Iterable[str]) -> Observed | None:
        """The most recent final/amended/corrected Observation (or component) coded with any of ``codes``
        ("system|code"); ties go to the later resource in the input."""
        wanted = set(codes)
        best: Observed | None = None
        for obs in self.of_type("Observation"):
            if obs.get("status") in ("entered-in-error", "cancelled", "preliminary", "registered"):
                continue
            when = _effective(obs)
            ref = f"Observation/{obs.get('id')}"
            holders = [obs] if codings(obs.get("code")) & wanted else []
            holders += [c for c in obs.get("component") or [] if isinstance(c, dict) and codings(c.get("code")) & wanted]
            for holder in holders:
                value, unit, coded, text = _value(holder)
                if value is None and not coded and not text:
                    continue
                candidate = Observed(ref, value, unit, coded, text, when)
                if best is None or _later(candidate, best):
                    best = candidate
        return best

    def active_conditions(self, codes: Iterable[str]) -> list[dict[str, Any]]:
        wanted = set(codes)
        out = []
        for c in self.of_type("Condition"):
            status = codings(c.get("clinicalStatus"))
            inactive = any(s.endswith(("|inactive", "|resolved", "|remission")) for s in status)
            if codings(c.get("code")) & wanted and not inactive and "abatementDateTime" not in c:
                if c.get("verificationStatus") and codings(c["verificationStatus"]) & {
                        "http://terminology.hl7.org/CodeSystem/condition-ver-status|entered-in-error",
                        "http://terminology.hl7.org/CodeSystem/condition-ver-status|refuted"}:
                    continue
                out.append(c)
        return out

    def age(self) -> float | None:
        """Age in whole years at ``now`` (None without a birth date)."""
        born = parse_instant((self.patient or {}).get("birthDate"))
        if born is None:
            return None
        today: date = self.now.date()
        years = today.year - born.year - ((today.month, today.day) < (born.month, born.day))
        return float(years)

    def age_days(self, observed: Observed) -> float | None:
        if observed.effective is None:
            return None
        return (self.now - observed.effective).total_seconds() / 86400.0


def _later(a: Observed, b: Observed) -> bool:
    if a.effective is None:
        return False
    return b.effective is None or a.effective >= b.effective
