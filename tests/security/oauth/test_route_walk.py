"""Default deny: walk the app's route table; every route that is not declared public refuses a caller
without credentials (401, never data), whatever the method."""

from __future__ import annotations

import re
from typing import Any

from starlette.routing import Route

from medcloud.app import PUBLIC_ROUTES

SAMPLE = {"study": "1.2.3", "series": "1.2.3.4", "instance": "1.2.3.4.5", "frames": "1", "tag": "7FE00010"}
# Paths under the FHIR catch-all, each tried with every method: only GET metadata is public.
FHIR_PATHS = ["", "Patient", "Patient/1", "Patient/1/_history", "Patient/1/_history/1", "Patient/1/$everything",
              "Patient/1/Observation", "_history", "$export", "Patient/$export", "Group/1/$export",
              "$export-poll-status", "_search", "Patient/_search", "AuditEvent", "AuditEvent/1", "metadata",
              "Observation/$validate", "Binary/1", "$meta"]


def _concrete(path: str) -> list[str]:
    if path.endswith("{path:path}"):
        return [path.replace("{path:path}", p) for p in FHIR_PATHS if p]
    return [re.sub(r"\{(\w+)(:\w+)?\}", lambda m: SAMPLE.get(m.group(1), "x"), path)]


def test_every_route_not_declared_public_refuses_anonymous_callers(web: Any) -> None:
    routes = [r for r in web.app.routes if isinstance(r, Route)]
    paths = {r.path for r in routes}
    assert set(PUBLIC_ROUTES) <= paths, "a declared public route no longer exists"
    tried = 0
    for route in routes:
        if route.path in PUBLIC_ROUTES:
            continue
        for method in sorted(route.methods or ()):
            if method in ("HEAD", "OPTIONS"):
                continue
            for path in _concrete(route.path):
                r = web.request(method, path, content=b"{}", headers={"Content-Type": "application/json"})
                tried += 1
                public_metadata = path == "/fhir/metadata" and method == "GET"
                if public_metadata:
                    assert r.status_code == 200
                    continue
                if path.startswith("/auth/"):  # OAuth endpoints answer per RFC 6749 §5.2, and issue nothing
                    assert r.status_code in (400, 401) and "access_token" not in r.text, (method, path)
                    continue
                assert r.status_code == 401, f"{method} {path}: {r.status_code} {r.text[:200]}"
                assert "resourceType" not in r.text or r.json()["resourceType"] == "OperationOutcome"
    assert tried > 100


def test_declared_public_routes_answer_without_credentials_and_hold_no_patient_data(web: Any) -> None:
    for path in PUBLIC_ROUTES:
        r = web.get(path)
        assert r.status_code in (200, 400), (path, r.status_code)  # /auth/authorize without params is a 400
        if path == "/cds-services":  # prefetch templates name "Patient/{{context.patientId}}": no data
            assert "{{context.patientId}}" in r.text and '"birthDate"' not in r.text
            continue
        assert "Patient/" not in r.text
