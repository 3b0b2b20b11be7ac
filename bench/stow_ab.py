"""STOW-RS A/B in one run: the same requests against medcloud variants, interleaved (issue 5 ingest speed).

    .venv/bin/python bench/stow_ab.py --variant old=/tmp/old-tree --variant new= --rounds 3
    .venv/bin/python bench/stow_ab.py --variant w1=:1 --variant w2=:2        # uvicorn workers 1 vs 2

A variant is ``name=[tree][:workers]``: ``tree`` is a directory holding a copy of the ``medcloud``
package (put first on ``PYTHONPATH`` of that server; empty = this working tree), ``workers`` the
uvicorn worker count (default ``--workers``). Each round starts, for every variant in turn (the order
alternates between rounds, so a shared machine's drift hits all alike), a fresh ``medcloud serve``
on a fresh SQLite data dir (or ``--db``), and posts the same bodies as ``bench/imaging.py``: the
population (``--size`` CT) and the series (``--series-size`` CT) in ``--batch``-instance requests
from ``--stow-clients`` clients. Every response is checked as in imaging.py. Prints instances/s per
round and the median per variant; no JSON is written (the lead's BENCHMARKS.md uses imaging.py).
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import tempfile
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _server  # noqa: E402
import imaging  # noqa: E402
from _dicom import write_set  # noqa: E402


def parse_variant(text: str, workers: int) -> tuple[str, str, int]:
    name, sep, rest = text.partition("=")
    if not sep or not name:
        raise SystemExit(f"--variant wants name=[tree][:workers], got {text!r}")
    tree, _, w = rest.partition(":")
    if tree and not (Path(tree) / "medcloud" / "__init__.py").is_file():
        raise SystemExit(f"variant {name}: {tree}/medcloud is not a medcloud package")
    return name, tree, int(w) if w else workers


def run_variant(tree: str, workers: int, db: str, tests: list[tuple[str, Any]], clients: int) -> dict[str, Any]:
    work = Path(tempfile.mkdtemp(prefix="bench-stow-ab-"))
    server = _server.Server(work / "medcloud", db, workers, work / "medcloud.log")
    server.command += ["--dicom-port", "0"]
    saved = os.environ.get("PYTHONPATH")
    if tree:
        os.environ["PYTHONPATH"] = tree + (os.pathsep + saved if saved else "")
    try:
        server.start()
    finally:
        if saved is None:
            os.environ.pop("PYTHONPATH", None)
        else:
            os.environ["PYTHONPATH"] = saved
    try:
        base = f"http://127.0.0.1:{server.port}/dicomweb"
        imaging.stow(base, imaging.stow_bodies(imaging.WARMUP, 1), imaging.WARMUP_N)
        out = {}
        for test, bodies in tests:
            meter = _server.CpuMeter(server, db.startswith("postgres"))
            r = imaging.stow(base, bodies, clients)
            r.update(meter.result())
            if r["wrong"]:
                raise SystemExit(f"{test}: {r['wrong']} wrong answers: {r['errors']}")
            out[test] = r
        return out
    finally:
        if not server.alive():
            print(server.log_tail(), file=sys.stderr)
        server.stop()
        shutil.rmtree(work, ignore_errors=True)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--variant", action="append", required=True, help="name=[tree][:workers] (repeat)")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--patients", type=int, default=200)
    ap.add_argument("--studies-per-patient", type=int, default=3)
    ap.add_argument("--instances-per-study", type=int, default=4)
    ap.add_argument("--size", type=int, default=64)
    ap.add_argument("--series-instances", type=int, default=500, help="0 skips the series test")
    ap.add_argument("--series-size", type=int, default=512)
    ap.add_argument("--batch", type=int, default=20)
    ap.add_argument("--stow-clients", type=int, default=4)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--db", default="", help="'postgres' for a fresh PostgreSQL database per server "
                                             "(default SQLite in a temp dir)")
    args = ap.parse_args(argv)
    variants = [parse_variant(v, args.workers) for v in args.variant]
    _server.install_signal_cleanup()
    pop = imaging.Population(args.patients, args.studies_per_patient, args.instances_per_study, args.size)
    write_set(pop.folder, pop.specs(), pop.size, pop.n)
    write_set(imaging.WARMUP, imaging.warmup_specs(imaging.WARMUP_N), 64, imaging.WARMUP_N)
    tests: list[tuple[str, Any]] = [("population", imaging.stow_bodies(pop.folder, args.batch))]
    if args.series_instances:
        big = imaging.BigSeries(args.series_instances, args.series_size)
        write_set(big.folder, big.specs(), big.size, big.n)
        tests.append(("series", imaging.stow_bodies(big.folder, args.batch)))
    rates: dict[str, dict[str, list[float]]] = {name: {t: [] for t, _ in tests} for name, _, _ in variants}
    for rnd in range(args.rounds):
        order = variants if rnd % 2 == 0 else list(reversed(variants))
        for name, tree, workers in order:
            db = args.db
            if db == "postgres":
                db = _server.pg_create()
            try:
                res = run_variant(tree, workers, db, tests, args.stow_clients)
            finally:
                if args.db == "postgres":
                    _server.pg_drop()
            line = "  ".join(f"{t} {r['per_second']:7.1f}/s (cpu {r.get('server_cpu_s', '?')}s)"
                             for t, r in res.items())
            print(f"round {rnd + 1} {name:>8} (workers {workers}): {line}", flush=True)
            for t, r in res.items():
                rates[name][t].append(r["per_second"])
    print("median instances/s:")
    for name, per in rates.items():
        print(f"  {name:>8}: " + "  ".join(f"{t} {statistics.median(v):7.1f} (runs {v})" for t, v in per.items()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
