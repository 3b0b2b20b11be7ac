"""What the numbers were measured on: machine, load, code version. Recorded with every result."""

from __future__ import annotations

import os
import platform
import subprocess
import time
from pathlib import Path

import psutil

ROOT = Path(__file__).resolve().parent.parent


def machine() -> dict[str, object]:
    return {
        "nproc": os.cpu_count(),
        "cpu_model": _cpu_model(),
        "ram_gib": round(psutil.virtual_memory().total / 2**30, 1),
        "os": _os_name(),
        "kernel": platform.release(),
        "python": platform.python_version(),
    }


def _cpu_model() -> str | None:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or None


def _os_name() -> str:
    try:
        for line in Path("/etc/os-release").read_text().splitlines():
            if line.startswith("PRETTY_NAME="):
                return line.split("=", 1)[1].strip('"')
    except OSError:
        pass
    return platform.platform()


def load_average() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


def git_commit() -> dict[str, object]:
    def git(*args: str) -> str | None:
        try:
            out = subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True, timeout=10)
        except (OSError, subprocess.TimeoutExpired):
            return None
        return out.stdout.strip() if out.returncode == 0 else None

    status = git("status", "--porcelain")
    return {
        "commit": git("rev-parse", "HEAD"),
        "dirty_files": len(status.splitlines()) if status else 0,
    }


class CpuWatch:
    """Whole-machine CPU use over a step: how busy all cores were, whoever used them.

    On a shared machine this is the honest noise figure: a step where the machine was 95 % busy but
    the server only used a fraction of that competed with other work.
    """

    def __init__(self) -> None:
        self._t0 = time.monotonic()
        self._c0 = psutil.cpu_times()

    def result(self) -> dict[str, float]:
        c1 = psutil.cpu_times()
        busy0 = sum(self._c0) - self._c0.idle - getattr(self._c0, "iowait", 0.0)
        busy1 = sum(c1) - c1.idle - getattr(c1, "iowait", 0.0)
        total = sum(c1) - sum(self._c0)
        return {
            "machine_cpu_busy_pct": round(100 * (busy1 - busy0) / total, 1) if total > 0 else 0.0,
            "load_avg_1m_end": round(os.getloadavg()[0], 2),
        }
