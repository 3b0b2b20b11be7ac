"""Group commit: one writer thread stores what concurrent requests queue, one transaction per batch.

Why: every STOW-RS request (and every C-STORE) used to run its own write transaction, and on
SQLite there is one writer at a time, so under concurrency a quarter of the time went to waiting
for the write lock, and each request then paid its own patient/study/series upserts, recount,
directory fsync and ImagingStudy update. Here request threads parse and validate first
(``Archive.prepare``) and write their files to fsynced temp names (``Archive.stage``), both in
parallel with the writer's current batch, then queue; the writer only renames the files into place,
fsyncs their directories (side by side), writes the index and commits. It takes
*everything* queued (up to ``max_batch`` instances; a single larger request is never split) and
stores it with one ``Archive.commit``, where one bad instance still fails alone (savepoints).
Batches form by themselves: while one commits, the next requests queue, so N busy clients give
batches of about N requests and an idle server batches of one (no added latency).

``after_commit`` runs in the writer after each committed batch, with the union of the studies it
changed, *before* any of its waiters is released: STOW-RS passes the archive's ``on_change`` hooks
(the FHIR ImagingStudy link), so each study's ImagingStudy is rewritten once per batch instead of
once per request, and is already up to date when the STOW-RS response leaves. The DIMSE SCP passes
none (it flushes its hooks on its own schedule, see dimse/scp.py).
"""

from __future__ import annotations

import logging
import queue
import threading
from collections.abc import Callable, Iterable

from medcloud.imaging import status
from medcloud.imaging.archive import Archive, Prepared, StoreResult

log = logging.getLogger("medcloud.imaging")


class GroupCommit:
    """Stores queued requests in shared transactions; ``store_many`` blocks until its batch is done.

    ``after_commit``, if given, replaces the archive's own ``on_change`` call (``commit(notify=False)``);
    ``for_archive`` passes the archive's hooks. The writer thread starts on first use and ends
    after ``idle_seconds`` without work.
    """

    def __init__(self, archive: Archive, *, max_batch: int = 64,
                 after_commit: Callable[[set[str]], None] | None = None, idle_seconds: float = 30.0):
        self.archive = archive
        self.max_batch = max_batch
        self.after_commit = after_commit
        self.idle_seconds = idle_seconds
        self._queue: queue.SimpleQueue[_Request] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()
        self.batches = 0  # committed batches (tests and the benchmark read it)

    @classmethod
    def for_archive(cls, archive: Archive, *, max_batch: int = 64) -> GroupCommit:
        """A writer for ``archive`` that runs its ``on_change`` hooks once per batch, before releasing it."""
        return cls(archive, max_batch=max_batch, after_commit=lambda studies: notify(archive, studies))

    def store(self, data: bytes, *, study_uid: str | None = None) -> StoreResult:
        return self.store_many([data], study_uid=study_uid)[0]

    def store_many(self, items: Iterable[bytes], *, study_uid: str | None = None) -> list[StoreResult]:
        """``Archive.store_many`` through the writer: one result per item, in order."""
        prepared = self.archive.stage([self.archive.prepare(data, study_uid=study_uid) for data in items])
        if all(p.refused is not None for p in prepared):
            return [p.refused for p in prepared if p.refused is not None]
        req = _Request(prepared)
        with self._lock:  # put and start under one lock: the idle writer cannot exit past a new item
            self._queue.put(req)
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="imaging-group-commit", daemon=True)
                self._thread.start()
        req.done.wait()
        assert req.results is not None
        return req.results

    def _run(self) -> None:
        while True:
            try:
                first = self._queue.get(timeout=self.idle_seconds)
            except queue.Empty:
                with self._lock:
                    if self._queue.empty():
                        self._thread = None
                        return
                continue
            batch, size = [first], len(first.prepared)
            while size < self.max_batch:
                try:
                    more = self._queue.get_nowait()
                except queue.Empty:
                    break
                batch.append(more)
                size += len(more.prepared)
            self._commit(batch)

    def _commit(self, batch: list[_Request]) -> None:
        flat = [p for req in batch for p in req.prepared]
        try:
            results = self.archive.commit(flat, notify=self.after_commit is None)
        except Exception:  # noqa: BLE001 - commit reports per instance; this is a fault
            log.exception("group commit of %d instances failed", len(flat))
            results = [p.refused or StoreResult(status.PROCESSING_FAILURE, reason="internal error while storing")
                       for p in flat]
        self.batches += 1
        changed = {r.study_uid for r in results if r.stored and r.study_uid}
        if changed and self.after_commit is not None:
            try:
                self.after_commit(changed)
            except Exception:  # noqa: BLE001 - the images are stored; the next change repairs the link
                log.exception("after-commit hook failed for %d studies", len(changed))
        at = 0
        for req in batch:
            req.results = results[at:at + len(req.prepared)]
            at += len(req.prepared)
            req.done.set()


def notify(archive: Archive, studies: set[str]) -> None:
    """Run ``archive.on_change`` hooks once for ``studies``; a failing hook is logged, not raised."""
    for hook in archive.on_change:
        try:
            hook(studies)
        except Exception:  # noqa: BLE001 - the images are stored; the link is repaired on the next change
            log.exception("imaging change hook failed for studies %s", sorted(studies))


class _Request:
    """One caller's instances and, once its batch is done, their results."""

    __slots__ = ("done", "prepared", "results")

    def __init__(self, prepared: list[Prepared]):
        self.prepared = prepared
        self.results: list[StoreResult] | None = None
        self.done = threading.Event()
