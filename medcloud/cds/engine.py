"""The CDS Hooks service layer: discovery, invocation, feedback. The HTTP edge (``http.py``) only
turns requests into these calls and errors into statuses.

Invocation: check the request (``request.py``), resolve prefetch (``prefetch.py``: what the EHR
sent, else fetched with its ``fhirAuthorization``), evaluate the service on the flattened record,
write a RiskAssessment when configured (``Settings.cds_write_risk_assessments``) and the service
computed a risk, and answer ``{"cards": [...], "systemActions": [...]}``. When the RiskAssessment
is not written it is offered as a card suggestion; when it is, ``systemActions`` is empty (already
done) and the card names the stored resource.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Protocol

from medcloud.cds import cards, prefetch, risk
from medcloud.cds.assessment import Assessment
from medcloud.cds.auth import CdsCaller
from medcloud.cds.record import PatientRecord
from medcloud.cds.request import HookRequest, parse
from medcloud.cds.services import CardiovascularRisk, CardiovascularRiskOrder, EarlyWarning, Limits
from medcloud.config import Settings
from medcloud.errors import Invalid, MedcloudError, NotFound
from medcloud.storage.cds_schema import cds_feedback
from medcloud.storage.sql.database import Database

DOCS = "https://github.com/medcloud/medcloud/blob/main/docs/cds.md"


class Service(Protocol):
    id: str
    title: str
    description: str
    hook: str
    prefetch: dict[str, str]
    outcome: str

    def evaluate(self, record: PatientRecord, context: dict[str, Any] | None = None) -> Assessment: ...


class Writer(Protocol):
    def __call__(self, resource: dict[str, Any]) -> str: ...  # -> "RiskAssessment/id"


SourceFactory = Callable[[HookRequest, "str | None"], "prefetch.FhirSource | None"]  # (request, our FHIR base)


@dataclass
class Invocation:
    response: dict[str, Any]
    assessment: Assessment
    fetched: list[str]


def builtin_services(settings: Settings, load_model: Any) -> list[Service]:
    from medcloud.cds import wdbc
    from medcloud.cds.learned import LearnedService

    limits = Limits(settings.cds_stale_days, settings.cds_vitals_stale_hours,
                    tuple(settings.cds_news2_scale2_conditions))
    out: list[Service] = [CardiovascularRisk(limits), CardiovascularRiskOrder(limits, "order-select"),
                          CardiovascularRiskOrder(limits, "order-sign"), EarlyWarning(limits),
                          LearnedService(wdbc.service_config(), load_model, _card_url(settings, wdbc.MODEL_NAME))]
    out += [LearnedService(c, load_model, _card_url(settings, c.model)) for c in settings.cds_model_services]
    ids = [s.id for s in out]
    if len(set(ids)) != len(ids):
        raise ValueError(f"CDS service ids must be unique: {ids}")
    return out


def _card_url(settings: Settings, model: str) -> str:
    """The card's ``source.url`` of a learned service: the registry entry, whose manifest links the model card."""
    return f"{settings.public_base}/ai/models/{model}"


class CdsEngine:
    def __init__(self, settings: Settings, db: Database, services: list[Service], *, source: SourceFactory,
                 writer: Writer | None, clock: Callable[[], float] = time.time):
        self.settings = settings
        self.db = db
        self.services = {s.id: s for s in services}
        self.source = source
        self.writer = writer if settings.cds_write_risk_assessments else None
        self.clock = clock

    def discovery(self) -> dict[str, Any]:
        return {"services": [{"hook": s.hook, "id": s.id, "title": s.title, "description": s.description,
                              "prefetch": s.prefetch} for s in self.services.values()]}

    def service(self, service_id: str) -> Service:
        found = self.services.get(service_id)
        if found is None:
            raise NotFound(f"no CDS service {service_id!r}; GET /cds-services lists them")
        return found

    def invoke(self, service_id: str, body: Any, fhir_base: str | None = None) -> Invocation:
        """Run one service call; ``fhir_base`` is this server's FHIR base as the caller reached it."""
        service = self.service(service_id)
        request = parse(body, service.hook)
        data, fetched = prefetch.resolve(service.prefetch, request, lambda: self.source(request, fhir_base))
        now = datetime.fromtimestamp(self.clock(), UTC)
        record = PatientRecord([r for rs in data.values() for r in rs], now)
        if record.patient is not None and str(record.patient.get("id")) != request.patient_id:
            raise Invalid(f"prefetch Patient/{record.patient.get('id')} is not context.patientId {request.patient_id}")
        assessment = service.evaluate(record, request.context)
        return Invocation(self.respond(assessment, request.patient_id, now, request.context.get("encounterId")),
                          assessment, fetched)

    def respond(self, a: Assessment, patient_id: str, now: datetime, encounter: Any = None) -> dict[str, Any]:
        if a.status == "not-applicable" and a.service.startswith("cardiovascular-risk-order"):
            return {"cards": [], "systemActions": []}
        computed = a.status == "ok"
        resource = risk.build(a, patient_id, now, encounter if isinstance(encounter, str) else None) \
            if computed else None
        written = self.writer(resource) if resource is not None and self.writer is not None else None
        service = self.services.get(a.service)
        card = cards.card(a, source_label=f"medcloud: {service.title if service else a.service}",
                          source_url=getattr(service, "doc", DOCS), risk_assessment=resource, written=written)
        return {"cards": [card], "systemActions": []}

    def feedback(self, service_id: str, body: Any, caller: CdsCaller | None) -> int:
        """Store each feedback item (CDS Hooks 2.0 "Feedback"); raises Invalid for a malformed body."""
        self.service(service_id)
        items = body.get("feedback") if isinstance(body, dict) else None
        if not isinstance(items, list) or not items:
            raise Invalid("feedback body must be {\"feedback\": [ ... ]} with at least one item")
        rows = []
        for i, item in enumerate(items):
            if not isinstance(item, dict) or not isinstance(item.get("card"), str) or not item["card"]:
                raise Invalid(f"feedback[{i}].card (the card's uuid) is required")
            if item.get("outcome") not in ("accepted", "overridden"):
                raise Invalid(f"feedback[{i}].outcome must be 'accepted' or 'overridden'")
            if not isinstance(item.get("outcomeTimestamp"), str):
                raise Invalid(f"feedback[{i}].outcomeTimestamp is required")
            if item["outcome"] == "accepted" and not isinstance(item.get("acceptedSuggestions", []), list):
                raise Invalid(f"feedback[{i}].acceptedSuggestions must be an array")
            rows.append({"service": service_id, "card": item["card"][:64], "outcome": item["outcome"],
                         "client": caller.iss if caller else "anonymous", "received": int(self.clock() * 1000),
                         "body": json.dumps(item, sort_keys=True)})
        with self.db.write() as conn:
            conn.execute(cds_feedback.insert(), rows)
        return len(rows)


def error_body(e: MedcloudError) -> dict[str, Any]:
    return {"error": e.category, "message": str(e.issues[0].diagnostics if e.issues else e)}
