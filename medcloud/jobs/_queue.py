"""The durable job queue on the ``jobs`` table: enqueue, claim with a lease, checkpoint, finish.

A job is claimed by taking a time-limited lease in one write transaction. On PostgreSQL the
candidate row is read with ``SELECT ... FOR UPDATE SKIP LOCKED`` so concurrent workers never wait
on each other; on SQLite the same statement renders without the locking clause and the write
transaction (``BEGIN IMMEDIATE``) already admits one claimer at a time. A worker that dies stops
renewing its lease; once the lease has run out any worker may claim the job again and resume from
the last checkpoint in ``state``. Failures are retried with exponential backoff (the job is queued
again with ``lease_until`` in the future, which holds it back until then) up to ``max_attempts``.

Times are microseconds since the epoch (the ``FhirContext.clock`` unit).
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import orjson
from sqlalchemy import and_, delete, insert, or_, select, update

from medcloud.storage.schema import jobs
from medcloud.storage.sql.database import Database

QUEUED, RUNNING, COMPLETED, FAILED, CANCELLED = "queued", "running", "completed", "failed", "cancelled"
FINISHED = frozenset({COMPLETED, FAILED, CANCELLED})

SECOND = 1_000_000


@dataclass(frozen=True, slots=True)
class Job:
    id: str
    kind: str
    status: str
    request: dict[str, Any]
    state: dict[str, Any] | None
    result: dict[str, Any] | None
    error: str | None
    owner: str | None
    attempts: int
    created: int
    updated: int
    lease_until: int | None
    lease_owner: str | None


class LeaseLost(Exception):
    """The job was cancelled, or its lease expired and another worker took it: stop working on it."""


def _load(raw: bytes | None) -> Any:
    return orjson.loads(raw) if raw is not None else None


def _job(row: Any) -> Job:
    m = row._mapping
    return Job(
        id=m["id"], kind=m["kind"], status=m["status"], request=_load(m["request"]), state=_load(m["state"]),
        result=_load(m["result"]), error=m["error"], owner=m["owner"], attempts=m["attempts"],
        created=m["created"], updated=m["updated"], lease_until=m["lease_until"], lease_owner=m["lease_owner"],
    )


def _default_clock() -> int:
    import time

    return time.time_ns() // 1000


class JobQueue:
    """Stateless apart from its settings: any number of instances (and processes) may share one table."""

    def __init__(
        self,
        db: Database,
        *,
        clock: Callable[[], int] = _default_clock,
        lease_seconds: float = 60.0,
        max_attempts: int = 5,
        backoff_seconds: float = 2.0,
    ):
        self.db = db
        self.clock = clock
        self.lease_us = int(lease_seconds * SECOND)
        self.max_attempts = max_attempts
        self.backoff_us = int(backoff_seconds * SECOND)

    def enqueue(self, kind: str, request: dict[str, Any], *, owner: str | None = None,
                job_id: str | None = None) -> str:
        jid = job_id or uuid.uuid4().hex
        now = self.clock()
        with self.db.write() as conn:
            conn.execute(insert(jobs).values(
                id=jid, kind=kind, status=QUEUED, request=orjson.dumps(request), state=None, result=None,
                error=None, owner=owner, attempts=0, created=now, updated=now, lease_until=None, lease_owner=None,
            ))
        return jid

    def get(self, job_id: str) -> Job | None:
        with self.db.read() as conn:
            row = conn.execute(select(jobs).where(jobs.c.id == job_id)).first()
        return _job(row) if row else None

    def claim(self, worker: str, kinds: Iterable[str]) -> Job | None:
        """Lease the oldest runnable job of ``kinds`` to ``worker``, or return None."""
        kinds = list(kinds)
        now = self.clock()
        runnable = or_(
            and_(jobs.c.status == QUEUED, or_(jobs.c.lease_until.is_(None), jobs.c.lease_until <= now)),
            and_(jobs.c.status == RUNNING, jobs.c.lease_until < now),  # its worker stopped renewing
        )
        candidate = select(jobs.c.id).where(jobs.c.kind.in_(kinds), runnable).limit(1)
        with self.db.read() as conn:  # idle polls must not take SQLite's write lock
            if conn.execute(candidate).first() is None:
                return None
        with self.db.write() as conn:
            row = conn.execute(
                select(jobs.c.id, jobs.c.attempts)
                .where(jobs.c.kind.in_(kinds), runnable)
                .order_by(jobs.c.created, jobs.c.id)
                .limit(1)
                .with_for_update(skip_locked=True)
            ).first()
            if row is None:
                return None
            conn.execute(
                update(jobs).where(jobs.c.id == row.id).values(
                    status=RUNNING, lease_owner=worker, lease_until=now + self.lease_us,
                    attempts=row.attempts + 1, updated=now,
                )
            )
            claimed = conn.execute(select(jobs).where(jobs.c.id == row.id)).first()
        return _job(claimed)

    def heartbeat(self, job: Job, worker: str, state: dict[str, Any] | None = None) -> None:
        """Renew the lease (and save a checkpoint); raises LeaseLost if the job is no longer ours."""
        now = self.clock()
        values: dict[str, Any] = {"lease_until": now + self.lease_us, "updated": now}
        if state is not None:
            values["state"] = orjson.dumps(state)
        with self.db.write() as conn:
            n = conn.execute(
                update(jobs)
                .where(jobs.c.id == job.id, jobs.c.status == RUNNING, jobs.c.lease_owner == worker)
                .values(**values)
            ).rowcount
        if n != 1:
            raise LeaseLost(job.id)

    def complete(self, job: Job, worker: str, result: dict[str, Any]) -> None:
        self._finish(job, worker, status=COMPLETED, result=orjson.dumps(result))

    def fail(self, job: Job, worker: str, error: str, *, retry: bool = True) -> bool:
        """Record a failure; queue the job again after a backoff unless out of attempts. True if retried."""
        if retry and job.attempts < self.max_attempts:
            delay = self.backoff_us * (2 ** (job.attempts - 1))
            self._finish(job, worker, status=QUEUED, error=error, lease_until=self.clock() + delay, lease_owner=None)
            return True
        self._finish(job, worker, status=FAILED, error=error)
        return False

    def _finish(self, job: Job, worker: str, **values: Any) -> None:
        values.setdefault("lease_until", None)
        with self.db.write() as conn:
            n = conn.execute(
                update(jobs)
                .where(jobs.c.id == job.id, jobs.c.status == RUNNING, jobs.c.lease_owner == worker)
                .values(updated=self.clock(), **values)
            ).rowcount
        if n != 1:
            raise LeaseLost(job.id)

    def cancel(self, job_id: str) -> bool:
        """Mark a job cancelled (a running worker notices at its next heartbeat). False if unknown/finished."""
        with self.db.write() as conn:
            n = conn.execute(
                update(jobs)
                .where(jobs.c.id == job_id, jobs.c.status.in_([QUEUED, RUNNING]))
                .values(status=CANCELLED, lease_until=None, updated=self.clock())
            ).rowcount
            if n == 0:
                n = conn.execute(
                    update(jobs).where(jobs.c.id == job_id, jobs.c.status.in_([COMPLETED, FAILED]))
                    .values(status=CANCELLED, updated=self.clock())
                ).rowcount
        return n == 1

    def delete(self, job_id: str) -> None:
        with self.db.write() as conn:
            conn.execute(delete(jobs).where(jobs.c.id == job_id))

    def recent(self, kinds: Iterable[str], *, status: str | None = None, limit: int = 1000) -> list[Job]:
        """Jobs of ``kinds`` (optionally of one status), newest first."""
        stmt = select(jobs).where(jobs.c.kind.in_(list(kinds)))
        if status is not None:
            stmt = stmt.where(jobs.c.status == status)
        with self.db.read() as conn:
            rows = conn.execute(stmt.order_by(jobs.c.created.desc(), jobs.c.id).limit(limit)).all()
        return [_job(r) for r in rows]

    def finished_before(self, kind: str, before_us: int, limit: int = 100) -> list[Job]:
        """Finished jobs last touched before ``before_us`` (for expiry of their outputs)."""
        with self.db.read() as conn:
            rows = conn.execute(
                select(jobs).where(jobs.c.kind == kind, jobs.c.status.in_(list(FINISHED)), jobs.c.updated < before_us)
                .order_by(jobs.c.updated).limit(limit)
            ).all()
        return [_job(r) for r in rows]
