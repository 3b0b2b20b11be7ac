"""Load FHIR data from files: transaction/batch Bundles (.json) and NDJSON (.ndjson), or directories.

Each file becomes one or more Bundles sent through a ``Sender``: in-process through the router
(``InProcess``) or over HTTP to a FHIR server (``Remote``). NDJSON lines are grouped into batch
Bundles of ``batch_size`` entries, each a ``PUT Type/id`` when the resource has an id and a
``POST Type`` otherwise, so every line gets its own outcome. Problems are collected per file
with the line or entry they concern; the other files (and the other entries) go on.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import orjson

FHIR_JSON = "application/fhir+json"
SUFFIXES = (".json", ".ndjson")


@dataclass(frozen=True, slots=True)
class LoadError:
    file: str
    where: str  # "line 12", "entry 3", "lines 1-500", or "file"
    message: str

    def __str__(self) -> str:
        return f"{self.file}: {self.where}: {self.message}"


@dataclass
class LoadSummary:
    files: int = 0
    resources: int = 0  # entries stored successfully
    errors: list[LoadError] = field(default_factory=list)

    @property
    def failed_files(self) -> list[str]:
        return sorted({e.file for e in self.errors})


@dataclass(frozen=True, slots=True)
class Unit:
    """One Bundle to send, with where each entry came from (for error messages)."""

    file: str
    bundle: dict[str, Any]
    origins: tuple[str, ...]  # per entry: "line 7" / "entry 3"
    size: int  # bytes of the file this unit accounts for (progress)


class Sender(Protocol):
    def send(self, bundle: dict[str, Any]) -> tuple[int, Any]:
        """POST a Bundle to the FHIR base; returns (HTTP status, parsed response body or None)."""


class InProcess:
    """Send Bundles through the router of an in-process FhirContext (no HTTP)."""

    def __init__(self, ctx: Any):
        self.ctx = ctx

    def send(self, bundle: dict[str, Any]) -> tuple[int, Any]:
        from medcloud.fhir import router
        from medcloud.fhir.exchange import FhirRequest

        resp = router.handle(self.ctx, FhirRequest("POST", "", body=bundle, content_type=FHIR_JSON,
                                                   headers={"content-type": FHIR_JSON}))
        body = resp.resource if resp.resource is not None else (orjson.loads(resp.raw) if resp.raw else None)
        if body is not None:
            body = orjson.loads(orjson.dumps(body))  # embedded orjson.Fragments -> plain data
        return resp.status, body


class Remote:
    """Send Bundles to a FHIR server's base URL over HTTP."""

    def __init__(self, base_url: str, *, timeout: float = 600.0, client: Any = None):
        import httpx

        self.base_url = base_url.rstrip("/")
        self.client = client or httpx.Client(timeout=timeout)

    def send(self, bundle: dict[str, Any]) -> tuple[int, Any]:
        import httpx

        try:
            r = self.client.post(self.base_url, content=orjson.dumps(bundle),
                                 headers={"Content-Type": FHIR_JSON, "Accept": FHIR_JSON})
        except httpx.HTTPError as e:
            return 0, {"resourceType": "OperationOutcome", "issue": [{"diagnostics": f"HTTP error: {e}"}]}
        try:
            body = r.json() if r.content else None
        except ValueError:
            body = None
        return r.status_code, body

    def close(self) -> None:
        self.client.close()


def expand(paths: Iterable[Path]) -> list[Path]:
    """Files to load: the given files, and *.json / *.ndjson under given directories (sorted)."""
    out: list[Path] = []
    for p in paths:
        if p.is_dir():
            out += sorted(f for f in p.rglob("*") if f.is_file() and f.suffix.lower() in SUFFIXES)
        else:
            out.append(p)
    return out


def units(path: Path, errors: list[LoadError], *, batch_size: int = 500) -> Iterator[Unit]:
    """The Bundles to send for one file; unreadable parts are appended to ``errors``."""
    name = str(path)
    try:
        size = path.stat().st_size
    except OSError as e:
        errors.append(LoadError(name, "file", f"cannot read: {e.strerror or e}"))
        return
    if path.suffix.lower() == ".ndjson":
        yield from _ndjson_units(path, errors, batch_size, size)
        return
    try:
        data = orjson.loads(path.read_bytes())
    except (OSError, orjson.JSONDecodeError) as e:
        errors.append(LoadError(name, "file", f"not valid JSON: {e}"))
        return
    if not isinstance(data, dict) or not isinstance(data.get("resourceType"), str):
        errors.append(LoadError(name, "file", "not a FHIR resource"))
        return
    if data["resourceType"] == "Bundle" and data.get("type") in ("transaction", "batch"):
        n = len(data.get("entry") or [])
        yield Unit(name, data, tuple(f"entry {i + 1}" for i in range(n)), size)
    elif data["resourceType"] == "Bundle":
        errors.append(LoadError(name, "file", f"a Bundle of type {data.get('type')!r}; expected transaction or batch"))
    else:
        yield Unit(name, _batch([data]), ("resource",), size)


