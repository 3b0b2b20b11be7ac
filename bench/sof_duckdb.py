"""Flatten throughput of SQL-on-FHIR views on DuckDB over Synthea data (not a test; writes JSON).

    .venv/bin/python bench/sof_duckdb.py --bundles /tmp/synthea/p50/fhir --work /tmp/sof_bench --out bench/sof_duckdb.json

Synthea bundles are first split into one NDJSON file per resource type (bulk-export layout), with
``urn:uuid:`` references rewritten to ``Type/id`` as a FHIR server does on transaction ingest.
"""

from __future__ import annotations

import argparse
import json
import platform
import re
import time
from pathlib import Path

import duckdb

from medcloud.analytics import DuckDBEngine, NdjsonSource, ParquetSource, ndjson_to_parquet

_REFERENCE = re.compile(r'"reference":"(urn:uuid:[^"]+)"')

VIEWS: dict[str, dict] = {
    "patient_demographics": {
        "resource": "Patient",
        "select": [
            {
                "column": [
                    {"name": "id", "path": "getResourceKey()"},
                    {"name": "gender", "path": "gender"},
                    {"name": "birth_date", "path": "birthDate"},
                    {"name": "family", "path": "name.where(use = 'official').family.first()"},
                    {"name": "given", "path": "name.where(use = 'official').given.join(' ')"},
                    {
                        "name": "race",
                        "path": "extension('http://hl7.org/fhir/us/core/StructureDefinition/us-core-race')"
                        ".extension('ombCategory').value.ofType(Coding).code.first()",
                    },
                    {"name": "deceased", "path": "deceased.ofType(dateTime).exists()", "type": "boolean"},
                ]
            }
        ],
    },
    "observation_components": {
        "resource": "Observation",
        "select": [
            {
                "column": [
                    {"name": "id", "path": "getResourceKey()"},
                    {"name": "patient_id", "path": "subject.getReferenceKey(Patient)"},
                    {"name": "effective", "path": "effective.ofType(dateTime)"},
                ]
            },
            {
                "forEach": "code.coding",
                "column": [
                    {"name": "system", "path": "system"},
                    {"name": "code", "path": "code"},
                ],
            },
            {
                "forEachOrNull": "value.ofType(Quantity)",
                "column": [
                    {"name": "value", "path": "value", "type": "decimal"},
                    {"name": "unit", "path": "unit"},
                ],
            },
        ],
    },
    "conditions": {
        "resource": "Condition",
        "select": [
            {
                "column": [
                    {"name": "id", "path": "getResourceKey()"},
                    {"name": "patient_id", "path": "subject.getReferenceKey(Patient)"},
                    {"name": "code", "path": "code.coding.first().code"},
                    {"name": "onset", "path": "onset.ofType(dateTime)"},
                    {"name": "abatement", "path": "abatement.ofType(dateTime)"},
                ]
            }
        ],
    },
    "encounters": {
        "resource": "Encounter",
        "select": [
            {
                "column": [
                    {"name": "id", "path": "getResourceKey()"},
                    {"name": "patient_id", "path": "subject.getReferenceKey(Patient)"},
                    {"name": "class", "path": "class.code"},
                    {"name": "start", "path": "period.start"},
                    {"name": "end", "path": "period.end"},
                    {"name": "start_low", "path": "period.start.lowBoundary()"},
                ]
            }
        ],
    },
}


def bundles_to_ndjson(bundles: Path, out: Path, copies: int = 1) -> dict[str, int]:
    """Split bundles into NDJSON per type; ``copies`` > 1 repeats the data with suffixed ids."""
    out.mkdir(parents=True, exist_ok=True)
    handles: dict[str, object] = {}
    counts: dict[str, int] = {}
    try:
        for path in sorted(bundles.glob("*.json")):
            bundle = json.loads(path.read_text(encoding="utf-8"))
            ids = {
                e["fullUrl"]: f"{e['resource']['resourceType']}/{e['resource']['id']}"
                for e in bundle.get("entry", [])
                if "fullUrl" in e
            }
            for entry in bundle.get("entry", []):
                text = _REFERENCE.sub(
                    lambda m, ids=ids: f'"reference":"{ids.get(m.group(1), m.group(1))}"',
                    json.dumps(entry["resource"], separators=(",", ":")),
                )
                rtype = entry["resource"]["resourceType"]
                if rtype not in handles:
                    handles[rtype] = open(out / f"{rtype}.ndjson", "w", encoding="utf-8")  # noqa: SIM115
                for k in range(copies):
                    copy = text if k == 0 else _suffix_ids(text, entry["resource"]["id"], f"-c{k}")
                    handles[rtype].write(copy + "\n")  # type: ignore[attr-defined]
                counts[rtype] = counts.get(rtype, 0) + copies
    finally:
        for h in handles.values():
            h.close()  # type: ignore[attr-defined]
    return counts


_LITERAL_REFERENCE = re.compile(r'"reference":"([A-Z][A-Za-z]+/[^"/]+)"')


def _suffix_ids(text: str, resource_id: str, suffix: str) -> str:
    text = text.replace(f'"id":"{resource_id}"', f'"id":"{resource_id}{suffix}"', 1)
    return _LITERAL_REFERENCE.sub(lambda m: f'"reference":"{m.group(1)}{suffix}"', text)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--bundles", type=Path, default=Path("/tmp/synthea/p50/fhir"))
    ap.add_argument("--work", type=Path, default=Path("/tmp/sof_bench"))
    ap.add_argument("--out", type=Path, default=None)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument(
        "--copies", type=int, default=1, help="repeat the data N times (suffixed ids) to scale up"
    )
    args = ap.parse_args()

    ndjson = args.work / "ndjson"
    if not ndjson.exists():
        counts = bundles_to_ndjson(args.bundles, ndjson, args.copies)
    else:
        counts = {f.stem: sum(1 for _ in f.open()) for f in ndjson.glob("*.ndjson")}
    parquet = args.work / "parquet"
    if not parquet.exists():
        ndjson_to_parquet(ndjson, parquet)

    results = []
    for source_name, source in (("ndjson", NdjsonSource((ndjson,))), ("parquet", ParquetSource((parquet,)))):
        con = duckdb.connect(":memory:", config={"threads": args.threads})
        with DuckDBEngine(con) as engine:
            for name, view in VIEWS.items():
                out = args.work / "out" / f"{name}.{source_name}.parquet"
                start = time.perf_counter()
                rows = engine.write(view, source, out, "parquet").rows
                seconds = time.perf_counter() - start
                resources = counts.get(view["resource"], 0)
                results.append(
                    {
                        "view": name,
                        "source": source_name,
                        "resources": resources,
                        "rows": rows,
                        "seconds": round(seconds, 3),
                        "resources_per_s": round(resources / seconds),
                        "rows_per_s": round(rows / seconds),
                    }
                )
                print(json.dumps(results[-1]))
    report = {
        "engine": "duckdb",
        "duckdb": duckdb.__version__,
        "threads": args.threads,
        "machine": platform.machine(),
        "python": platform.python_version(),
        "total_resources": sum(counts.values()),
        "copies": args.copies,
        "results": results,
    }
    if args.out:
        args.out.write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
