"""Services on real Synthea records: inputs found as Synthea codes them, prefetch and server fetch agree."""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Any

import pytest

from medcloud.cds import prefetch
from medcloud.cds.engine import builtin_services
from medcloud.cds.request import parse
from medcloud.cds.sources import LocalSource
from medcloud.fhir.exchange import SYSTEM


@pytest.mark.integration
@pytest.mark.parametrize("service", ["cardiovascular-risk", "early-warning"])
def test_synthea_patients_get_the_same_card_from_prefetch_and_from_the_store(
        cds_client: Any, cds_services: Any, cds_settings: Any, sign: Any, synthea_dir: Path, service: str) -> None:
    patients = []
    for bundle in sorted(synthea_dir.glob("*.json")):
        r = cds_client.post("/fhir", content=bundle.read_bytes(), headers={"Content-Type": "application/fhir+json"})
        assert r.status_code == 200, r.text[:300]
        patients += [e["response"]["location"].split("Patient/")[1].split("/")[0] for e in r.json()["entry"]
                     if "Patient/" in e["response"]["location"]]
    assert patients
    templates = {s.id: s for s in builtin_services(cds_settings, None)}[service].prefetch
    source = LocalSource(cds_services.fhir, SYSTEM, "http://testserver/fhir")
    for pid in patients:
        base = {"hook": "patient-view", "context": {"userId": "Practitioner/u", "patientId": pid},
                "fhirServer": "http://testserver/fhir"}
        req = parse({**base, "hookInstance": "x"}, "patient-view")
        sent = {k: source.get(q) for k, t in templates.items() if (q := prefetch.fill(t, req))}
        cards = []
        for body in (base, {**base, "prefetch": sent}):
            r = cds_client.post(f"/cds-services/{service}", json={**body, "hookInstance": str(uuid.uuid4())},
                                headers={"Authorization": f"Bearer {sign(service)}"})
            assert r.status_code == 200, r.text
            cards.append(r.json()["cards"][0])
        assert cards[0]["summary"] == cards[1]["summary"]
        assert len(cards[0]["summary"]) <= 140
        # Synthea writes vitals, labs and smoking status: nothing of that is reported missing.
        missing = cards[0]["detail"].split("**Missing**")[-1].split("**")[0] if "**Missing**" in cards[0]["detail"] else ""
        for name in ("total cholesterol", "HDL", "smoking status", "respiration rate", "pulse", "temperature"):
            assert f"- {name}" not in missing, (pid, cards[0]["detail"])
