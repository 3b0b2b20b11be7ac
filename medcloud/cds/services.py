"""The built-in services: cardiovascular-risk (Pooled Cohort Equations) and early-warning (NEWS2).

Inputs are read from the record as Synthea writes them (LOINC 2093-3 total cholesterol, 2085-9 HDL,
8480-6 systolic pressure alone or in the 85354-9 panel, 72166-2 smoking status, SNOMED 44054006
diabetes, RxNorm MedicationRequests; vital signs 9279-1, 59408-5/2708-6, 8867-4, 8310-5). A missing
input is named in the card and no number is computed from a guess; a value in a unit the table of
``units.py`` cannot convert is refused by name; a value older than the configured limit is flagged.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

from medcloud.cds import news2, pce
from medcloud.cds.assessment import Assessment, Contribution
from medcloud.cds.record import LOINC, SNOMED, Observed, PatientRecord, codings
from medcloud.cds.units import UnitError, convert

P = "{{context.patientId}}"
TC = (f"{LOINC}|2093-3", f"{LOINC}|14647-2")
HDL = (f"{LOINC}|2085-9", f"{LOINC}|14646-4")
SBP = (f"{LOINC}|8480-6",)
SBP_QUERY = (f"{LOINC}|8480-6", f"{LOINC}|85354-9", f"{LOINC}|55284-4")
SMOKING = (f"{LOINC}|72166-2",)
DIABETES = (f"{SNOMED}|44054006", f"{SNOMED}|46635009", f"{SNOMED}|73211009")
CURRENT_SMOKER = {f"{SNOMED}|{c}" for c in ("449868002", "428041000124106", "77176002", "65568007",
                                             "428061000124105", "428071000124103")}
RR, HR, TEMP = (f"{LOINC}|9279-1",), (f"{LOINC}|8867-4",), (f"{LOINC}|8310-5",)
SPO2 = (f"{LOINC}|59408-5", f"{LOINC}|2708-6")
CONSCIOUSNESS = (f"{LOINC}|67775-7", f"{LOINC}|80288-4")
GCS = (f"{LOINC}|9269-2",)
O2_FLOW, FIO2 = (f"{LOINC}|3151-8",), (f"{LOINC}|3150-0",)
# Ingredients recognised in a MedicationRequest's medication text (RxNorm displays as Synthea writes them).
ANTIHYPERTENSIVES = ("lisinopril", "enalapril", "ramipril", "captopril", "benazepril", "quinapril", "fosinopril",
                     "perindopril", "losartan", "valsartan", "irbesartan", "candesartan", "olmesartan", "telmisartan",
                     "amlodipine", "nifedipine", "felodipine", "diltiazem", "verapamil", "hydrochlorothiazide",
                     "chlorthalidone", "indapamide", "metoprolol", "atenolol", "carvedilol", "bisoprolol",
                     "nebivolol", "labetalol", "propranolol", "spironolactone", "clonidine", "hydralazine",
                     "doxazosin", "prazosin", "terazosin")
STATINS = ("atorvastatin", "simvastatin", "rosuvastatin", "pravastatin", "lovastatin", "fluvastatin", "pitavastatin")
AA_RACE = "urn:oid:2.16.840.1.113883.6.238|2054-5"
PCE_DOC = "https://doi.org/10.1161/01.cir.0000437741.48606.98"
NEWS2_DOC = "https://www.rcp.ac.uk/improving-care/resources/national-early-warning-score-news-2/"


def _q(codes: tuple[str, ...], count: int = 1) -> str:
    return f"Observation?patient={P}&code={','.join(codes)}&_sort=-date&_count={count}"


@dataclass(frozen=True)
class Limits:
    stale_days: int = 365
    vitals_stale_hours: int = 24
    scale2_conditions: tuple[str, ...] = ("389087006",)


def medication_text(r: dict[str, Any]) -> str:
    concept = r.get("medicationCodeableConcept") or {}
    parts = [str(concept.get("text", ""))] + [str(c.get("display", "")) for c in concept.get("coding") or []
                                               if isinstance(c, dict)]
    return " ".join(parts).lower()


def _active_meds(record: PatientRecord, names: tuple[str, ...]) -> list[dict[str, Any]]:
    return [m for m in record.of_type("MedicationRequest")
            if m.get("status") == "active" and m.get("intent", "order") in ("order", "plan", "original-order")
            and any(n in medication_text(m) for n in names)]


def _when(o: Observed) -> str:
    return o.effective.date().isoformat() if o.effective else "date unknown"


@dataclass
class _Inputs:
    record: PatientRecord
    limits: Limits
    missing: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    basis: list[str] = field(default_factory=list)

    def number(self, codes: tuple[str, ...], label: str, analyte: str, max_days: float) -> float | None:
        o = self.record.latest(codes)
        if o is None or o.value is None:
            self.missing.append(f"{label} ({', '.join(c.split('|')[1] for c in codes)})")
            return None
        try:
            value, unit = convert(o.value, o.unit, analyte)
        except UnitError as e:
            self.problems.append(f"{label} in {o.ref} refused: {e}")
            self.missing.append(f"{label} in a convertible unit")
            return None
        self.basis.append(o.ref)
        if o.unit != unit:
            self.problems.append(f"{label}: {o.value:g} {o.unit} converted to {value:.1f} {unit}")
        age = self.record.age_days(o)
        if age is not None and age > max_days:
            self.problems.append(f"{label} is stale: measured {_when(o)} ({age:.0f} days ago; limit {max_days:g} days)")
        return value


class CardiovascularRisk:
    """10-year ASCVD risk by the Pooled Cohort Equations (``pce.py``)."""

    id = "cardiovascular-risk"
    title = "10-year ASCVD risk (Pooled Cohort Equations)"
    description = ("10-year risk of a first atherosclerotic cardiovascular event by the 2013 ACC/AHA Pooled Cohort "
                   "Equations, from the latest cholesterol, HDL, systolic pressure, treatment, smoking and diabetes.")
    hook = "patient-view"
    prefetch = {"patient": f"Patient/{P}", "tc": _q(TC), "hdl": _q(HDL), "sbp": _q(SBP_QUERY), "smoking": _q(SMOKING),
                "diabetes": f"Condition?patient={P}&code={','.join(DIABETES)}",
                "medications": f"MedicationRequest?patient={P}&status=active"}
    outcome = "atherosclerotic cardiovascular disease event within 10 years"
    doc = PCE_DOC

    def __init__(self, limits: Limits):
        self.limits = limits

    def evaluate(self, record: PatientRecord, context: dict[str, Any] | None = None) -> Assessment:
        x = _Inputs(record, self.limits)
        patient = record.patient or {}
        if not record.patient:
            x.missing.append("the Patient resource")
        age = record.age()
        if record.patient and age is None:
            x.missing.append("birth date")
        gender = patient.get("gender")
        if record.patient and gender not in ("male", "female"):
            x.missing.append("sex (Patient.gender male or female)")
        if age is not None and not pce.AGE_RANGE[0] <= age <= pce.AGE_RANGE[1]:
            return Assessment(self.id, "not-applicable", f"ASCVD risk not computed: the Pooled Cohort Equations "
                              f"apply to ages 40-79; patient is {age:.0f}",
                              detail="The equations were derived for ages 40-79; outside that range they are not "
                              "valid and no risk is given.", method="Pooled Cohort Equations (Goff 2013)",
                              links=(("Pooled Cohort Equations (Goff et al. 2013)", PCE_DOC),))
        days = float(self.limits.stale_days)
        tc = x.number(TC, "total cholesterol", "cholesterol", days)
        hdl = x.number(HDL, "HDL cholesterol", "cholesterol", days)
        sbp = x.number(SBP, "systolic blood pressure", "pressure", days)
        smoking = record.latest(SMOKING)
        if smoking is None or not (smoking.codes or smoking.text):
            x.missing.append("smoking status (72166-2)")
        else:
            x.basis.append(smoking.ref)
        diabetes = record.active_conditions(DIABETES)
        x.basis += [f"Condition/{c.get('id')}" for c in diabetes]
        treatment = _active_meds(record, ANTIHYPERTENSIVES)
        x.basis += [f"MedicationRequest/{m.get('id')}" for m in treatment]
        if x.missing or age is None or tc is None or hdl is None or sbp is None or smoking is None:
            return Assessment(self.id, "incomplete", "ASCVD risk not computed: missing " + ", ".join(x.missing),
                              detail="The Pooled Cohort Equations need every input; none is guessed.\n\n"
                              "**Missing**\n\n" + "\n".join(f"- {m}" for m in x.missing),
                              indicator="info", problems=tuple(x.problems), basis=tuple(x.basis),
                              method="Pooled Cohort Equations (Goff 2013)")
        african_american = AA_RACE in {c for e in patient.get("extension") or [] if isinstance(e, dict)
                                       for sub in e.get("extension") or [] if isinstance(sub, dict)
                                       for c in codings({"coding": [sub.get("valueCoding", {})]})}
        smoker = bool(smoking.codes & CURRENT_SMOKER) or (not smoking.codes and "current" in smoking.text.lower())
        inputs = pce.PceInputs(age, gender == "female", african_american, tc, hdl, sbp, bool(treatment), smoker,
                               bool(diabetes))
        result = pce.ten_year_risk(inputs)
        for label, v, lo, hi in (("total cholesterol", tc, 130, 320), ("HDL cholesterol", hdl, 20, 100),
                                 ("systolic blood pressure", sbp, 90, 200)):
            if not lo <= v <= hi:
                x.problems.append(f"{label} {v:.0f} is outside the equations' range {lo}-{hi}")
        pct = result.risk * 100
        category = "high" if pct >= 20 else "intermediate" if pct >= 7.5 else "borderline" if pct >= 5 else "low"
        detail = (f"**{pct:.1f}%** 10-year risk of a first hard ASCVD event ({category}; ACC/AHA categories "
                  f"<5 low, 5-7.4 borderline, 7.5-19.9 intermediate, ≥20 high).\n\n"
                  f"Inputs: age {age:.0f}, {gender}, {result.group.split('-female')[0].split('-male')[0]} equations, "
                  f"total cholesterol {tc:.0f} mg/dL, HDL {hdl:.0f} mg/dL, systolic {sbp:.0f} mmHg "
                  f"({'treated' if treatment else 'untreated'}), {'current smoker' if smoker else 'not a current smoker'}, "
                  f"{'diabetes' if diabetes else 'no diabetes'}.\n\n"
                  f"Risk = 1 − {result.baseline_survival} ^ exp({result.individual_sum:.3f} − {result.mean}).")
        explanation = tuple(Contribution(pce.LABELS[t.name], f"{t.value:.3f}", t.contribution, t.coefficient)
                            for t in result.terms)
        return Assessment(
            self.id, "ok", f"10-year ASCVD risk {pct:.1f}% ({category}) by the Pooled Cohort Equations",
            detail=detail, indicator="warning" if pct >= 7.5 else "info", probability=round(result.risk, 4),
            qualitative=category, outcome=self.outcome, basis=tuple(dict.fromkeys(x.basis)), explanation=explanation,
            explanation_unit="linear predictor", problems=tuple(x.problems),
            method="Pooled Cohort Equations (Goff 2013)", model="pooled-cohort-equations", model_version="2013",
            links=(("Pooled Cohort Equations (Goff et al. 2013)", PCE_DOC),))


class CardiovascularRiskOrder(CardiovascularRisk):
    """The same risk shown while a statin or antihypertensive is being ordered (order-select / order-sign)."""

    def __init__(self, limits: Limits, hook: str):
        super().__init__(limits)
        self.hook = hook
        self.id = f"cardiovascular-risk-{hook}"
        self.title = f"ASCVD risk when ordering a statin or antihypertensive ({hook})"
        self.description = ("The Pooled Cohort Equations' 10-year ASCVD risk, shown when a draft order is a statin or "
                            "an antihypertensive.")

    def evaluate(self, record: PatientRecord, context: dict[str, Any] | None = None) -> Assessment:
        drafts = [e.get("resource") or {} for e in ((context or {}).get("draftOrders") or {}).get("entry") or []
                  if isinstance(e, dict)]
        selected = set((context or {}).get("selections") or [])
        relevant = [d for d in drafts if d.get("resourceType") == "MedicationRequest"
                    and (self.hook != "order-select" or f"MedicationRequest/{d.get('id')}" in selected)
                    and any(n in medication_text(d) for n in STATINS + ANTIHYPERTENSIVES)]
        if not relevant:
            return Assessment(self.id, "not-applicable", "No statin or antihypertensive among the orders")
        a = super().evaluate(record, context)
        names = ", ".join(sorted({medication_text(d).split(" ")[0] or "medication" for d in relevant}))
        from dataclasses import replace

        return replace(a, detail=f"Ordering: {names}.\n\n{a.detail}")


class EarlyWarning:
    """NEWS2 from the latest vital signs (``news2.py``)."""

    id = "early-warning"
    title = "NEWS2 early warning score"
    description = "National Early Warning Score 2 from the latest vital signs, with its clinical-response band."
    hook = "patient-view"
    prefetch = {"patient": f"Patient/{P}", "rr": _q(RR), "spo2": _q(SPO2), "sbp": _q(SBP_QUERY), "hr": _q(HR),
                "temp": _q(TEMP), "consciousness": _q(CONSCIOUSNESS + GCS), "o2": _q(O2_FLOW + FIO2),
                "conditions": f"Condition?patient={P}&clinical-status=active"}
    outcome = "clinical deterioration (NEWS2 band)"
    doc = NEWS2_DOC

    def __init__(self, limits: Limits):
        self.limits = limits

    def evaluate(self, record: PatientRecord, context: dict[str, Any] | None = None) -> Assessment:
        x = _Inputs(record, self.limits)
        days = self.limits.vitals_stale_hours / 24.0
        rr = x.number(RR, "respiration rate", "rate", days)
        spo2 = x.number(SPO2, "SpO2", "percent", days)
        sbp = x.number(SBP, "systolic blood pressure", "pressure", days)
        hr = x.number(HR, "pulse", "rate", days)
        temp = x.number(TEMP, "temperature", "temperature", days)
        alert = self._alert(record, x)
        on_oxygen = self._oxygen(record, x)
        scale2 = record.active_conditions(f"{SNOMED}|{c}" for c in self.limits.scale2_conditions)
        scale = 2 if scale2 else 1
        x.basis += [f"Condition/{c.get('id')}" for c in scale2]
        values = (rr, spo2, sbp, hr, temp)
        if any(v is None for v in values) or alert is None:
            # The parameters present give a lower bound: a missing one can only add points.
            partial = news2.score(news2.News2Inputs(rr if rr is not None else 16, spo2 if spo2 is not None else 99,
                                                    on_oxygen, sbp if sbp is not None else 120,
                                                    hr if hr is not None else 70, alert is not False,
                                                    temp if temp is not None else 37.0, scale))
            return Assessment(
                self.id, "incomplete", f"NEWS2 incomplete (missing {', '.join(x.missing)}); the recorded parameters "
                f"score {partial.total}", detail=f"The recorded parameters score **{partial.total}**; the total is at "
                "least that. Missing parameters are not guessed.\n\n**Missing**\n\n" +
                "\n".join(f"- {m}" for m in x.missing), indicator="warning" if partial.total >= 5 else "info",
                problems=tuple(x.problems), basis=tuple(x.basis), method="NEWS2 (RCP 2017)",
                extra={"lower_bound": float(partial.total)})
        assert rr is not None and spo2 is not None and sbp is not None and hr is not None and temp is not None
        result = news2.score(news2.News2Inputs(rr, spo2, on_oxygen, sbp, hr, alert, temp, scale))
        indicator: Literal["info", "warning", "critical"] = "critical" if result.band == "high" else "warning" if result.band in ("medium", "low-medium") else "info"
        shown = {"respiration rate": f"{rr:.0f}/min", f"SpO2 (scale {scale})": f"{spo2:.0f}%",
                 "air or oxygen": "oxygen" if on_oxygen else "air", "systolic blood pressure": f"{sbp:.0f} mmHg",
                 "pulse": f"{hr:.0f}/min", "consciousness": "alert" if alert else "not alert (CVPU)",
                 "temperature": f"{temp:.1f} °C"}
        return Assessment(
            self.id, "ok", f"NEWS2 {result.total} ({result.band}): {result.response.split(':')[0]}",
            detail=f"**NEWS2 {result.total}**, band **{result.band}**: {result.response}.",
            indicator=indicator, score=float(result.total), qualitative=result.band, outcome=self.outcome,
            basis=tuple(dict.fromkeys(x.basis)),
            explanation=tuple(Contribution(k, shown[k], float(v)) for k, v in result.points.items()),
            explanation_unit="points", problems=tuple(x.problems), method="NEWS2 (RCP 2017)", model="news2",
            model_version="2017", links=(("NEWS2 (Royal College of Physicians)", NEWS2_DOC),))

    def _alert(self, record: PatientRecord, x: _Inputs) -> bool | None:
        o = record.latest(CONSCIOUSNESS)
        if o is not None:
            x.basis.append(o.ref)
            text = (o.text or "").strip().lower()
            return text in ("a", "alert") or text.startswith("alert") or f"{SNOMED}|248234008" in o.codes
        g = record.latest(GCS)
        if g is not None and g.value is not None:
            x.basis.append(g.ref)
            return g.value >= 15
        x.missing.append("level of consciousness (ACVPU 67775-7/80288-4 or GCS 9269-2)")
        return None

    def _oxygen(self, record: PatientRecord, x: _Inputs) -> bool:
        flow, fio2 = record.latest(O2_FLOW), record.latest(FIO2)
        on = False
        if flow is not None and flow.value is not None:
            x.basis.append(flow.ref)
            on = flow.value > 0
        if fio2 is not None and fio2.value is not None:
            x.basis.append(fio2.ref)
            on = on or fio2.value > 21
        if flow is None and fio2 is None:
            x.problems.append("no inhaled oxygen observation (3151-8/3150-0): scored as breathing air")
        return on
