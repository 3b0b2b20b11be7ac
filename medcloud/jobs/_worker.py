"""Run leased jobs: one loop that any process can host (the server's thread, or ``medcloud worker``).

A handler receives the job and a ``JobControl``; it calls ``control.checkpoint(state)`` after each
unit of durable progress, which renews the lease and raises ``LeaseLost`` when the job was
cancelled or taken over. A handler resumes from ``job.state`` (None on the first attempt).
Exceptions are recorded and retried with backoff; ``Permanent`` marks a failure not worth retrying.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from medcloud.jobs._queue import Job, JobQueue, LeaseLost

log = logging.getLogger("medcloud.jobs")


class Permanent(Exception):
    """A job failure that retrying cannot fix (bad request, missing input)."""


@dataclass
class JobControl:
    queue: JobQueue
    job: Job
    worker: str

    def checkpoint(self, state: dict[str, Any] | None = None) -> None:
        self.queue.heartbeat(self.job, self.worker, state)


Handler = Callable[[Job, JobControl], dict[str, Any]]


def worker_name() -> str:
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:6]}"


class Worker:
    """Claims and runs jobs of the kinds in ``handlers``; ``start()`` runs it on a daemon thread."""

    def __init__(self, queue: JobQueue, handlers: Mapping[str, Handler], *, poll_seconds: float = 0.5,
                 name: str | None = None):
        self.queue = queue
        self.handlers = dict(handlers)
        self.poll_seconds = poll_seconds
        self.name = name or worker_name()
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._thread: threading.Thread | None = None
        self.idle_hooks: list[Callable[[], None]] = []

    def run_once(self) -> bool:
        """Claim and run one job; False if there was nothing to do."""
        job = self.queue.claim(self.name, self.handlers)
        if job is None:
            return False
        control = JobControl(self.queue, job, self.name)
        try:
            result = self.handlers[job.kind](job, control)
            self.queue.complete(job, self.name, result)
        except LeaseLost:
            log.info("job %s was cancelled or taken over; stopping", job.id)
        except Permanent as e:
            log.warning("job %s failed: %s", job.id, e)
            self._record_failure(job, str(e), retry=False)
        except Exception as e:
            log.exception("job %s (attempt %d) failed", job.id, job.attempts)
            self._record_failure(job, f"{type(e).__name__}: {e}", retry=True)
        return True

    def _record_failure(self, job: Job, error: str, *, retry: bool) -> None:
        try:
            self.queue.fail(job, self.name, error, retry=retry)
        except LeaseLost:
            pass
        except Exception:  # the database itself is failing; the lease will expire and the job be retried
            log.exception("could not record the failure of job %s", job.id)

    def run_until_idle(self) -> int:
        """Run jobs until none is runnable now; returns how many ran (for the CLI and tests)."""
        n = 0
        while self.run_once():
            n += 1
        return n

    def wake(self) -> None:
        self._wake.set()

    def start(self) -> None:
        if self._thread is not None:
            return
        self._stop.clear()
        self._thread = threading.Thread(target=self._loop, name=f"medcloud-worker-{self.name}", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 30.0) -> None:
        """Ask the loop to stop after the current job step and wait for it."""
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None

    @property
    def stopping(self) -> bool:
        return self._stop.is_set()

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                busy = self.run_once()
                if not busy:
                    for hook in self.idle_hooks:
                        hook()
            except Exception:  # database unreachable etc.: keep the thread alive and try again
                log.exception("job worker loop error")
                busy = False
            if not busy:
                self._wake.wait(self.poll_seconds)
                self._wake.clear()
