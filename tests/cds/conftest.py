"""CDS fixtures: an EHR key pair (ES384), a configured client, a signed-JWT maker, a patient record."""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import ec

from medcloud.app import Services, build_services, create_app
from medcloud.config import Settings

ISS = "https://ehr.example.org"


@pytest.fixture(scope="session")
def ehr_key() -> Any:
    return ec.generate_private_key(ec.SECP384R1())


@pytest.fixture(scope="session")
def ehr_jwks(ehr_key: Any) -> dict[str, Any]:
    jwk = json.loads(jwt.algorithms.ECAlgorithm.to_jwk(ehr_key.public_key()))
    jwk.update(kid="ehr-1", alg="ES384", use="sig")
    return {"keys": [jwk]}


@pytest.fixture
def cds_settings(settings: Settings, ehr_jwks: dict[str, Any], tmp_path: Path) -> Settings:
    return settings.with_overrides(cds_clients=[{"iss": ISS, "jwks": ehr_jwks}])


@pytest.fixture
def cds_services(cds_settings: Settings) -> Iterator[Services]:
    svc = build_services(cds_settings)
    yield svc
    svc.close()


@pytest.fixture
def cds_client(cds_settings: Settings, cds_services: Services) -> Iterator[Any]:
    from starlette.testclient import TestClient

    with TestClient(create_app(cds_settings, cds_services), base_url="http://testserver") as c:
        yield c


@pytest.fixture
def sign(ehr_key: Any, cds_settings: Settings) -> Any:
    def make(service: str | None, *, alg: str = "ES384", key: Any = None, headers: dict[str, Any] | None = None,
             **claims: Any) -> str:
        now = int(time.time())
        aud = f"{cds_settings.public_base}/cds-services" + (f"/{service}" if service else "")
        body = {"iss": ISS, "sub": "ehr-client", "aud": aud, "iat": now, "exp": now + 120, "jti": str(uuid.uuid4())}
        body.update(claims)
        return jwt.encode(body, key if key is not None else ehr_key, algorithm=alg,
                          headers={"kid": "ehr-1", **(headers or {})})

    return make


def patient(pid: str = "p1", *, birth: str = "1969-06-01", gender: str = "male") -> dict[str, Any]:
    return {"resourceType": "Patient", "id": pid, "birthDate": birth, "gender": gender}


def obs(oid: str, code: str, value: float, unit: str, when: str = "2026-11-01T10:00:00Z", pid: str = "p1",
        system: str = "http://loinc.org") -> dict[str, Any]:
    return {"resourceType": "Observation", "id": oid, "status": "final",
            "code": {"coding": [{"system": system, "code": code}]}, "subject": {"reference": f"Patient/{pid}"},
            "effectiveDateTime": when,
            "valueQuantity": {"value": value, "unit": unit, "system": "http://unitsofmeasure.org", "code": unit}}


def smoking(oid: str, code: str = "266919005", pid: str = "p1", when: str = "2026-11-01T10:00:00Z") -> dict[str, Any]:
    return {"resourceType": "Observation", "id": oid, "status": "final",
            "code": {"coding": [{"system": "http://loinc.org", "code": "72166-2"}]},
            "subject": {"reference": f"Patient/{pid}"}, "effectiveDateTime": when,
            "valueCodeableConcept": {"coding": [{"system": "http://snomed.info/sct", "code": code}]}}


def cv_record(pid: str = "p1", *, tc: tuple[float, str] = (213, "mg/dL"), when: str = "2026-11-01T10:00:00Z"
              ) -> list[dict[str, Any]]:
    return [patient(pid, birth="1971-06-01"), obs(f"{pid}-tc", "2093-3", tc[0], tc[1], when, pid),
            obs(f"{pid}-hdl", "2085-9", 50, "mg/dL", when, pid), obs(f"{pid}-sbp", "8480-6", 120, "mm[Hg]", when, pid),
            smoking(f"{pid}-smk", pid=pid, when=when)]
