"""Services on a record: cards name what is missing, stale or in the wrong unit; nothing is guessed."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from medcloud.cds.record import PatientRecord
from medcloud.cds.services import CardiovascularRisk, EarlyWarning, Limits
from tests.cds.conftest import cv_record, obs, patient, smoking

NOW = datetime(2026, 11, 27, 12, 0, tzinfo=UTC)


def test_cardiovascular_risk_from_a_complete_record_matches_the_equation() -> None:
    a = CardiovascularRisk(Limits()).evaluate(PatientRecord(cv_record(), NOW))
    assert a.status == "ok"
    assert a.probability == pytest.approx(0.054, abs=0.002)  # 55-year-old white man, Goff Table A inputs
    assert set(a.basis) == {"Observation/p1-tc", "Observation/p1-hdl", "Observation/p1-sbp", "Observation/p1-smk"}
    assert any(c.name == "ln age" for c in a.explanation)
    assert len(a.summary) < 140


def test_missing_inputs_are_named_and_no_risk_is_given() -> None:
    record = [r for r in cv_record() if r["id"] not in ("p1-hdl", "p1-smk")]
    a = CardiovascularRisk(Limits()).evaluate(PatientRecord(record, NOW))
    assert a.status == "incomplete" and a.probability is None
    assert "HDL cholesterol" in a.summary and "smoking status" in a.summary


def test_mmol_per_litre_cholesterol_is_converted_not_misread() -> None:
    mg = CardiovascularRisk(Limits()).evaluate(PatientRecord(cv_record(), NOW))
    mmol = CardiovascularRisk(Limits()).evaluate(PatientRecord(cv_record(tc=(213 / 38.67, "mmol/L")), NOW))
    assert mmol.probability == pytest.approx(mg.probability, abs=1e-4)
    assert any("converted" in p for p in mmol.problems)


def test_unknown_unit_is_refused_by_name() -> None:
    a = CardiovascularRisk(Limits()).evaluate(PatientRecord(cv_record(tc=(5.5, "mmol/mol")), NOW))
    assert a.status == "incomplete" and a.probability is None
    assert any("mmol/mol" in p for p in a.problems)


def test_stale_observations_are_flagged() -> None:
    a = CardiovascularRisk(Limits(stale_days=365)).evaluate(PatientRecord(cv_record(when="2022-01-01T00:00:00Z"), NOW))
    assert a.status == "ok"
    assert sum("stale" in p for p in a.problems) == 3


def test_age_outside_40_to_79_says_so() -> None:
    record = cv_record()
    record[0] = patient(birth="1996-01-01")
    a = CardiovascularRisk(Limits()).evaluate(PatientRecord(record, NOW))
    assert a.status == "not-applicable" and "40-79" in a.summary


def test_treated_blood_pressure_comes_from_active_antihypertensive_requests() -> None:
    med = {"resourceType": "MedicationRequest", "id": "m1", "status": "active", "intent": "order",
           "medicationCodeableConcept": {"coding": [{"system": "http://www.nlm.nih.gov/research/umls/rxnorm",
                                                     "code": "314076", "display": "lisinopril 10 MG Oral Tablet"}]}}
    stopped = {**med, "id": "m2", "status": "stopped"}
    untreated = CardiovascularRisk(Limits()).evaluate(PatientRecord([*cv_record(), stopped], NOW))
    treated = CardiovascularRisk(Limits()).evaluate(PatientRecord([*cv_record(), med], NOW))
    assert treated.probability is not None and untreated.probability is not None
    assert treated.probability > untreated.probability
    assert "MedicationRequest/m1" in treated.basis and "MedicationRequest/m2" not in untreated.basis


def test_smoker_and_panel_systolic_are_read_as_synthea_writes_them() -> None:
    panel = {"resourceType": "Observation", "id": "bp", "status": "final", "effectiveDateTime": "2026-11-20T00:00:00Z",
             "code": {"coding": [{"system": "http://loinc.org", "code": "85354-9"}]},
             "component": [{"code": {"coding": [{"system": "http://loinc.org", "code": "8480-6"}]},
                            "valueQuantity": {"value": 150, "system": "http://unitsofmeasure.org", "code": "mm[Hg]"}}]}
    record = [*cv_record()[:-1], smoking("s2", "449868002"), panel]
    a = CardiovascularRisk(Limits()).evaluate(PatientRecord(record, NOW))
    assert "Observation/bp" in a.basis and "current smoker" in a.detail and "systolic 150" in a.detail


def _vitals(when: str = "2026-11-27T11:00:00Z") -> list[dict]:
    return [patient(), obs("rr", "9279-1", 22, "/min", when), obs("spo2", "59408-5", 95, "%", when),
            obs("sbp", "8480-6", 105, "mm[Hg]", when), obs("hr", "8867-4", 95, "/min", when),
            obs("t", "8310-5", 38.5, "Cel", when),
            {"resourceType": "Observation", "id": "avpu", "status": "final", "effectiveDateTime": when,
             "code": {"coding": [{"system": "http://loinc.org", "code": "67775-7"}]}, "valueString": "Alert"}]


def test_news2_from_vital_signs_with_band() -> None:
    a = EarlyWarning(Limits()).evaluate(PatientRecord(_vitals(), NOW))
    assert (a.status, a.score, a.qualitative, a.indicator) == ("ok", 6.0, "medium", "warning")


def test_news2_without_consciousness_is_incomplete_with_a_lower_bound() -> None:
    a = EarlyWarning(Limits()).evaluate(PatientRecord(_vitals()[:-1], NOW))
    assert a.status == "incomplete" and a.score is None
    assert "consciousness" in a.summary and a.extra["lower_bound"] == 6.0


def test_news2_scale2_for_hypercapnic_patients_and_stale_vitals_flagged() -> None:
    cond = {"resourceType": "Condition", "id": "c1", "code": {"coding": [{"system": "http://snomed.info/sct",
                                                                           "code": "389087006"}]}}
    record = [*_vitals("2026-11-25T11:00:00Z"), cond]
    a = EarlyWarning(Limits()).evaluate(PatientRecord(record, NOW))
    assert any(c.name == "SpO2 (scale 2)" and c.contribution == 0 for c in a.explanation)
    assert any("stale" in p for p in a.problems)
