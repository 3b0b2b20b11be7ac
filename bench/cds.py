"""CDS Hooks benchmark: patient-view latency with and without prefetch, RiskAssessment batch throughput.

    .venv/bin/python bench/cds.py                        # 1 Synthea patient (generated), 50 rounds, 1,000 patients
    .venv/bin/python bench/cds.py --synthea DIR -n 200 --patients 5000

Latency: a fresh SQLite store, the real app over the in-process ASGI test client, the Synthea
patient with the most resources loaded by transaction. Each call signs a fresh ES384 JWT (the
verification and the jti insert are part of the time). "fetch" sends no prefetch, only
``fhirServer`` + ``fhirAuthorization``: the service reads this server's store through the FHIR
router. "prefetch" sends what the templates resolve to (fetched once beforehand, as an EHR would).
``breast-mass-malignancy`` runs on 30 WDBC Observations added to the same patient (ONNX + Kernel SHAP).

Throughput: ``--patients`` generated patients (seeded random age 40-79, sex, cholesterol, HDL, systolic,
smoking; stated in the result), each evaluated by cardiovascular-risk exactly as an invocation is, its
RiskAssessment built and written in transaction Bundles of 100 through the router. Results go to
bench/results/<utc>-cds.json.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"
sys.path.insert(0, str(ROOT))


def synthea_patient(folder: Path | None) -> Path:
    if folder is None:
        folder = Path(tempfile.mkdtemp(prefix="cds-bench-synthea-"))
        subprocess.run([str(Path(sys.executable).parent / "synthea"), "-p", "3", "-s", "3", "-r", "20250101",
                        "-o", str(folder)], check=True, capture_output=True, timeout=900)
        folder = folder / "fhir"
    bundles = [p for p in folder.glob("*.json") if not p.name.startswith(("hospital", "practitioner"))]
    return max(bundles, key=lambda p: p.stat().st_size)


def pct(values: list[float], q: float) -> float:
    return float(np.percentile(values, q)) * 1000


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--synthea", type=Path, default=None, help="folder of Synthea bundles (default: generate 3)")
    ap.add_argument("-n", type=int, default=50, help="calls per service and mode")
    ap.add_argument("--patients", type=int, default=1000, help="patients for the batch throughput")
    args = ap.parse_args()

    import jwt
    from cryptography.hazmat.primitives.asymmetric import ec
    from starlette.testclient import TestClient

    from medcloud.ai.registry import Registry
    from medcloud.app import build_services, create_app
    from medcloud.cds import prefetch, wdbc
    from medcloud.cds.engine import builtin_services
    from medcloud.cds.record import PatientRecord
    from medcloud.cds.request import parse
    from medcloud.cds.services import CardiovascularRisk, Limits
    from medcloud.cds.sources import LocalSource
    from medcloud.config import Settings
    from medcloud.fhir.exchange import SYSTEM

    bundle_path = synthea_patient(args.synthea)
    key = ec.generate_private_key(ec.SECP384R1())
    jwk = json.loads(jwt.algorithms.ECAlgorithm.to_jwk(key.public_key()))
    jwk.update(kid="k", alg="ES384")
    data = Path(tempfile.mkdtemp(prefix="cds-bench-"))
    settings = Settings(data_dir=data, auth=False, cds_clients=[{"iss": "bench-ehr", "jwks": {"keys": [jwk]}}])
    svc = build_services(settings)
    Registry(svc.db).register(wdbc.train(), activate=True)
    out: dict[str, Any] = {"when": dt.datetime.now(dt.UTC).isoformat(), "bundle": bundle_path.name}
    with TestClient(create_app(settings, svc)) as client:
        t0 = time.perf_counter()
        r = client.post("/fhir", content=bundle_path.read_bytes(), headers={"Content-Type": "application/fhir+json"})
        assert r.status_code == 200, r.text[:300]
        pid = next(e["response"]["location"].split("Patient/")[1].split("/")[0] for e in r.json()["entry"]
                   if "Patient/" in e["response"]["location"])
        out["load_s"] = round(time.perf_counter() - t0, 2)
        out["resources"] = len(r.json()["entry"])
        from sklearn.datasets import load_breast_cancer

        d = load_breast_cancer()
        for o in wdbc.observations(pid, dict(zip(d.feature_names, d.data[0], strict=True))):
            client.put(f"/fhir/Observation/{o['id']}", json=o)

        def call(service: str, body: dict[str, Any]) -> float:
            now = int(time.time())
            token = jwt.encode({"iss": "bench-ehr", "aud": f"{settings.public_base}/cds-services/{service}",
                                "iat": now, "exp": now + 60, "jti": str(uuid.uuid4())}, key, algorithm="ES384",
                               headers={"kid": "k"})
            start = time.perf_counter()
            resp = client.post(f"/cds-services/{service}", json=body, headers={"Authorization": f"Bearer {token}"})
            elapsed = time.perf_counter() - start
            assert resp.status_code == 200, resp.text[:300]
            return elapsed

        services = {s.id: s for s in builtin_services(settings, lambda n, v: (Registry(svc.db).load(n), "1"))}
        latency: dict[str, Any] = {}
        for sid in ("cardiovascular-risk", "early-warning", "breast-mass-malignancy"):
            base = {"hook": "patient-view", "context": {"userId": "Practitioner/x", "patientId": pid},
                    "fhirServer": "http://testserver/fhir",
                    "fhirAuthorization": {"access_token": "x", "token_type": "Bearer", "scope": "patient/*.rs",
                                          "subject": "bench"}}
            req = parse({**base, "hookInstance": "x"}, "patient-view")
            source = LocalSource(svc.fhir, SYSTEM, "http://testserver/fhir")
            sent = {k: source.get(q) for k, t in services[sid].prefetch.items() if (q := prefetch.fill(t, req))}
            for mode, body in (("fetch", base), ("prefetch", {**base, "prefetch": sent})):
                times = [call(sid, {**body, "hookInstance": str(uuid.uuid4())}) for _ in range(args.n)]
                latency[f"{sid}/{mode}"] = {"n": len(times), "p50_ms": round(pct(times, 50), 1),
                                            "p95_ms": round(pct(times, 95), 1), "max_ms": round(max(times) * 1000, 1)}
                print(sid, mode, latency[f"{sid}/{mode}"], flush=True)
        out["patient_view_latency"] = latency

        # Batch throughput: generated patients, scored and written in transactions of 100.
        rng = np.random.default_rng(0)
        limits = Limits()
        service = CardiovascularRisk(limits)
        now = dt.datetime.now(dt.UTC)
        from medcloud.cds import risk

        start = time.perf_counter()
        computed = 0
        batch: list[dict[str, Any]] = []
        score_s = 0.0
        for i in range(args.patients):
            p = f"gen{i}"
            when = (now - dt.timedelta(days=30)).isoformat()

            def ob(code: str, v: float, unit: str, p: str = p, when: str = when) -> dict[str, Any]:
                return {"resourceType": "Observation", "id": f"{p}-{code}", "status": "final",
                        "code": {"coding": [{"system": "http://loinc.org", "code": code}]}, "effectiveDateTime": when,
                        "valueQuantity": {"value": v, "system": "http://unitsofmeasure.org", "code": unit}}

            resources = [
                {"resourceType": "Patient", "id": p, "gender": "female" if rng.random() < 0.5 else "male",
                 "birthDate": f"{now.year - int(rng.integers(40, 80))}-01-01"},
                ob("2093-3", float(rng.normal(200, 35)), "mg/dL"), ob("2085-9", float(rng.normal(52, 12)), "mg/dL"),
                ob("8480-6", float(rng.normal(130, 18)), "mm[Hg]"),
                {"resourceType": "Observation", "id": f"{p}-smk", "status": "final", "effectiveDateTime": when,
                 "code": {"coding": [{"system": "http://loinc.org", "code": "72166-2"}]},
                 "valueCodeableConcept": {"coding": [{"system": "http://snomed.info/sct",
                                                      "code": "449868002" if rng.random() < 0.15 else "266919005"}]}}]
            s0 = time.perf_counter()
            a = service.evaluate(PatientRecord(resources, now))
            score_s += time.perf_counter() - s0
            if a.status == "ok":
                computed += 1
                batch.append(risk.build(a, p, now))
            if len(batch) == 100 or (i == args.patients - 1 and batch):
                tx = {"resourceType": "Bundle", "type": "transaction",
                      "entry": [{"resource": ra, "request": {"method": "POST", "url": "RiskAssessment"}} for ra in batch]}
                resp = client.post("/fhir", json=tx)
                assert resp.status_code == 200, resp.text[:300]
                batch = []
        total = time.perf_counter() - start
        out["batch"] = {"patients": args.patients, "risk_assessments_written": computed, "seconds": round(total, 2),
                        "patients_per_s": round(args.patients / total, 1),
                        "scoring_only_patients_per_s": round(args.patients / score_s, 1),
                        "how": "generated patients (seeded normal TC 200±35, HDL 52±12, SBP 130±18, age 40-79, "
                               "15% smokers); RiskAssessments written in transactions of 100"}
        print(out["batch"], flush=True)
    svc.close()
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"{dt.datetime.now(dt.UTC).strftime('%Y-%m-%dT%H%MZ')}-cds.json"
    path.write_text(json.dumps(out, indent=2) + "\n")
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
