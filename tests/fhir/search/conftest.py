"""Helpers for search tests: create resources and run searches through the real HTTP edge."""

from __future__ import annotations

from typing import Any

import pytest


class Api:
    def __init__(self, client: Any):
        self.client = client

    def create(self, resource: dict[str, Any]) -> str:
        r = self.client.post(f"/fhir/{resource['resourceType']}", json=resource)
        assert r.status_code == 201, r.text
        return str(r.json()["id"])

    def put(self, resource: dict[str, Any]) -> str:
        r = self.client.put(f"/fhir/{resource['resourceType']}/{resource['id']}", json=resource)
        assert r.status_code in (200, 201), r.text
        return str(resource["id"])

    def get(self, path: str, params: Any = None, headers: dict[str, str] | None = None) -> Any:
        return self.client.get(f"/fhir/{path}" if not path.startswith("http") else path, params=params,
                               headers=headers)

    def search(self, path: str, params: Any = None, headers: dict[str, str] | None = None) -> dict[str, Any]:
        r = self.get(path, params, headers)
        assert r.status_code == 200, r.text
        body: dict[str, Any] = r.json()
        assert body["resourceType"] == "Bundle" and body["type"] == "searchset"
        return body

    def ids(self, path: str, params: Any = None, headers: dict[str, str] | None = None) -> set[str]:
        """Ids of the matches (search.mode = match) on the first page."""
        b = self.search(path, params, headers)
        return {e["resource"]["id"] for e in b.get("entry", []) if e["search"]["mode"] == "match"}

    def status(self, path: str, params: Any = None, headers: dict[str, str] | None = None) -> int:
        return int(self.get(path, params, headers).status_code)


def link(bundle: dict[str, Any], relation: str) -> str | None:
    return next((x["url"] for x in bundle.get("link", []) if x["relation"] == relation), None)


def patient(family: str, given: str = "Ann", **extra: Any) -> dict[str, Any]:
    return {"resourceType": "Patient", "name": [{"family": family, "given": [given]}], **extra}


def observation(subject: str | None, code: str, value: float | None = None, *, system: str = "http://loinc.org",
                when: str = "2020-01-01", unit: str = "mmHg", **extra: Any) -> dict[str, Any]:
    obs: dict[str, Any] = {"resourceType": "Observation", "status": "final",
                           "code": {"coding": [{"system": system, "code": code, "display": f"display {code}"}]},
                           "effectiveDateTime": when, **extra}
    if subject:
        obs["subject"] = {"reference": subject}
    if value is not None:
        obs["valueQuantity"] = {"value": value, "unit": unit, "system": "http://unitsofmeasure.org", "code": unit}
    return obs


Api.link = staticmethod(link)  # type: ignore[attr-defined]
Api.patient = staticmethod(patient)  # type: ignore[attr-defined]
Api.observation = staticmethod(observation)  # type: ignore[attr-defined]


@pytest.fixture
def api(client: Any) -> Api:
    return Api(client)
