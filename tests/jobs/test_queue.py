"""The leased job queue on SQLite and PostgreSQL: claim once, lease expiry, retry, cancel."""

from __future__ import annotations

import threading
from collections.abc import Iterator

import pytest

from medcloud.jobs import (
    CANCELLED,
    COMPLETED,
    FAILED,
    QUEUED,
    RUNNING,
    JobQueue,
    LeaseLost,
    Permanent,
    Worker,
)
from medcloud.storage.migrate import upgrade
from medcloud.storage.sql.database import Database


class Clock:
    def __init__(self) -> None:
        self.now = 1_700_000_000_000_000

    def __call__(self) -> int:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += int(seconds * 1_000_000)


@pytest.fixture
def db(backend: str) -> Iterator[Database]:
    d = Database.connect(backend)
    upgrade(d)
    yield d
    d.dispose()


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def queue(db: Database, clock: Clock) -> JobQueue:
    return JobQueue(db, clock=clock, lease_seconds=10, max_attempts=3, backoff_seconds=1)


def test_a_job_is_claimed_once_then_completed(queue: JobQueue):
    jid = queue.enqueue("k", {"x": 1}, owner="alice")
    job = queue.claim("w1", ["k"])
    assert job is not None and job.id == jid and job.status == RUNNING and job.attempts == 1
    assert job.request == {"x": 1}
    assert queue.claim("w2", ["k"]) is None
    queue.heartbeat(job, "w1", {"done": 5})
    assert queue.get(jid).state == {"done": 5}
    queue.complete(job, "w1", {"ok": True})
    done = queue.get(jid)
    assert done.status == COMPLETED and done.result == {"ok": True}


def test_claim_only_takes_its_kinds(queue: JobQueue):
    queue.enqueue("other", {})
    assert queue.claim("w", ["k"]) is None


def test_expired_lease_lets_another_worker_resume_from_the_checkpoint(queue: JobQueue, clock: Clock):
    jid = queue.enqueue("k", {})
    job = queue.claim("w1", ["k"])
    queue.heartbeat(job, "w1", {"rid": 42})
    clock.advance(5)
    assert queue.claim("w2", ["k"]) is None  # lease still held
    clock.advance(11)
    again = queue.claim("w2", ["k"])
    assert again is not None and again.id == jid and again.state == {"rid": 42} and again.attempts == 2
    with pytest.raises(LeaseLost):
        queue.heartbeat(job, "w1")  # the old worker finds out it lost the job


def test_failures_are_retried_with_backoff_then_fail(queue: JobQueue, clock: Clock):
    jid = queue.enqueue("k", {})
    job = queue.claim("w", ["k"])
    assert queue.fail(job, "w", "boom") is True
    assert queue.get(jid).status == QUEUED
    assert queue.claim("w", ["k"]) is None  # backing off for 1 s
    clock.advance(1.1)
    job = queue.claim("w", ["k"])
    assert queue.fail(job, "w", "boom") is True
    clock.advance(1.1)
    assert queue.claim("w", ["k"]) is None  # second backoff is 2 s
    clock.advance(1)
    job = queue.claim("w", ["k"])
    assert job.attempts == 3
    assert queue.fail(job, "w", "boom again") is False
    final = queue.get(jid)
    assert final.status == FAILED and final.error == "boom again"


def test_cancel_stops_a_running_job_at_its_next_heartbeat(queue: JobQueue):
    jid = queue.enqueue("k", {})
    job = queue.claim("w", ["k"])
    assert queue.cancel(jid) is True
    with pytest.raises(LeaseLost):
        queue.heartbeat(job, "w")
    assert queue.get(jid).status == CANCELLED
    assert queue.cancel("unknown") is False


def test_concurrent_claimers_never_share_a_job(db: Database):
    queue = JobQueue(db)
    ids = {queue.enqueue("k", {"i": i}) for i in range(12)}
    claimed: list[str] = []
    lock = threading.Lock()

    def claimer(name: str) -> None:
        while (job := queue.claim(name, ["k"])) is not None:
            with lock:
                claimed.append(job.id)

    threads = [threading.Thread(target=claimer, args=(f"w{i}",)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(claimed) == sorted(ids)


def test_worker_runs_handlers_and_records_outcomes(queue: JobQueue):
    ok = queue.enqueue("ok", {"n": 2})
    bad = queue.enqueue("bad", {})

    def run_ok(job, control):
        control.checkpoint({"half": True})
        return {"double": job.request["n"] * 2}

    def run_bad(job, control):
        raise Permanent("cannot")

    worker = Worker(queue, {"ok": run_ok, "bad": run_bad})
    assert worker.run_until_idle() == 2
    assert queue.get(ok).result == {"double": 4}
    assert queue.get(bad).status == FAILED and queue.get(bad).error == "cannot"


def test_worker_thread_starts_and_stops_cleanly(db: Database):
    queue = JobQueue(db)
    done = threading.Event()

    def run(job, control):
        done.set()
        return {}

    worker = Worker(queue, {"k": run}, poll_seconds=0.05)
    worker.start()
    queue.enqueue("k", {})
    worker.wake()
    assert done.wait(10)
    worker.stop()
    assert worker._thread is None
