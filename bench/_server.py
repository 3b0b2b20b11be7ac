"""A medcloud server under test: a fresh subprocess, its database, and its memory (RSS) over time.

Everything here cleans up after itself: the server runs in its own process group and is killed
(group-wide, by its own pid) on exit, on error and on SIGTERM/SIGINT of the benchmark; the
PostgreSQL benchmark database is dropped the same way.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import psutil

ROOT = Path(__file__).resolve().parent.parent
PG_ADMIN_URL = os.environ.get("MEDCLOUD_BENCH_PG", "postgresql://postgres@127.0.0.1:5432/postgres")
PG_BENCH_DB = "medcloud_bench"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def medcloud_executable() -> str:
    exe = Path(sys.executable).parent / "medcloud"
    return str(exe) if exe.exists() else "medcloud"


class Server:
    """``medcloud serve`` in a subprocess; ``base`` is its FHIR base URL once ``start()`` returns."""

    def __init__(self, data_dir: Path, db_url: str, workers: int, log_path: Path):
        self.data_dir = data_dir
        self.db_url = db_url
        self.workers = workers
        self.log_path = log_path
        self.port = free_port()
        self.proc: subprocess.Popen[bytes] | None = None
        self.command: list[str] = [
            medcloud_executable(),
            "serve",
            "--data-dir",
            str(data_dir),
            "--host",
            "127.0.0.1",
            "--port",
            str(self.port),
            "--workers",
            str(workers),
            "--no-auth",  # the issue-3 figures are FHIR work; bench/auth.py measures what auth adds
        ]
        if db_url:
            self.command += ["--db", db_url]

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}/fhir"

    def start(self, timeout: float = 90.0) -> float:
        """Start and wait for ``/fhir/metadata`` to answer 200; returns the start-up time in seconds."""
        env = dict(os.environ, MEDCLOUD_LOG_LEVEL="warning")
        self._log = open(self.log_path, "ab")  # noqa: SIM115 - closed in stop()
        t0 = time.perf_counter()
        self.proc = subprocess.Popen(
            self.command,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            cwd=str(ROOT),
            env=env,
            start_new_session=True,
        )
        _LIVE.add(self)
        deadline = time.monotonic() + timeout
        last = "no answer"
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited with {self.proc.returncode}: {self.log_tail()}")
            try:
                r = httpx.get(self.base + "/metadata", timeout=5)
                if r.status_code == 200:
                    started = time.perf_counter() - t0
                    self.wait_quiet()
                    return started
                last = f"HTTP {r.status_code}"
            except httpx.HTTPError as e:
                last = type(e).__name__
            time.sleep(0.2)
        raise RuntimeError(f"server did not answer /fhir/metadata within {timeout:.0f}s ({last})")

    def wait_quiet(self, timeout: float = 60.0, below: float = 0.1) -> None:
        """Wait until the server's processes use less than ``below`` of a core for a second: each
        worker compiles its validators in a background thread after it answers (app.py
        ``_warm_then_freeze``), and a measurement started meanwhile shares the GIL with that work."""
        import psutil

        assert self.proc is not None
        root = psutil.Process(self.proc.pid)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            procs = [root, *root.children(recursive=True)]
            before = sum(sum(q.cpu_times()[:2]) for q in procs if q.is_running())
            time.sleep(1.0)
            after = sum(sum(q.cpu_times()[:2]) for q in procs if q.is_running())
            if after - before < below:
                return

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def stop(self) -> None:
        proc, self.proc = self.proc, None
        _LIVE.discard(self)
        if proc is not None and proc.poll() is None:
            _signal_group(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                _signal_group(proc.pid, signal.SIGKILL)
                proc.wait(timeout=10)
        if proc is not None:
            # Workers of a killed uvicorn parent can outlive it; the group id is the parent's pid.
            _signal_group(proc.pid, signal.SIGKILL)
        if getattr(self, "_log", None):
            self._log.close()

    def log_tail(self, n: int = 30) -> str:
        try:
            lines = self.log_path.read_text(errors="replace").splitlines()
        except OSError:
            return ""
        return "\n".join(lines[-n:])

    def processes(self) -> list[psutil.Process]:
        if self.proc is None:
            return []
        try:
            parent = psutil.Process(self.proc.pid)
            return [parent, *parent.children(recursive=True)]
        except psutil.NoSuchProcess:
            return []


def cpu_seconds(procs: list[psutil.Process]) -> dict[int, float]:
    """user+system CPU seconds per pid (processes that vanished are left out)."""
    out = {}
    for p in procs:
        try:
            t = p.cpu_times()
            out[p.pid] = t.user + t.system
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
    return out


class CpuMeter:
    """CPU seconds the server (and, for PostgreSQL, its database backends) used during one step."""

    def __init__(self, server: Server, pg: bool):
        self.server, self.pg = server, pg
        self._wall = time.monotonic()
        self._srv = cpu_seconds(server.processes())
        self._db = cpu_seconds(pg_backends()) if pg else {}

    def result(self) -> dict[str, float]:
        wall = time.monotonic() - self._wall
        srv = cpu_seconds(self.server.processes())
        used = sum(v - self._srv.get(pid, 0.0) for pid, v in srv.items())
        out = {"server_cpu_s": round(used, 2)}
        if self.pg:
            db = cpu_seconds(pg_backends())
            out["postgres_cpu_s"] = round(sum(v - self._db.get(pid, 0.0) for pid, v in db.items()), 2)
        if wall > 0:
            total = used + out.get("postgres_cpu_s", 0.0)
            out["server_cpu_share_pct"] = round(100 * total / (wall * (os.cpu_count() or 1)), 1)
        return out


def _signal_group(pgid: int, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, sig)


_LIVE: set[Server] = set()


def stop_all() -> None:
    for server in list(_LIVE):
        server.stop()


def install_signal_cleanup() -> None:
    """Turn SIGTERM/SIGHUP into SystemExit so ``finally`` blocks stop servers and drop databases."""

    def _exit(signum: int, _frame: object) -> None:
        raise SystemExit(128 + signum)

    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, _exit)


# -- memory ------------------------------------------------------------------------------------------


@dataclass
class Sample:
    t: float
    rss: int  # bytes, summed over the server's process tree
    file: int  # of which file-backed or shared pages (SQLite's mmap of the database file, libraries)
    cpu: float  # server CPU seconds (user+system), summed over the tree, cumulative


@dataclass
class RssSampler:
    """Samples the server process tree's RSS every ``interval`` seconds in a background thread.

    ``phase(name)`` marks where each benchmark step starts so peaks can be reported per step.
    """

    server: Server
    interval: float = 0.5
    samples: list[Sample] = field(default_factory=list)
    phases: list[tuple[str, float, float | None]] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None
    _peak_rss: int = 0
    peak_per_process: dict[int, int] = field(default_factory=dict)

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="rss-sampler", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def _run(self) -> None:
        known: dict[int, psutil.Process] = {}
        while not self._stop.is_set():
            rss = file = 0
            cpu = 0.0
            per: dict[int, int] = {}
            for p in self.server.processes():
                proc = known.setdefault(p.pid, p)  # keep the same object so cpu_times stay cheap
                try:
                    mem = proc.memory_info()
                    per[p.pid] = mem.rss
                    rss += mem.rss
                    file += getattr(mem, "shared", 0)
                    t = proc.cpu_times()
                    cpu += t.user + t.system
                except psutil.NoSuchProcess:
                    continue
            if rss > self._peak_rss:
                self._peak_rss, self.peak_per_process = rss, per
            if rss:
                self.samples.append(Sample(time.monotonic(), rss, file, cpu))
            self._stop.wait(self.interval)

    def phase(self, name: str) -> None:
        now = time.monotonic()
        if self.phases and self.phases[-1][2] is None:
            n, s, _ = self.phases[-1]
            self.phases[-1] = (n, s, now)
        self.phases.append((name, now, None))

    def end_phase(self) -> None:
        if self.phases and self.phases[-1][2] is None:
            n, s, _ = self.phases[-1]
            self.phases[-1] = (n, s, time.monotonic())

    def summary(self) -> dict[str, object]:
        """Peak and last RSS in MiB overall and per phase, plus server CPU seconds per phase."""
        self.end_phase()
        out: dict[str, object] = {"interval_s": self.interval, "samples": len(self.samples)}
        if not self.samples:
            return out
        out["peak_mib"] = _mib(max(s.rss for s in self.samples))
        # Anonymous memory (heap, stacks): RSS minus file-backed/shared pages, which the kernel can drop.
        out["peak_anon_mib"] = _mib(max(s.rss - s.file for s in self.samples))
        out["peak_per_process_mib"] = sorted((_mib(v) for v in self.peak_per_process.values()), reverse=True)
        out["last_mib"] = _mib(self.samples[-1].rss)
        per: dict[str, dict[str, float]] = {}
        for name, start, end in self.phases:
            inside = [s for s in self.samples if start <= s.t <= (end or float("inf"))]
            if inside:
                per[name] = {
                    "peak_mib": _mib(max(s.rss for s in inside)),
                    "peak_anon_mib": _mib(max(s.rss - s.file for s in inside)),
                    "end_mib": _mib(inside[-1].rss),
                    "server_cpu_s": round(inside[-1].cpu - inside[0].cpu, 2),
                    "seconds": round((end or inside[-1].t) - start, 2),
                }
        out["phases"] = per
        return out


def _mib(n: int) -> float:
    return round(n / 2**20, 1)


# -- PostgreSQL ----------------------------------------------------------------------------------------


def _pg_admin():  # type: ignore[no-untyped-def]
    import psycopg

    return psycopg.connect(PG_ADMIN_URL, autocommit=True, connect_timeout=10)


def pg_create() -> str:
    """Drop (if left over) and create the benchmark database; returns its URL."""
    pg_drop()
    with _pg_admin() as conn:
        conn.execute(f'CREATE DATABASE "{PG_BENCH_DB}"')
    return PG_ADMIN_URL.rsplit("/", 1)[0] + "/" + PG_BENCH_DB


def pg_drop() -> None:
    with _pg_admin() as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{PG_BENCH_DB}" WITH (FORCE)')


def pg_backends() -> list[psutil.Process]:
    """PostgreSQL backend processes serving the benchmark database (pids from pg_stat_activity)."""
    try:
        with _pg_admin() as conn:
            pids = [
                r[0]
                for r in conn.execute(
                    "SELECT pid FROM pg_stat_activity WHERE datname = %s", (PG_BENCH_DB,)
                ).fetchall()
            ]
    except Exception:
        return []
    out = []
    for pid in pids:
        try:
            out.append(psutil.Process(pid))
        except psutil.NoSuchProcess:
            continue
    return out


def pg_version() -> str | None:
    try:
        with _pg_admin() as conn:
            row = conn.execute("SHOW server_version").fetchone()
            return str(row[0]) if row else None
    except Exception:
        return None


def analyze(data_dir: Path, pg: bool) -> dict[str, object]:
    """Collect planner statistics (``ANALYZE``), as PostgreSQL's autovacuum would after a bulk load.

    The cluster here runs with ``autovacuum = off`` and medcloud does not analyze by itself, so
    without this the planners choose plans for empty tables. Measured separately on purpose.
    """
    t0 = time.perf_counter()
    if pg:
        import psycopg

        url = PG_ADMIN_URL.rsplit("/", 1)[0] + "/" + PG_BENCH_DB
        with psycopg.connect(url, autocommit=True, connect_timeout=10) as conn:
            autovacuum = conn.execute("SHOW autovacuum").fetchone()
            conn.execute("ANALYZE")
        return {
            "seconds": round(time.perf_counter() - t0, 2),
            "autovacuum": autovacuum[0] if autovacuum else None,
        }
    import sqlite3

    conn = sqlite3.connect(data_dir / "medcloud.db", timeout=60)
    try:
        conn.execute("ANALYZE")
        conn.commit()
    finally:
        conn.close()
    return {"seconds": round(time.perf_counter() - t0, 2)}
