"""FHIR R4 RiskAssessment from an assessment: probability, basis, method, model, rationale, explanation.

``method`` codes the service in ``http://medcloud.dev/fhir/CodeSystem/cds-services`` with the model
name and version as text; the model is also named in the extension ``.../StructureDefinition/cds-model``
(name, version). The explanation is kept with the assessment: ``prediction.rationale`` has it as
text, and the extension ``.../StructureDefinition/cds-explanation`` has one ``contribution`` per row
(``term`` string, ``value`` string, ``contribution`` decimal), so it can be read back by machine.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from medcloud.cds.assessment import Assessment

SERVICES_SYSTEM = "http://medcloud.dev/fhir/CodeSystem/cds-services"
EXT = "http://medcloud.dev/fhir/StructureDefinition/"


def rationale(a: Assessment) -> str:
    rows = "; ".join(f"{c.name} = {c.value}: {c.contribution:+.3f}" for c in a.explanation)
    text = f"{a.summary}. Contributions ({a.explanation_unit}): {rows}" if rows else a.summary
    if a.problems:
        text += ". Data problems: " + "; ".join(a.problems)
    return text


def build(a: Assessment, patient_id: str, now: datetime, encounter: str | None = None) -> dict[str, Any]:
    prediction: dict[str, Any] = {"outcome": {"text": a.outcome or a.service}, "rationale": rationale(a)}
    if a.probability is not None:
        prediction["probabilityDecimal"] = a.probability
    if a.qualitative:
        prediction["qualitativeRisk"] = {"text": a.qualitative}
    ra: dict[str, Any] = {
        "resourceType": "RiskAssessment",
        "status": "final",
        "subject": {"reference": f"Patient/{patient_id}"},
        "occurrenceDateTime": now.isoformat().replace("+00:00", "Z"),
        "method": {"coding": [{"system": SERVICES_SYSTEM, "code": a.service}],
                   "text": f"{a.method}" + (f"; model {a.model} {a.model_version}" if a.model else "")},
        "performer": {"display": f"medcloud CDS service {a.service}"},
        "prediction": [prediction],
        "extension": [{"url": EXT + "cds-model", "extension": [
            {"url": "name", "valueString": a.model or a.service},
            {"url": "version", "valueString": a.model_version or "n/a"}]}],
    }
    if a.score is not None:
        ra["extension"].append({"url": EXT + "cds-score", "valueDecimal": a.score})
    if a.explanation:
        ra["extension"].append({"url": EXT + "cds-explanation", "extension": [
            {"url": "unit", "valueString": a.explanation_unit}] + [
            {"url": "contribution", "extension": [{"url": "term", "valueString": c.name},
                                                  {"url": "value", "valueString": c.value},
                                                  {"url": "contribution", "valueDecimal": round(c.contribution, 6)}]}
            for c in a.explanation]})
    if a.basis:
        ra["basis"] = [{"reference": r} for r in a.basis]
    if encounter:
        ra["encounter"] = {"reference": f"Encounter/{encounter}"}
    return ra
