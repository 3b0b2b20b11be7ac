"""DIMSE ingest benchmark: dcmtk ``storescu`` of N generated instances to medcloud (and Orthanc).

    .venv/bin/python bench/dimse.py                 # 2,000 instances, CT 512x512 and 64x64, SQLite
    .venv/bin/python bench/dimse.py -n 500 --sizes 64 --db postgresql://postgres@127.0.0.1/medcloud_dimse
    .venv/bin/python bench/dimse.py -n 100000 --sizes 64 --chunks 10   # rate per 10k: flat from 0 to 100k?

The instances are deterministic (UIDs derived from the index, fixed pixel pattern) and cached
under bench/data/dimse/. Each run starts a fresh ``medcloud dicom serve`` (and, when the Debian
``Orthanc`` binary is installed, a fresh Orthanc with its default SQLite index) on free ports,
sends the set with ``--parallel`` concurrent ``storescu`` associations (default 4) and reports instances/s from
storescu's wall time. Results go to bench/results/<utc>-dimse.json.
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


def run_medcloud(folder: Path, work: Path, db: str | None, parallel: int, chunks: int) -> dict[str, object]:
    port = free_port()
    exe = str(Path(sys.executable).parent / "medcloud")
    cmd = [exe, "dicom", "serve", "--data-dir", str(work / "medcloud"), "--host", "127.0.0.1", "--port", str(port),
           "--allow-unknown"]
    if db:
        cmd += ["--db", db]
    env = dict(os.environ, MEDCLOUD_LOG_LEVEL="warning")
    log = open(work / "medcloud.log", "wb")  # noqa: SIM115 - closed below
    proc = subprocess.Popen(cmd, stdout=log, stderr=log, env=env, start_new_session=True)
    try:
        wait_port(port, proc)
        return in_chunks(port, "MEDCLOUD", folder, parallel, chunks)
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
            m = run_medcloud(folder, work, args.db, args.parallel, args.chunks)
            o = None if args.no_orthanc else run_orthanc(folder, work, args.parallel, args.chunks)
        row: dict[str, object] = {"size": size, "medcloud": m, "orthanc": o,
                                  "ratio": round(float(m["per_second"]) / float(o["per_second"]), 2) if o else None}
        runs.append(row)
        print(f"CT {size}x{size}, {args.n} instances: medcloud {m['per_second']}/s ({m['seconds']} s, "
              f"{m['failed']} failed)" + (f"; Orthanc {o['per_second']}/s ({o['seconds']} s, {o['failed']} failed);"
                                          f" ratio {row['ratio']}x" if o else "; Orthanc not installed"),
              flush=True)
        if args.chunks > 1:
            print(f"  per chunk of {-(-args.n // args.chunks)}: medcloud {m['per_chunk']}"
                  + (f"; Orthanc {o['per_chunk']}" if o else ""), flush=True)
    report["runs"] = runs
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"{started.strftime('%Y-%m-%dT%H%MZ')}-dimse.json"
    path.write_text(json.dumps(report, indent=2) + "\n")
    print(f"results: {path.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
