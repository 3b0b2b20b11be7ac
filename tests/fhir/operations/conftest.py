"""Fixtures for operation tests: a small patient graph, and Synthea bundles put without transactions."""

from __future__ import annotations

import types
from pathlib import Path
from typing import Any

import orjson
import pytest

from medcloud.fhir import router
from medcloud.fhir.context import FhirContext
from medcloud.fhir.exchange import FhirRequest


def resources_of(path: Path) -> list[dict[str, Any]]:
    """The bundle's resources with urn:uuid references rewritten to Type/id."""
    b = orjson.loads(path.read_bytes())
    urls = {e["fullUrl"]: f"{e['resource']['resourceType']}/{e['resource']['id']}" for e in b["entry"]}

    def fix(node: Any) -> Any:
        if isinstance(node, dict):
            return {k: (urls.get(v, v) if k == "reference" and isinstance(v, str) else fix(v)) for k, v in node.items()}
        if isinstance(node, list):
            return [fix(v) for v in node]
        return node

    return [fix(e["resource"]) for e in b["entry"]]


def put_all(ctx: FhirContext, items: list[dict[str, Any]]) -> None:
    with ctx.db.write() as conn:
        for r in items:
            resp = router.dispatch(ctx, conn, FhirRequest("PUT", f"{r['resourceType']}/{r['id']}", body=r, in_bundle=True))
            assert resp.status in (200, 201), (r["resourceType"], resp.resource)


def references(node: Any) -> set[str]:
    out: set[str] = set()
    if isinstance(node, dict):
        for k, v in node.items():
            if k == "reference" and isinstance(v, str) and not v.startswith("#"):
                out.add(v)
            else:
                out |= references(v)
    elif isinstance(node, list):
        for v in node:
            out |= references(v)
    return out
def graph() -> list[dict[str, Any]]:
    return [
        {"resourceType": "Organization", "id": "org", "name": "General Hospital"},
        {"resourceType": "Practitioner", "id": "dr", "name": [{"family": "House"}]},
        {"resourceType": "Location", "id": "ward", "name": "Ward 1", "managingOrganization": {"reference": "Organization/org"}},
        {"resourceType": "Patient", "id": "p1", "name": [{"family": "One"}],
         "generalPractitioner": [{"reference": "Practitioner/dr"}]},
        {"resourceType": "Patient", "id": "p2", "name": [{"family": "Two"}]},
        {"resourceType": "Encounter", "id": "e1", "status": "finished",
         "class": {"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": "AMB"},
         "subject": {"reference": "Patient/p1"}, "serviceProvider": {"reference": "Organization/org"},
         "location": [{"location": {"reference": "Location/ward"}}]},
        {"resourceType": "Observation", "id": "o1", "status": "final", "code": {"text": "weight"},
         "subject": {"reference": "Patient/p1"}, "encounter": {"reference": "Encounter/e1"},
         "performer": [{"reference": "Practitioner/dr"}]},
        {"resourceType": "Condition", "id": "c1", "subject": {"reference": "Patient/p1"}, "code": {"text": "flu"}},
        {"resourceType": "Observation", "id": "o2", "status": "final", "code": {"text": "height"},
         "subject": {"reference": "Patient/p2"}},
    ]


def put_graph(client: Any) -> None:
    for r in graph():
        resp = client.put(f"/fhir/{r['resourceType']}/{r['id']}", json=r)
        assert resp.status_code in (200, 201), resp.text


@pytest.fixture
def loaded_graph(client: Any) -> Any:
    put_graph(client)
    return client


@pytest.fixture
def synthea(synthea_dir: Path) -> types.SimpleNamespace:
    """Synthea Bundles from the session's shared set (tests/conftest.py ``synthea_dir``)."""
    return types.SimpleNamespace(files=lambda: sorted(synthea_dir.glob("*.json")), resources_of=resources_of,
                                 put_all=put_all,
                                 references=references)


@pytest.fixture
def stored_graph(services: Any) -> Any:
    """The graph written straight into the store (no app, so no background worker runs)."""
    put_all(services.fhir, graph())
    return services
