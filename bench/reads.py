"""Read by id under load: wrk, 16 connections, rotating through ~1,000 ids of mixed types.

wrk (C, epoll) rather than a Python client: on 2 cores a Python load generator would measure
itself. The Lua script reads the id list in ``init`` and each wrk thread starts at a different
offset; ``done`` prints one JSON line with the percentiles so nothing depends on wrk's text layout.
"""

from __future__ import annotations

import json
import random
import shutil
import subprocess
from pathlib import Path

from ingest import Loaded

LUA = r"""
local paths = {}
local counter = 0
local threads = {}

function setup(thread)
  counter = counter + 1
  thread:set("offset", counter * 397)
  table.insert(threads, thread)
end

function init(args)
  for line in io.lines(args[1]) do paths[#paths + 1] = line end
  i = offset or 0
end

function request()
  i = i % #paths + 1
  return wrk.format("GET", paths[i], {["Accept"] = "application/fhir+json"})
end

function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    '{"requests": %d, "duration_us": %d, "bytes": %d, "p50_us": %d, "p90_us": %d, "p99_us": %d, ' ..
    '"max_us": %d, "mean_us": %.1f, "err_connect": %d, "err_read": %d, "err_write": %d, ' ..
    '"err_status": %d, "err_timeout": %d}\n',
    summary.requests, summary.duration, summary.bytes, latency:percentile(50), latency:percentile(90),
    latency:percentile(99), latency.max, latency.mean, e.connect, e.read, e.write, e.status, e.timeout))
end
"""


def pick_ids(loaded: Loaded, n: int = 1000, seed: int = 7) -> list[str]:
    """``n`` random ``Type/id`` paths across all loaded types (proportional to their counts)."""
    pool = sorted(f"{rtype}/{rid}" for rtype, rid in loaded.ids.values())
    rng = random.Random(seed)
    return rng.sample(pool, min(n, len(pool)))


def wrk_available() -> str | None:
    return shutil.which("wrk")


def run_wrk(
    base: str, paths: list[str], work: Path, *, seconds: int, connections: int = 16, threads: int = 2
) -> dict:  # type: ignore[type-arg]
    """Returns req/s, p50/p90/p99 in ms and error counts; raises RuntimeError if wrk fails."""
    exe = wrk_available()
    if exe is None:
        raise RuntimeError("wrk is not installed (Debian package 'wrk')")
    prefix = base.split("://", 1)[1].split("/", 1)[1]  # "fhir"
    ids_file = work / "read_paths.txt"
    ids_file.write_text("".join(f"/{prefix}/{p}\n" for p in paths))
    script = work / "read.lua"
    script.write_text(LUA)
    origin = base.split("/fhir")[0]
    cmd = [
        exe,
        f"-t{threads}",
        f"-c{connections}",
        f"-d{seconds}s",
        "--timeout",
        "10s",
        "-s",
        str(script),
        origin,
        "--",
        str(ids_file),
    ]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=seconds + 60)
    line = next((x for x in out.stdout.splitlines() if x.startswith("{")), None)
    if out.returncode != 0 or line is None:
        raise RuntimeError(f"wrk failed ({out.returncode}): {out.stderr[-500:] or out.stdout[-500:]}")
    raw = json.loads(line)
    secs = raw["duration_us"] / 1e6
    errors = {k[4:]: v for k, v in raw.items() if k.startswith("err_") and v}
    return {
        "tool": "wrk",
        "connections": connections,
        "threads": threads,
        "seconds": round(secs, 1),
        "requests": raw["requests"],
        "req_per_s": round(raw["requests"] / secs, 1),
        "p50_ms": raw["p50_us"] / 1000,
        "p90_ms": raw["p90_us"] / 1000,
        "p99_ms": raw["p99_us"] / 1000,
        "max_ms": raw["max_us"] / 1000,
        "errors": errors,  # 'status' counts non-2xx/3xx answers
        "distinct_ids": len(paths),
        "command": " ".join(cmd),
    }


def check_reads(base: str, paths: list[str], sample: int = 20) -> str | None:
    """A few reads with a plain client first: a 404 here means the id mapping is wrong, not slow."""
    import httpx

    with httpx.Client(timeout=10) as c:
        for p in paths[:sample]:
            r = c.get(f"{base}/{p}", headers={"Accept": "application/fhir+json"})
            if r.status_code != 200:
                return f"GET {p}: HTTP {r.status_code} {r.text[:200]}"
    return None
