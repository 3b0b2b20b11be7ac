"""DIMSE ingest benchmark: dcmtk ``storescu`` of N generated instances to medcloud (and Orthanc).

    .venv/bin/python bench/dimse.py                 # 2,000 instances, CT 512x512 and 64x64, SQLite
    .venv/bin/python bench/dimse.py -n 500 --sizes 64 --db postgresql://postgres@127.0.0.1/medcloud_dimse
    .venv/bin/python bench/dimse.py -n 100000 --sizes 64 --chunks 10   # rate per 10k: flat from 0 to 100k?
    .venv/bin/python bench/dimse.py -n 2000 --sizes 64 --parallel 8 --fast-store both   # lean acceptor A/B

The instances are deterministic (UIDs derived from the index, fixed pixel pattern) and cached
under bench/data/dimse/. Each run starts a fresh ``medcloud dicom serve`` (and, when the Debian
``Orthanc`` binary is installed, a fresh Orthanc with its default SQLite index) on free ports,
sends the set with ``--parallel`` concurrent ``storescu`` associations (default 4) and reports instances/s from
storescu's wall time, and the server's CPU time per instance (user + system of every process of the
server's session, from /proc, over the send). ``--fast-store on|off|both`` runs medcloud with the lean
C-STORE acceptor (``dicom_fast_store``), with pure pynetdicom, or both in turn (an A/B in one run on a
shared machine). Results go to bench/results/<utc>-dimse.json.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _dicom import RESULTS, ROOT, Orthanc, free_port, generate, stop, wait_port  # noqa: E402


def storescu(port: int, aec: str, files: list[Path], parallel: int) -> dict[str, float | int]:
    """``parallel`` storescu processes (one association each) over disjoint slices of the set.

    One storescu is latency-bound on this VM (~45 ms per C-STORE even dcmtk to dcmtk on tmpfs),
    so the server's throughput only shows with several associations. TCP_NODELAY=1 makes dcmtk
    disable Nagle on its side (it halves that latency).
    """
    slices = [files[i::parallel] for i in range(parallel)]
    env = dict(os.environ, TCP_NODELAY="1")
    t0 = time.perf_counter()
    procs = [subprocess.Popen(["storescu", "-aet", f"BENCHSCU{k}", "-aec", aec, "-R", "127.0.0.1", str(port),
                               *map(str, part)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env)
             for k, part in enumerate(slices) if part]
    outs = [p.communicate()[0].decode(errors="replace") for p in procs]
    seconds = time.perf_counter() - t0
    failed = sum(o.count("Store Failed") + o.count("Store SCU Failed") for o in outs)
    return {"instances": len(files), "parallel": parallel, "seconds": round(seconds, 3),
            "per_second": round(len(files) / seconds, 1), "storescu_rc": max(p.returncode for p in procs),
            "failed": failed}


def session_cpu_seconds(sid: int) -> float:
    """User + system CPU seconds of the live processes in session ``sid`` (Linux /proc)."""
    total = 0
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue  # exited meanwhile
        if int(fields[3]) == sid:  # after "pid (comm)": state ppid pgrp session ... utime(12) stime(13)
            total += int(fields[11]) + int(fields[12])
    return total / os.sysconf("SC_CLK_TCK")


def in_chunks(port: int, aec: str, folder: Path, parallel: int, chunks: int) -> dict[str, object]:
    """Send the set in ``chunks`` consecutive parts to one running server; the rate of each part
    shows whether ingest stays flat as the archive grows."""
    files = sorted(folder.glob("*.dcm"))
    size = -(-len(files) // chunks)
    parts = [storescu(port, aec, files[k:k + size], parallel) for k in range(0, len(files), size)]
    seconds = sum(float(p["seconds"]) for p in parts)
    return {"instances": len(files), "parallel": parallel, "seconds": round(seconds, 3),
            "per_second": round(len(files) / seconds, 1), "failed": sum(int(p["failed"]) for p in parts),
            "storescu_rc": max(int(p["storescu_rc"]) for p in parts),
            "per_chunk": [p["per_second"] for p in parts] if chunks > 1 else None}


def run_medcloud(folder: Path, work: Path, db: str | None, parallel: int, chunks: int, *, fast_store: bool = True,
                 processes: int = 1) -> dict[str, object]:
    port = free_port()
    exe = str(Path(sys.executable).parent / "medcloud")
    data = work / ("medcloud" if fast_store else "medcloud-pynetdicom")
    cmd = [exe, "dicom", "serve", "--data-dir", str(data), "--host", "127.0.0.1", "--port", str(port),
           "--allow-unknown", "--processes", str(processes)]
    if db:
        cmd += ["--db", db]
    env = dict(os.environ, MEDCLOUD_LOG_LEVEL="warning", MEDCLOUD_DICOM_FAST_STORE=str(fast_store).lower())
    log = open(work / "medcloud.log", "ab")  # noqa: SIM115 - closed below
    proc = subprocess.Popen(cmd, stdout=log, stderr=log, env=env, start_new_session=True)
    try:
        wait_port(port, proc)
        time.sleep(0.5)  # the extra processes' start-up is not ingest CPU
        cpu0 = session_cpu_seconds(proc.pid)
        out = in_chunks(port, "MEDCLOUD", folder, parallel, chunks)
        cpu = session_cpu_seconds(proc.pid) - cpu0
        out.update(fast_store=fast_store, processes=processes, cpu_seconds=round(cpu, 2),
                   cpu_ms_per_instance=round(1000 * cpu / max(int(str(out["instances"])), 1), 2))
        return out
    finally:
        stop(proc)
        log.close()


def run_orthanc(folder: Path, work: Path, parallel: int, chunks: int) -> dict[str, object] | None:
    if shutil.which("Orthanc") is None:
        return None
    with Orthanc(work) as orthanc:
        return in_chunks(orthanc.dicom_port, "ORTHANC", folder, parallel, chunks)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("-n", type=int, default=2000, help="instances per set (default 2,000)")
    ap.add_argument("--sizes", type=int, nargs="+", default=[512, 64], help="image sizes (default 512 64)")
    ap.add_argument("--db", default=None, help="medcloud database URL (default: SQLite in a temp dir)")
    ap.add_argument("--parallel", type=int, default=4, help="concurrent storescu associations (default 4)")
    ap.add_argument("--no-orthanc", action="store_true", help="skip Orthanc even when installed")
    ap.add_argument("--fast-store", choices=["on", "off", "both"], default="on",
                    help="medcloud's lean C-STORE acceptor (dicom_fast_store): on (default), off (pure pynetdicom) "
                    "or both, one after the other")
    ap.add_argument("--processes", type=int, default=1, help="medcloud SCP processes (dicom_processes, default 1)")
    ap.add_argument("--chunks", type=int, default=1, help="send the set in N consecutive parts and report each "
                    "part's rate (flatness as the archive grows)")
    args = ap.parse_args()
    if shutil.which("storescu") is None:
        sys.exit("dcmtk is not installed: make dcmtk (apt-get install -y dcmtk)")
    started = dt.datetime.now(dt.UTC)
    report: dict[str, object] = {"date": started.isoformat(timespec="seconds"), "n": args.n,
                                 "command": " ".join([Path(sys.argv[0]).name, *sys.argv[1:]]),
                                 "db": args.db or "sqlite", "orthanc": shutil.which("Orthanc") is not None
                                 and not args.no_orthanc, "runs": []}
    runs: list[dict[str, object]] = []
    for size in args.sizes:
        folder = generate(args.n, size)
        with tempfile.TemporaryDirectory(prefix="bench-dimse-") as tmp:
            work = Path(tmp)
            modes = {"on": [True], "off": [False], "both": [True, False]}[args.fast_store]
            ms = [run_medcloud(folder, work, args.db, args.parallel, args.chunks, fast_store=fast,
                               processes=args.processes) for fast in modes]
            o = None if args.no_orthanc else run_orthanc(folder, work, args.parallel, args.chunks)
        m = ms[0]
        row: dict[str, object] = {"size": size, "medcloud": m, "orthanc": o,
                                  "ratio": round(float(m["per_second"]) / float(o["per_second"]), 2) if o else None}
        if len(ms) > 1:
            row["medcloud_pynetdicom"] = ms[1]
        runs.append(row)
        for mm in ms:
            path_name = "lean acceptor" if mm["fast_store"] else "pynetdicom"
            print(f"CT {size}x{size}, {args.n} instances, {args.parallel} associations: medcloud ({path_name}) "
                  f"{mm['per_second']}/s ({mm['seconds']} s, {mm['failed']} failed, "
                  f"{mm['cpu_ms_per_instance']} ms CPU/instance)", flush=True)
        print("  " + (f"Orthanc {o['per_second']}/s ({o['seconds']} s, {o['failed']} failed); ratio {row['ratio']}x"
                      if o else "Orthanc not run"), flush=True)
        if args.chunks > 1:
            print(f"  per chunk of {-(-args.n // args.chunks)}: medcloud {m['per_chunk']}"
                  + (f"; Orthanc {o['per_chunk']}" if o else ""), flush=True)
    report["runs"] = runs
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"{started.strftime('%Y-%m-%dT%H%M%SZ')}-dimse.json"
    path.write_text(json.dumps(report, indent=2) + "\n")
    print(f"results: {path.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
