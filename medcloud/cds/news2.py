"""NEWS2, the National Early Warning Score 2 (Royal College of Physicians, London, 2017).

Seven parameters, each scored 0-3 from the chart's bands; SpO2 has two scales: scale 1 for most
patients, scale 2 (target 88-92 %) for patients with hypercapnic respiratory failure, where
saturations of 93 % or more score only while on supplemental oxygen. The aggregate maps to the
clinical-response thresholds: 0-4 low, a 3 in any single parameter low-medium (urgent ward-based
response), 5-6 medium (key threshold: urgent response), 7 or more high (emergency response).
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class News2Inputs:
    respiratory_rate: float  # /min
    spo2: float  # %
    on_oxygen: bool
    systolic: float  # mmHg
    pulse: float  # /min
    alert: bool  # ACVPU "A"; new confusion, voice, pain, unresponsive are not alert
    temperature: float  # Celsius
    scale: int = 1  # SpO2 scale 1 or 2


@dataclass(frozen=True)
class News2Result:
    total: int
    points: dict[str, int]
    band: str  # low | low-medium | medium | high
    response: str


RESPONSE = {
    "low": "ward-based response: minimum 4-12-hourly observations; assess by a registered nurse",
    "low-medium": "urgent ward-based response: a single parameter scores 3; inform the medical team",
    "medium": "key threshold: urgent response; urgent review by a clinician competent in acute illness",
    "high": "emergency response: emergency assessment by a team with critical-care competencies",
}


def respiration(rr: float) -> int:
    return 3 if rr <= 8 else 1 if rr <= 11 else 0 if rr <= 20 else 2 if rr <= 24 else 3


def spo2_scale1(s: float) -> int:
    return 3 if s <= 91 else 2 if s <= 93 else 1 if s <= 95 else 0


def spo2_scale2(s: float, on_oxygen: bool) -> int:
    if s <= 83:
        return 3
    if s <= 85:
        return 2
    if s <= 87:
        return 1
    if s <= 92 or not on_oxygen:
        return 0
    return 1 if s <= 94 else 2 if s <= 96 else 3


def systolic(sbp: float) -> int:
    return 3 if sbp <= 90 else 2 if sbp <= 100 else 1 if sbp <= 110 else 0 if sbp <= 219 else 3


def pulse(hr: float) -> int:
    return 3 if hr <= 40 else 1 if hr <= 50 else 0 if hr <= 90 else 1 if hr <= 110 else 2 if hr <= 130 else 3


def temperature(t: float) -> int:
    t = round(t, 1)  # the chart is in tenths of a degree
    return 3 if t <= 35.0 else 1 if t <= 36.0 else 0 if t <= 38.0 else 1 if t <= 39.0 else 2


def score(i: News2Inputs) -> News2Result:
    if i.scale not in (1, 2):
        raise ValueError("SpO2 scale is 1 or 2")
    points = {
        "respiration rate": respiration(i.respiratory_rate),
        f"SpO2 (scale {i.scale})": spo2_scale1(i.spo2) if i.scale == 1 else spo2_scale2(i.spo2, i.on_oxygen),
        "air or oxygen": 2 if i.on_oxygen else 0,
        "systolic blood pressure": systolic(i.systolic),
        "pulse": pulse(i.pulse),
        "consciousness": 0 if i.alert else 3,
        "temperature": temperature(i.temperature),
    }
    total = sum(points.values())
    band = "high" if total >= 7 else "medium" if total >= 5 else "low-medium" if 3 in points.values() else "low"
    return News2Result(total, points, band, RESPONSE[band])