def _ndjson_units(path: Path, errors: list[LoadError], batch_size: int, size: int) -> Iterator[Unit]:
    name = str(path)
    pending: list[dict[str, Any]] = []
    origins: list[str] = []
    consumed = 0
    try:
        with open(path, "rb") as fh:
            for lineno, line in enumerate(fh, 1):
                consumed += len(line)
                if not line.strip():
                    continue
                try:
                    resource = orjson.loads(line)
                except orjson.JSONDecodeError as e:
                    errors.append(LoadError(name, f"line {lineno}", f"not valid JSON: {e}"))
                    continue
                if not isinstance(resource, dict) or not isinstance(resource.get("resourceType"), str):
                    errors.append(LoadError(name, f"line {lineno}", "not a FHIR resource"))
                    continue
                pending.append(resource)
                origins.append(f"line {lineno}")
                if len(pending) >= batch_size:
                    yield Unit(name, _batch(pending), tuple(origins), consumed)
                    pending, origins, consumed = [], [], 0
    except OSError as e:
        errors.append(LoadError(name, "file", f"cannot read: {e.strerror or e}"))
    if pending or consumed:
        yield Unit(name, _batch(pending), tuple(origins), consumed)


def _batch(resources: list[dict[str, Any]]) -> dict[str, Any]:
    entries = []
    for r in resources:
        rid = r.get("id")
        if isinstance(rid, str) and rid:
            request = {"method": "PUT", "url": f"{r['resourceType']}/{rid}"}
        else:
            request = {"method": "POST", "url": r["resourceType"]}
        entries.append({"resource": r, "request": request})
    return {"resourceType": "Bundle", "type": "batch", "entry": entries}


def outcome(unit: Unit, status: int, body: Any) -> tuple[int, list[LoadError]]:
    """How many entries of ``unit`` were stored, and the errors, from the server's answer."""
    n = len(unit.origins)
    if n == 0:
        return 0, []
    if status >= 300 or status == 0:
        where = unit.origins[0] if n == 1 else f"{unit.origins[0]}..{unit.origins[-1]}"
        if unit.bundle.get("type") == "transaction":
            where = "bundle"
        return 0, [LoadError(unit.file, where, f"HTTP {status}: {_diagnostics(body)}")]
    entries = (body or {}).get("entry") or []
    stored = 0
    errors: list[LoadError] = []
    for i, e in enumerate(entries):
        resp = e.get("response") or {}
        code = str(resp.get("status", "")).split(" ")[0]
        if code.startswith("2"):
            stored += 1
        else:
            where = unit.origins[i] if i < n else f"entry {i + 1}"
            errors.append(LoadError(unit.file, where, f"{code or 'failed'}: {_diagnostics(resp.get('outcome'))}"))
    if not entries:
        stored = n
    return stored, errors


def _diagnostics(body: Any) -> str:
    if isinstance(body, dict) and body.get("resourceType") == "OperationOutcome":
        parts = []
        for issue in body.get("issue") or []:
            text = issue.get("diagnostics") or (issue.get("details") or {}).get("text") or issue.get("code", "")
            expr = issue.get("expression")
            parts.append(f"{text} ({', '.join(expr)})" if expr else str(text))
        return "; ".join(parts) or "no details"
    return "no details"


def load(paths: Iterable[Path], sender: Sender, *, concurrency: int = 2, batch_size: int = 500,
         on_progress: Callable[[int, int], None] | None = None) -> LoadSummary:
    """Send every file's Bundles with ``concurrency`` in flight; ``on_progress(bytes, resources)``."""
    summary = LoadSummary()
    lock = threading.Lock()
    files = expand(paths)
    summary.files = len(files)

    def finish(unit: Unit, fut: Future[tuple[int, Any]]) -> None:
        try:
            status, body = fut.result()
            stored, errs = outcome(unit, status, body)
        except Exception as e:  # noqa: BLE001 - reported per file, the rest continues
            stored, errs = 0, [LoadError(unit.file, "bundle", f"{type(e).__name__}: {e}")]
        with lock:
            summary.resources += stored
            summary.errors.extend(errs)
        if on_progress:
            on_progress(unit.size, stored)

    in_flight: dict[Future[tuple[int, Any]], Unit] = {}
    with ThreadPoolExecutor(max_workers=max(1, concurrency)) as pool:
        for path in files:
            file_errors: list[LoadError] = []
            for unit in units(path, file_errors, batch_size=batch_size):
                if not unit.origins:
                    if on_progress:
                        on_progress(unit.size, 0)
                    continue
                while len(in_flight) >= 2 * max(1, concurrency):  # bounded memory: few Bundles at a time
                    done, _ = wait(in_flight, return_when=FIRST_COMPLETED)
                    for f in done:
                        finish(in_flight.pop(f), f)
                in_flight[pool.submit(sender.send, unit.bundle)] = unit
            with lock:
                summary.errors.extend(file_errors)
        done, _ = wait(in_flight)
        for f in done:
            finish(in_flight.pop(f), f)
    return summary
