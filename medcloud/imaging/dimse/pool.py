"""More SCP processes on the same DIMSE port, so C-STORE ingest uses every core.

pynetdicom serves each association with two threads that poll every millisecond, and our store
path is Python: one process saturates about one core (the GIL) long before the disk or the
database does. The SCP therefore binds with SO_REUSEPORT and ``running`` starts
``dicom_processes - 1`` more processes that bind the same address; the kernel spreads incoming
associations over all of them. Each process has its own archive handle, group-commit writer and
ImagingStudy flusher; everything they share is in the database and the blob store (an
ImagingStudy is rebuilt from the index on every flush, so two processes updating one study
converge on the same resource).

The extra processes are children of the one that started them: they get SIGTERM when it stops,
and Linux's parent-death signal ends them if it dies without cleaning up (kill -9).
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import multiprocessing
import os
import signal
import threading
from multiprocessing.connection import Connection
from multiprocessing.process import BaseProcess

from medcloud.config import Settings

log = logging.getLogger("medcloud.dimse")

START_TIMEOUT = 60.0
GRACE_SECONDS = 5.0  # after SIGTERM, then the process exits regardless


def process_count(settings: Settings) -> int:
    """How many SCP processes to run (``dicom_processes``, at least one)."""
    return max(1, settings.dicom_processes)


class ScpPool:
    """The extra SCP processes of one ``running`` SCP."""

    def __init__(self) -> None:
        self._procs: list[BaseProcess] = []

    def start(self, settings: Settings, port: int, count: int) -> None:
        """Start ``count`` processes serving ``port``; raises OSError if one cannot bind or start."""
        ctx = multiprocessing.get_context("spawn")  # no fork of a process with threads and sockets
        pending: list[tuple[BaseProcess, Connection]] = []
        for _ in range(count):
            parent_end, child_end = ctx.Pipe(duplex=False)
            proc = ctx.Process(target=_child, args=(settings.model_dump_json(), port, child_end),
                               name="medcloud-dimse", daemon=True)
            proc.start()
            child_end.close()
            self._procs.append(proc)
            pending.append((proc, parent_end))
        try:
            for started, conn in pending:
                if not conn.poll(START_TIMEOUT):
                    raise OSError(f"DIMSE process {started.pid} did not start within {START_TIMEOUT:.0f} s")
                try:
                    problem = conn.recv()
                except EOFError:
                    problem = f"DIMSE process {started.pid} exited with code {started.exitcode}"
                if problem:
                    raise OSError(problem)
        except BaseException:
            self.stop()
            raise
        finally:
            for _, conn in pending:
                conn.close()

    def stop(self) -> None:
        for proc in self._procs:
            if proc.is_alive() and proc.pid is not None:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(proc.pid, signal.SIGTERM)
        for proc in self._procs:
            proc.join(timeout=15)
            if proc.is_alive():
                proc.kill()
                proc.join(timeout=5)
        self._procs.clear()

    @property
    def pids(self) -> list[int]:
        return [p.pid for p in self._procs if p.pid is not None]


def _child(settings_json: str, port: int, ready: Connection) -> None:
    """One extra SCP process: bind ``port`` (SO_REUSEPORT), report, serve until SIGTERM."""
    _die_with_parent()
    from medcloud.app import build_services
    from medcloud.imaging.dimse.scp import DimseServer

    settings = Settings.model_validate_json(settings_json)
    try:
        services = build_services(settings, migrate=False)
    except Exception as e:  # noqa: BLE001 - reported to the parent, which refuses to start
        ready.send(f"DIMSE process {os.getpid()}: {type(e).__name__}: {e}")
        return
    try:
        assert services.imaging is not None
        server = DimseServer(services.imaging, settings, port=port)
        try:
            server.start()
        except OSError as e:
            ready.send(f"DIMSE process {os.getpid()} cannot bind port {port}: {e.strerror or e}")
            return
        def on_term(*_: object) -> None:
            server.request_stop()
            # A graceful stop that hangs (a peer that never releases) must not outlive the parent.
            timer = threading.Timer(GRACE_SECONDS, os._exit, args=(0,))
            timer.daemon = True
            timer.start()

        signal.signal(signal.SIGTERM, on_term)
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C reaches the whole group; the parent decides
        ready.send(None)
        ready.close()
        server.serve_forever()
    finally:
        services.close()


def _die_with_parent() -> None:
    """Linux: SIGTERM this process when its parent dies (PR_SET_PDEATHSIG); elsewhere nothing."""
    with contextlib.suppress(Exception):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG = 1
