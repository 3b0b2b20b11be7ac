"""Audit trail: one FHIR AuditEvent per interaction, appended to the hash chain (audit_store.py).

Reads are buffered and a background thread appends them in batches, so an audit row never costs
a commit on the read path. Writes and authentication failures must be on disk before their
response goes out: ``record`` then flushes synchronously (group commit: whoever holds the flush
lock writes everything queued so far, so concurrent writers share one transaction). ``close``
drains the buffer.
"""

from __future__ import annotations

import logging
import queue
import threading
from dataclasses import dataclass
from http import HTTPStatus
from typing import Any

import orjson

from medcloud.fhir.resource_meta import instant
from medcloud.security import audit_store
from medcloud.storage.sql.database import Database

log = logging.getLogger("medcloud.audit")

# AuditEvent.action codes (http://hl7.org/fhir/audit-event-action)
ACTION = {"read": "R", "vread": "R", "search": "E", "history": "R", "create": "C", "update": "U",
          "patch": "U", "delete": "D", "operation": "E", "capabilities": "R", "batch": "E", "transaction": "E",
          "search-type": "E", "search-system": "E", "search-compartment": "E", "history-instance": "R",
          "history-type": "R", "history-system": "R", "authenticate": "E"}
RESTFUL_INTERACTION = "http://hl7.org/fhir/restful-interaction"
# Records the edge writes for a failed authentication (401): always durable.
AUTHENTICATE = "authenticate"
# Pending records beyond this many (the database has been failing for a while) are dropped, loudly.
MAX_PENDING = 1_000_000


@dataclass(frozen=True, slots=True)
class AuditRecord:
    recorded: int  # microseconds
    interaction: str
    who: str
    client_id: str | None
    source_ip: str | None
    resource: str | None  # "Type/id" or "Type"
    patient: str | None
    status: int
    # ``record`` returns only once the row is committed (the router sets it for writes). Not part
    # of the AuditEvent.
    durable: bool = False


def must_persist(r: AuditRecord) -> bool:
    """Writes and authentication failures are committed before the response goes out."""
    return r.durable or r.interaction == AUTHENTICATE or r.status == 401


def audit_event(r: AuditRecord) -> dict[str, Any]:
    """The AuditEvent for one record (https://hl7.org/fhir/R4/auditevent.html, RESTful activity)."""
    outcome = "0" if r.status < 400 else ("4" if r.status < 500 else "8")
    requestor: dict[str, Any] = {"who": {"identifier": {"value": r.who}, "display": r.who}, "requestor": True}
    if r.source_ip:
        requestor["network"] = {"address": r.source_ip, "type": "2"}  # 2 = IP address
    agents = [requestor]
    if r.client_id:
        agents.append({
            "type": {"coding": [{"system": "http://dicom.nema.org/resources/ontology/DCM",
                                 "code": audit_store.APPLICATION, "display": "Application"}]},
            "who": {"identifier": {"value": r.client_id}, "display": r.client_id},
            "requestor": False,
        })
    ev: dict[str, Any] = {
        "resourceType": "AuditEvent",
        "type": {"system": "http://terminology.hl7.org/CodeSystem/audit-event-type", "code": "rest",
                 "display": "RESTful Operation"},
        "subtype": [{"system": RESTFUL_INTERACTION, "code": r.interaction}],
        "action": ACTION.get(r.interaction, "E"),
        "recorded": instant(r.recorded),
        "outcome": outcome,
        "outcomeDesc": f"HTTP {r.status} {_phrase(r.status)}".rstrip(),
        "agent": agents,
        "source": {"observer": {"display": "medcloud"},
                   "type": [{"system": "http://terminology.hl7.org/CodeSystem/security-source-type", "code": "4",
                             "display": "Application Server"}]},
    }
    entities: list[dict[str, Any]] = []
    if r.resource:
        rtype = r.resource.split("/", 1)[0]
        what = {"reference": r.resource} if "/" in r.resource else {"display": r.resource}
        entities.append({"what": what, "type": {"system": "http://hl7.org/fhir/resource-types", "code": rtype}})
    if r.patient:
        entities.append({"what": {"reference": f"Patient/{r.patient}"},
                         "role": {"system": "http://terminology.hl7.org/CodeSystem/object-role",
                                  "code": audit_store.PATIENT_ROLE, "display": "Patient"}})
    if entities:
        ev["entity"] = entities
    return ev


