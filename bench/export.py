"""A full system Bulk Data ``$export``: kick-off, poll to completion, download and count NDJSON lines.

Follows the Bulk Data Access IG (https://hl7.org/fhir/uv/bulkdata/export.html): kick-off with
``Prefer: respond-async`` answers 202 + ``Content-Location``; polling that URL answers 202 while in
progress and 200 with a manifest (``output[].url``) when complete.
"""

from __future__ import annotations

import contextlib
import time
from collections import Counter

import httpx


def run_export(base: str, timeout: float = 1200.0, poll: float = 0.5) -> dict:  # type: ignore[type-arg]
    headers = {"Accept": "application/fhir+json", "Prefer": "respond-async"}
    with httpx.Client(timeout=120) as c:
        t0 = time.perf_counter()
        r = c.get(f"{base}/$export", headers=headers)
        if r.status_code != 202:
            return {"result": f"unavailable: kick-off HTTP {r.status_code} {r.text[:240]}"}
        status_url = r.headers.get("content-location")
        if not status_url:
            return {"result": "failed: 202 without Content-Location"}
        kickoff_s = time.perf_counter() - t0
        polls = 0
        deadline = time.monotonic() + timeout
        while True:
            s = c.get(status_url, headers={"Accept": "application/json"})
            polls += 1
            if s.status_code == 200:
                break
            if s.status_code != 202:
                return {"result": f"failed: status poll HTTP {s.status_code} {s.text[:240]}", "polls": polls}
            if time.monotonic() > deadline:
                return {"result": f"failed: not complete after {timeout:.0f}s", "polls": polls}
            time.sleep(poll)
        complete_s = time.perf_counter() - t0
        manifest = s.json()
        lines: Counter[str] = Counter()
        nbytes = 0
        t1 = time.perf_counter()
        for out in manifest.get("output", []):
            with c.stream("GET", out["url"], headers={"Accept": "application/fhir+ndjson"}) as f:
                if f.status_code != 200:
                    return {"result": f"failed: download HTTP {f.status_code} for {out['url']}"}
                for chunk in f.iter_bytes():
                    nbytes += len(chunk)
                    lines[out.get("type", "?")] += chunk.count(b"\n")
        download_s = time.perf_counter() - t1
        with contextlib.suppress(httpx.HTTPError):
            c.delete(status_url)  # let the server delete the files; not timed
    return {
        "kickoff_ms": round(kickoff_s * 1000, 1),
        "seconds_to_complete": round(complete_s, 2),
        "download_seconds": round(download_s, 2),
        "total_seconds": round(complete_s + download_s, 2),
        "polls": polls,
        "files": len(manifest.get("output", [])),
        "ndjson_lines": sum(lines.values()),
        "mib": round(nbytes / 2**20, 1),
        "lines_by_type": dict(lines.most_common()),
        "errors_in_manifest": len(manifest.get("error", [])),
    }
