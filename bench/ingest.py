"""Ingest: POST each Synthea transaction Bundle to [base] with N concurrent senders; resources/s.

Bundles go largest first so the last sender does not finish alone with a 16 MB bundle. The
server-assigned id of every entry is read back from the transaction-response (entry order matches
the request, http.html#transaction-response), so later steps address the data the server holds.

If the server has no transaction support yet, ``put_fallback`` loads the same data with one
``PUT [type]/[id]`` per resource (urn:uuid references rewritten to ``Type/id``) so the read and
search steps still have data; its rate is reported separately and is not the ingest figure.
"""

from __future__ import annotations

import re
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass, field

import httpx
import orjson
from _data import Bundle

FEATURE_MISSING = {404, 405, 501}
RETRYABLE = {409, 429, 503}
JSON = "application/fhir+json"


@dataclass
class Loaded:
    """fullUrl -> (resourceType, server id) for every entry the server accepted."""

    ids: dict[str, tuple[str, str]] = field(default_factory=dict)
    # Per type, resources the server said it created (Synthea repeats shared resources across bundles
    # under the same fullUrl, so this is more than the number of distinct fullUrls).
    created: Counter[str] = field(default_factory=Counter)

    def server_id(self, full_url: str) -> str | None:
        hit = self.ids.get(full_url)
        return hit[1] if hit else None


def _location_id(entry: dict) -> str | None:  # type: ignore[type-arg]
    loc = (entry.get("response") or {}).get("location") or ""
    parts = loc.split("?")[0].split("/")
    if "_history" in parts:
        parts = parts[: parts.index("_history")]
    if len(parts) >= 2:
        return parts[-1]
    return (entry.get("resource") or {}).get("id")


def transactions(
    base: str, bundles: list[Bundle], senders: int, timeout: float = 900.0
) -> tuple[dict, Loaded]:  # type: ignore[type-arg]
    loaded = Loaded()
    lock = threading.Lock()
    stop = threading.Event()
    local = threading.local()
    failures: list[dict[str, object]] = []
    latencies: list[float] = []
    created = 0
    retries = 0

    def client() -> httpx.Client:
        if not hasattr(local, "c"):
            local.c = httpx.Client(timeout=httpx.Timeout(timeout, connect=10))
        return local.c  # type: ignore[no-any-return]

    def send(b: Bundle) -> None:
        nonlocal created, retries
        if stop.is_set():
            return
        for attempt in range(3):
            t0 = time.perf_counter()
            try:
                r = client().post(
                    base,
                    content=b.raw,
                    headers={"Content-Type": JSON, "Accept": JSON, "Prefer": "return=minimal"},
                )
            except httpx.HTTPError as e:
                err: dict[str, object] = {"bundle": b.path.name, "error": f"{type(e).__name__}: {e}"}
                status = None
            else:
                status = r.status_code
                if r.status_code == 200:
                    _record(b, r.content, time.perf_counter() - t0)
                    return
                err = {"bundle": b.path.name, "status": r.status_code, "body": r.text[:300]}
                if r.status_code in FEATURE_MISSING or b'"not-supported"' in r.content[:2000]:
                    stop.set()
                    with lock:
                        failures.append(err)
                    return
            if attempt < 2 and (status is None or status in RETRYABLE):
                with lock:
                    retries += 1
                time.sleep(1 + attempt)
                continue
            with lock:
                failures.append(err)
            return

    def _record(b: Bundle, content: bytes, seconds: float) -> None:
        nonlocal created
        doc = orjson.loads(content)
        n = 0
        with lock:
            for (rtype, full_url), e in zip(b.entries, doc.get("entry", []), strict=False):
                status = str((e.get("response") or {}).get("status", ""))
                rid = _location_id(e)
                if status[:3] in ("200", "201") and rid:
                    loaded.ids[full_url] = (rtype, rid)
                    loaded.created[rtype] += 1
                    n += 1
            created += n
            latencies.append(seconds)

    order = sorted(bundles, key=lambda b: len(b.raw), reverse=True)
    t0 = time.perf_counter()
    with ThreadPoolExecutor(max_workers=senders, thread_name_prefix="sender") as pool:
        for fut in as_completed([pool.submit(send, b) for b in order]):
            fut.result()
    wall = time.perf_counter() - t0
    sent = sum(b.size for b in bundles)
    result: dict[str, object] = {
        "senders": senders,
        "bundles": len(bundles),
        "bundles_ok": len(latencies),
        "resources_sent": sent,
        "resources_created": created,
        "seconds": round(wall, 2),
        "resources_per_s": round(created / wall, 1) if wall > 0 else 0.0,
        "bundle_seconds_max": round(max(latencies), 2) if latencies else None,
        "retries": retries,
        "failures": failures[:10],
        "failure_count": len(failures),
    }
    if not latencies:
        first = failures[0] if failures else {}
        result["unavailable"] = f"unavailable: HTTP {first.get('status')} {str(first.get('body', ''))[:200]}"
    return result, loaded


_URN = re.compile(rb'"urn:uuid:([0-9a-fA-F-]{36})"')


def put_fallback(base: str, bundles: list[Bundle], concurrency: int = 8) -> tuple[dict, Loaded]:  # type: ignore[type-arg]
    """One PUT per resource, ids kept from the bundle (the Synthea uuid)."""
    loaded = Loaded()
    lock = threading.Lock()
    local = threading.local()
    failures: list[dict[str, object]] = []
    done = 0

    def client() -> httpx.Client:
        if not hasattr(local, "c"):
            local.c = httpx.Client(timeout=60)
        return local.c  # type: ignore[no-any-return]

    def put(rtype: str, full_url: str, res: dict) -> None:  # type: ignore[type-arg]
        nonlocal done
        rid = res.get("id") or full_url.rsplit(":", 1)[-1]
        res["id"] = rid
        try:
            r = client().put(
                f"{base}/{rtype}/{rid}",
                content=orjson.dumps(res),
                headers={"Content-Type": JSON, "Prefer": "return=minimal"},
            )
            ok, err = r.status_code in (200, 201), f"HTTP {r.status_code} {r.text[:200]}"
        except httpx.HTTPError as e:
            ok, err = False, f"{type(e).__name__}: {e}"
        with lock:
            if ok:
                loaded.ids[full_url] = (rtype, rid)
                loaded.created[rtype] += 1
                done += 1
            elif len(failures) < 10:
                failures.append({"resource": f"{rtype}/{rid}", "error": err})

    t0 = time.perf_counter()
    total = 0
    with ThreadPoolExecutor(max_workers=concurrency, thread_name_prefix="put") as pool:
        for b in bundles:
            types = {url.rsplit(":", 1)[-1].encode(): rtype.encode() for rtype, url in b.entries}
            raw = _URN.sub(
                lambda m, t=types: b'"' + t.get(m.group(1), b"?") + b"/" + m.group(1) + b'"', b.raw
            )
            doc = orjson.loads(raw)
            futs = [
                pool.submit(put, rtype, url, e["resource"])
                for (rtype, url), e in zip(b.entries, doc.get("entry", []), strict=False)
            ]
            total += len(futs)
            for f in futs:
                f.result()
    wall = time.perf_counter() - t0
    return {
        "method": f"PUT per resource, {concurrency} concurrent",
        "resources_sent": total,
        "resources_created": done,
        "seconds": round(wall, 2),
        "resources_per_s": round(done / wall, 1) if wall > 0 else 0.0,
        "failures": failures,
    }, loaded
