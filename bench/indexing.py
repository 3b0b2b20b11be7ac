"""Search-index extraction throughput, single-threaded, over a Synthea data set. Prints JSON.

Run: python bench/indexing.py [SYNTHEA_FHIR_DIR] [--rounds N] [--profile]
Bundle urn:uuid references are rewritten to Type/id first, as the transaction interaction would.
Plan compilation is excluded (one warm-up pass); DB writes are not part of this measurement.
"""

from __future__ import annotations

import argparse
import cProfile
import json
import platform
import pstats
import re
import sys
import time
from collections import Counter
from functools import partial
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from medcloud.fhir.indexing import Indexer  # noqa: E402

_URN_UUID = re.compile(r'"(urn:uuid:[^"]+)"')


def _relative(ids: dict[str, str], m: re.Match[str]) -> str:
    return json.dumps(ids.get(m.group(1), m.group(1)))


def load(directory: Path) -> list[dict[str, Any]]:
    resources: list[dict[str, Any]] = []
    for f in sorted(directory.glob("*.json")):
        bundle = json.loads(f.read_text())
        ids = {
            e["fullUrl"]: f"{e['resource']['resourceType']}/{e['resource']['id']}" for e in bundle["entry"]
        }
        text = json.dumps([e["resource"] for e in bundle["entry"]])
        text = _URN_UUID.sub(partial(_relative, ids), text)
        resources.extend(json.loads(text))
    return resources


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("directory", nargs="?", default="/tmp/synthea/p5/fhir")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--profile", action="store_true", help="print the top of a cProfile to stderr")
    args = ap.parse_args()
    resources = load(Path(args.directory))
    indexer = Indexer()
    t0 = time.perf_counter()
    rows: Counter[str] = Counter()
    for r in resources:
        e = indexer.extract(r)
        for table in ("string", "token", "date", "number", "quantity", "reference", "uri", "compartments"):
            rows[table] += len(getattr(e, table))
    warmup = time.perf_counter() - t0
    if args.profile:
        prof = cProfile.Profile()
        prof.enable()
        for r in resources:
            indexer.extract(r)
        prof.disable()
        pstats.Stats(prof, stream=sys.stderr).sort_stats("tottime").print_stats(25)
    # CPU time as well as wall time: the machine is shared, and wall time counts other processes.
    best = best_cpu = float("inf")
    for _ in range(args.rounds):
        t0, c0 = time.perf_counter(), time.process_time()
        for r in resources:
            indexer.extract(r)
        best = min(best, time.perf_counter() - t0)
        best_cpu = min(best_cpu, time.process_time() - c0)
    by_type = Counter(r["resourceType"] for r in resources)
    print(
        json.dumps(
            {
                "benchmark": "indexing.extract",
                "python": platform.python_version(),
                "resources": len(resources),
                "rounds": args.rounds,
                "best_seconds": round(best, 4),
                "resources_per_second": round(len(resources) / best),
                "best_cpu_seconds": round(best_cpu, 4),
                "resources_per_cpu_second": round(len(resources) / best_cpu),
                "first_pass_seconds_including_plan_compilation": round(warmup, 4),
                "rows": dict(rows),
                "resource_types": dict(by_type.most_common()),
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
