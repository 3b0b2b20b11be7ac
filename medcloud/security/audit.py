"""Audit trail: one AuditEvent-shaped record per interaction.

Records of writes are buffered like reads and flushed in batches by a background thread, so an
audit row never costs a commit on the read path. The security issue adds the hash chain and
makes the flush synchronous for writes.
"""

from __future__ import annotations

import logging
import queue
import threading
from dataclasses import dataclass
from typing import Any

import orjson
from sqlalchemy import insert

from medcloud.fhir.resource_meta import instant
from medcloud.storage.schema import audit_log
from medcloud.storage.sql.database import Database

log = logging.getLogger("medcloud.audit")

# AuditEvent.action codes (http://hl7.org/fhir/audit-event-action)
ACTION = {"read": "R", "vread": "R", "search": "E", "history": "R", "create": "C", "update": "U",
          "patch": "U", "delete": "D", "operation": "E", "capabilities": "R", "batch": "E", "transaction": "E"}


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


def audit_event(r: AuditRecord) -> dict[str, Any]:
    outcome = "0" if r.status < 400 else ("4" if r.status < 500 else "8")
    ev: dict[str, Any] = {
        "resourceType": "AuditEvent",
        "type": {"system": "http://terminology.hl7.org/CodeSystem/audit-event-type", "code": "rest"},
        "subtype": [{"system": "http://hl7.org/fhir/restful-interaction", "code": r.interaction}],
        "action": ACTION.get(r.interaction, "E"),
        "recorded": instant(r.recorded),
        "outcome": outcome,
        "agent": [{"who": {"display": r.who}, "requestor": True,
                   **({"altId": r.client_id} if r.client_id else {}),
                   **({"network": {"address": r.source_ip, "type": "2"}} if r.source_ip else {})}],
        "source": {"observer": {"display": "medcloud"}},
    }
    entities = []
    if r.resource:
        entities.append({"what": {"reference": r.resource} if "/" in r.resource else {"display": r.resource}})
    if r.patient:
        entities.append({"what": {"reference": f"Patient/{r.patient}"}, "role": {"code": "1"}})
    if entities:
        ev["entity"] = entities
    return ev


class AuditTrail:
    def __init__(self, db: Database, *, flush_every: float = 0.2, max_batch: int = 1000):
        self._db = db
        self._queue: queue.Queue[AuditRecord | None] = queue.Queue(maxsize=100_000)
        self._flush_every = flush_every
        self._max_batch = max_batch
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()
        self._stop = threading.Event()

    def record(self, r: AuditRecord) -> None:
        self._ensure_started()
        try:
            self._queue.put_nowait(r)
        except queue.Full:
            self._write([r])

    def _ensure_started(self) -> None:
        if self._thread is None:
            with self._lock:
                if self._thread is None:
                    self._thread = threading.Thread(target=self._run, name="medcloud-audit", daemon=True)
                    self._thread.start()

    def _run(self) -> None:
        # Poll on a timer instead of blocking in get(): a blocked consumer is woken by every
        # put(), which costs a thread switch per request on the hot read path.
        while True:
            stop = self._stop.wait(self._flush_every)
            while True:
                batch: list[AuditRecord] = []
                while len(batch) < self._max_batch:
                    try:
                        item = self._queue.get_nowait()
                    except queue.Empty:
                        break
                    if item is not None:
                        batch.append(item)
                if not batch:
                    break
                self._write(batch)
            if stop:
                return

    def _write(self, batch: list[AuditRecord]) -> None:
        rows = [
            {"recorded": r.recorded, "action": r.interaction[:16], "outcome": str(r.status)[:8],
             "content": orjson.dumps(audit_event(r))}
            for r in batch
        ]
        try:
            with self._db.write() as conn:
                conn.execute(insert(audit_log), rows)
        except Exception:  # audit must never take the server down; the error is logged loudly
            log.exception("could not write %d audit records", len(rows))

    def close(self) -> None:
        if self._thread is not None:
            self._stop.set()
            self._thread.join(timeout=10)
            self._thread = None
            self._stop.clear()