def record_columns(r: AuditRecord) -> dict[str, str | None]:
    """``audit_store.search_columns(audit_event(r))`` without building and walking the event (hot path)."""
    rtype, _, rid = (r.resource or "").partition("/")
    return audit_store.clip({
        "action": ACTION.get(r.interaction, "E"),
        "outcome": "0" if r.status < 400 else ("4" if r.status < 500 else "8"),
        "subtype": r.interaction or None,
        "who": r.who or None,
        "client_id": r.client_id or None,
        "patient": r.patient or None,
        "entity_type": rtype or None,
        "entity_id": rid or None,
        "address": r.source_ip or None,
    })


_PHRASES = {s.value: s.phrase for s in HTTPStatus}


def _phrase(status: int) -> str:
    return _PHRASES.get(status, "")


class _Pending:
    __slots__ = ("record", "done")

    def __init__(self, record: AuditRecord, done: threading.Event | None):
        self.record = record
        self.done = done


class AuditTrail:
    def __init__(self, db: Database, *, flush_every: float = 0.2, max_batch: int = 1000, key: bytes | None = None):
        self._db = db
        self._key = key
        # Unbounded: a record made inside an open SQLite write transaction (a transaction Bundle's
        # entries) must never wait for the database, or it would wait for itself.
        self._queue: queue.SimpleQueue[_Pending] = queue.SimpleQueue()
        self._retry: list[_Pending] = []  # a batch whose append failed; guarded by _flush_lock
        self._flush_every = flush_every
        self._max_batch = max_batch
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()
        self._flush_lock = threading.Lock()
        self._stop = threading.Event()

    def record(self, r: AuditRecord) -> None:
        """Queue one record; for a write or an authentication failure, return once it is committed."""
        self._ensure_started()
        if not must_persist(r):
            self._queue.put(_Pending(r, None))
            return
        done = threading.Event()
        self._queue.put(_Pending(r, done))
        with self._flush_lock:
            # Another thread may have written it while this one waited for the lock; if not, one
            # drain covers it (it was queued, or put back for retry, before the lock was taken).
            if not done.is_set() and not self._drain_locked():
                log.error("audit record of %s %s is not committed yet; it stays queued", r.interaction, r.resource)

    def flush(self) -> bool:
        """Append everything recorded so far; False when the database refused (the records stay queued)."""
        with self._flush_lock:
            return self._drain_locked()

    def pending(self) -> int:
        return self._queue.qsize() + len(self._retry)

    def _drain_locked(self) -> bool:
        # Only what is queued now: under a steady stream of requests the drain must still end.
        budget = len(self._retry) + self._queue.qsize()
        while budget > 0:
            batch, self._retry = self._retry[:self._max_batch], self._retry[self._max_batch:]
            while len(batch) < min(self._max_batch, budget):
                try:
                    batch.append(self._queue.get_nowait())
                except queue.Empty:
                    break
            if not batch:
                return True
            budget -= len(batch)
            if not self._write(batch):
                self._retry = batch + self._retry
                if len(self._retry) > MAX_PENDING:
                    dropped = len(self._retry) - MAX_PENDING
                    del self._retry[:dropped]
                    log.critical("dropped %d audit records: the audit log has been unwritable too long", dropped)
                return False
        return True

    def _write(self, batch: list[_Pending]) -> bool:
        events: list[audit_store.Item] = []
        for p in batch:
            try:
                events.append((p.record.recorded, orjson.dumps(audit_event(p.record)), record_columns(p.record)))
            except Exception:  # a malformed record can never be written: drop it, keep the others
                log.exception("dropping an audit record that cannot be serialised: %r", p.record)
        try:
            audit_store.append(self._db, events, key=self._key)
        except Exception:  # audit must never take the server down; the error is logged loudly and retried
            log.exception("could not append %d audit records", len(events))
            return False
        for p in batch:
            if p.done is not None:
                p.done.set()
        return True

    def _ensure_started(self) -> None:
        if self._thread is None:
            with self._lock:
                if self._thread is None:
                    self._thread = threading.Thread(target=self._run, name="medcloud-audit", daemon=True)
                    self._thread.start()

    def _run(self) -> None:
        # Poll on a timer instead of blocking in get(): a blocked consumer is woken by every
        # put(), which costs a thread switch per request on the hot read path.
        while not self._stop.wait(self._flush_every):
            try:
                if self.pending():
                    self.flush()
            except Exception:  # keep flushing whatever happened to one batch
                log.exception("audit flusher error")

    def close(self) -> None:
        """Stop the flusher and append everything still queued (a clean shutdown loses nothing)."""
        with self._lock:
            thread, self._thread = self._thread, None
        if thread is not None:
            self._stop.set()
            thread.join(timeout=30)
            self._stop.clear()
        if not self.flush():
            log.error("%d audit records could not be written at shutdown", self.pending())
