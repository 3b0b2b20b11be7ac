"""Throughput of medcloud.fhir.validation.validate_resource over Synthea resources (the accept path).

Run: python bench/validation.py [DIR_WITH_SYNTHEA_BUNDLES] [--repeat N]
Prints one JSON object: resources/s and µs per resource, overall and per resource type. Validators
are compiled (and the first call per type made) before timing, so this measures the steady state.
"best_*" figures take, per resource, the least process CPU time over the repeats: on a shared machine
other jobs inflate the wall-clock rate, much less the best-of-N CPU time.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections import defaultdict
from pathlib import Path

from medcloud.fhir.validation import validate_resource


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("directory", nargs="?", default="/tmp/synthea/p5/fhir")
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    resources = [
        entry["resource"]
        for path in sorted(Path(args.directory).glob("*.json"))
        for entry in json.loads(path.read_bytes()).get("entry", [])
    ]
    if not resources:
        sys.exit(f"no Synthea bundles in {args.directory}")
    invalid = sum(1 for r in resources if validate_resource(r))  # also warms every validator
    best = [float("inf")] * len(resources)  # per resource, the fastest of the repeats
    cpu = time.process_time
    start, start_cpu = time.perf_counter(), cpu()
    for _ in range(args.repeat):
        for i, resource in enumerate(resources):
            t0 = cpu()
            validate_resource(resource)
            best[i] = min(best[i], cpu() - t0)
    elapsed, elapsed_cpu = time.perf_counter() - start, cpu() - start_cpu
    per_type: dict[str, list[float]] = defaultdict(list)
    for resource, seconds in zip(resources, best, strict=True):
        per_type[resource["resourceType"]].append(seconds)
    count = len(resources) * args.repeat
    result = {
        "benchmark": "validation.accept_path",
        "resources": len(resources),
        "invalid": invalid,
        "repeat": args.repeat,
        "resources_per_s": round(count / elapsed),
        "us_per_resource": round(elapsed / count * 1e6, 1),
        "cpu_us_per_resource": round(elapsed_cpu / count * 1e6, 1),
        "best_cpu_us_per_resource": round(sum(best) / len(best) * 1e6, 1),
        "best_cpu_us_per_resource_by_type": {
            rtype: round(sum(times) / len(times) * 1e6, 1)
            for rtype, times in sorted(per_type.items(), key=lambda kv: -len(kv[1]))
        },
    }
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
