"""Leased background jobs on the ``jobs`` table (Bulk $export now; imaging and AI later)."""

from medcloud.jobs._queue import (
    CANCELLED,
    COMPLETED,
    FAILED,
    QUEUED,
    RUNNING,
    Job,
    JobQueue,
    LeaseLost,
)
from medcloud.jobs._worker import Handler, JobControl, Permanent, Worker, worker_name

__all__ = [
    "CANCELLED",
    "COMPLETED",
    "FAILED",
    "QUEUED",
    "RUNNING",
    "Handler",
    "Job",
    "JobControl",
    "JobQueue",
    "LeaseLost",
    "Permanent",
    "Worker",
    "worker_name",
]
