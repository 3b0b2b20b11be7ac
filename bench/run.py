"""The issue-3 benchmark: ingest, read by id, ten searches, $everything, $export, server RSS.

    .venv/bin/python bench/run.py                      # 50 patients, SQLite then PostgreSQL
    .venv/bin/python bench/run.py --quick              # 5 patients, short steps (< 2 min)
    .venv/bin/python bench/run.py --backend sqlite --senders 3 --workers 2

For each backend: a fresh ``medcloud serve`` subprocess on a fresh database (SQLite in a temporary
data dir; PostgreSQL database ``medcloud_bench``, dropped afterwards), RSS of its process tree
sampled every 0.5 s throughout. A step whose feature is missing is recorded as
``"unavailable: <status/error>"`` and the run goes on. Prints the JSON and writes
bench/results/<date>T<HHMM>Z-<backend>[-quick].json. Never collected by pytest (STYLE.md section 8).
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import json
import os
import shlex
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _data  # noqa: E402
import _machine  # noqa: E402
import _server  # noqa: E402
import export  # noqa: E402
import ingest  # noqa: E402
import reads  # noqa: E402
import search  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"
STEPS = ("read", "searches", "everything", "export")
GOALS = {
    "ingest_res_per_s": ">= 1300",
    "read_req_per_s": ">= 4000",
    "read_p99_ms": "< 5",
    "search_p50_ms": "< 3",
    "everything_median_ms": "< 20",
    "rss_peak_mib": "< 1024",
}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--backend", choices=("sqlite", "postgres", "both"), default="both")
    p.add_argument(
        "--quick", action="store_true", help="the 5 smallest patients, short durations: checks the harness"
    )
    p.add_argument("--patients", type=int, help="patients to load (default 50, quick 5)")
    p.add_argument(
        "--data",
        type=Path,
        help="Synthea output dir (default /tmp/synthea/p50 if complete, "
        "else generated into bench/data/synthea-p50)",
    )
    p.add_argument("--workers", type=int, default=2, help="server worker processes (default 2)")
    p.add_argument(
        "--compare-workers",
        type=int,
        default=1,
        help="after the run, restart on the same data with this many workers and repeat the "
        "read test (0 = skip; default 1)",
    )
    p.add_argument("--senders", type=int, default=2, help="concurrent transaction senders (default 2)")
    p.add_argument("--read-seconds", type=int, help="wrk duration (default 20, quick 5)")
    p.add_argument("--search-repeats", type=int, help="timed runs per search (default 200, quick 20)")
    p.add_argument(
        "--no-fallback",
        action="store_true",
        help="if transactions are unavailable, do not load by PUT per resource",
    )
    p.add_argument(
        "--steps",
        default=",".join(STEPS),
        help=f"comma-separated steps after ingest (default all: {','.join(STEPS)})",
    )
    p.add_argument("--no-analyze", action="store_true", help="skip the second search pass after ANALYZE")
    p.add_argument("--out", type=Path, default=RESULTS)
    a = p.parse_args(argv)
    a.steps = {x.strip() for x in a.steps.split(",") if x.strip()}
    if a.steps - set(STEPS):
        p.error(f"unknown steps: {', '.join(sorted(a.steps - set(STEPS)))}")
    a.patients = a.patients or (5 if a.quick else 50)
    a.read_seconds = a.read_seconds or (5 if a.quick else 20)
    a.search_repeats = a.search_repeats or (20 if a.quick else 200)
    a.search_budget = 2.0 if a.quick else 20.0
    a.everything = (5, 1) if a.quick else (20, 3)
    return a


def bundle_paths(args: argparse.Namespace) -> list[Path]:
    if args.data is not None:
        data = args.data
    elif len(_data.find_bundles(_data.DEFAULT_SYNTHEA)) >= 50:
        data = _data.DEFAULT_SYNTHEA
    else:
        data = _data.ensure_synthea(50, Path(__file__).resolve().parent / "data" / "synthea-p50")
    paths = _data.find_bundles(data)
    shared = [p for p in paths if p.name.startswith(("hospital", "practitioner"))]
    patients = [p for p in paths if p not in shared]
    if len(patients) < args.patients:
        raise SystemExit(f"{data} holds {len(patients)} patient bundles, {args.patients} wanted")
    if args.quick:  # the smallest bundles: enough to exercise every step in well under two minutes
        patients = sorted(patients, key=lambda p: p.stat().st_size)
    return shared + patients[: args.patients]


def run_backend(
    backend: str, args: argparse.Namespace, bundles: list[_data.Bundle], facts: _data.Facts, meta: dict
) -> dict:  # type: ignore[type-arg]
    result: dict = {**meta, "backend": backend, "load_avg_start": _machine.load_average()}  # type: ignore[type-arg]
    failures: list[str] = []
    result["failures"] = failures
    tmp = Path(tempfile.mkdtemp(prefix=f"medcloud-bench-{backend}-"))
    server: _server.Server | None = None
    sampler: _server.RssSampler | None = None
    pg = False
    try:
        db_url = ""
        if backend == "postgres":
            result["postgres_version"] = _server.pg_version()
            db_url = _server.pg_create()
            pg = True
        server = _server.Server(tmp / "data", db_url, args.workers, tmp / "server.log")
        result["server_command"] = shlex.join(server.command)
        result["startup_s"] = round(server.start(), 2)
        sampler = _server.RssSampler(server)
        sampler.start()

        def step(name: str, fn, *a, **kw):  # type: ignore[no-untyped-def]
            if not server.alive():
                failures.append(f"{name}: skipped, server died: {server.log_tail(10)}")
                return {"result": "skipped: server died"}
            sampler.phase(name)
            watch = _machine.CpuWatch()
            meter = _server.CpuMeter(server, pg)
            print(f"[{backend}] {name} ...", file=sys.stderr, flush=True)
            t0 = time.perf_counter()
            try:
                out = fn(*a, **kw)
            except Exception as e:
                out = {"result": f"failed: {type(e).__name__}: {e}"}
            if isinstance(out, dict):
                out.setdefault("step_seconds", round(time.perf_counter() - t0, 2))
                out.update(watch.result())
                out.update(meter.result())
                if str(out.get("result", "")).startswith(("failed", "unavailable")):
                    failures.append(f"{name}: {out['result']}")
            sampler.end_phase()
            return out

        holder: dict[str, ingest.Loaded] = {}

        def load_with(fn):  # type: ignore[no-untyped-def]
            def go() -> dict:  # type: ignore[type-arg]
                out, holder["loaded"] = fn(server.base, bundles, args.senders)
                return out

            return go

        ing = step("ingest", load_with(ingest.transactions))
        result["ingest"] = ing
        if "unavailable" in ing:
            failures.append(f"ingest: {ing['unavailable']}")
            if not args.no_fallback:
                result["ingest_fallback"] = step(
                    "ingest_fallback", load_with(lambda base, b, _n: ingest.put_fallback(base, b))
                )
        loaded = holder.get("loaded")
        if loaded is None or not loaded.ids:
            failures.append("no data loaded: later steps skipped")
            return result

        want = args.steps.__contains__
        result["counts"] = step("counts", search.type_counts, server.base, facts, loaded)
        paths = reads.pick_ids(loaded)
        if want("read"):
            _warm(server.base, paths, tmp)
            result["read"] = step(
                "read", _read, server.base, paths, tmp, args.read_seconds, f"workers={args.workers}"
            )
        if want("searches"):
            result["floor"] = step("floor", search.floor, server.base, args.search_repeats)
            searches = search.typical_searches(facts, loaded)
            result["searches"] = step(
                "searches",
                lambda: {
                    "list": search.run_searches(
                        server.base, searches, args.search_repeats, args.search_budget
                    )
                },
            )
            _rss_per_search(result["searches"].get("list", []), sampler)
            result["searches"]["summary"] = _search_summary(result["searches"].get("list", []))
        if want("everything"):
            result["everything"] = step(
                "everything", search.run_everything, server.base, facts, loaded, *args.everything
            )
        if want("export"):
            result["export"] = step("export", export.run_export, server.base)
        if want("searches") and not args.no_analyze:
            # The same searches once the planner has statistics (see _server.analyze).
            result["analyze"] = step("analyze", _server.analyze, tmp / "data", pg)
            result["searches_analyzed"] = step(
                "searches_analyzed",
                lambda: {
                    "list": search.run_searches(
                        server.base, searches, args.search_repeats, args.search_budget
                    )
                },
            )
            _rss_per_search(result["searches_analyzed"].get("list", []), sampler)
            result["searches_analyzed"]["summary"] = _search_summary(
                result["searches_analyzed"].get("list", [])
            )
        sampler.stop()
        result["rss"] = sampler.summary()
        server.stop()
        _per_cpu(result)

        if want("read") and args.compare_workers and args.compare_workers != args.workers:
            other = _server.Server(tmp / "data", db_url, args.compare_workers, tmp / "server.log")
            server = other
            other.start()
            _warm(other.base, paths, tmp)
            meter = _server.CpuMeter(other, pg)
            cmp = step_plain(
                failures,
                "read_compare_workers",
                _read,
                other.base,
                paths,
                tmp,
                args.read_seconds,
                f"workers={args.compare_workers}",
            )
            cmp.update(meter.result())
            result["read_compare_workers"] = cmp
            other.stop()
            _per_cpu(result, "read_compare_workers")
    except BaseException as e:
        failures.append(f"aborted: {type(e).__name__}: {e}")
        if server is not None:
            result["server_log_tail"] = server.log_tail()
        if not isinstance(e, Exception):
            raise
    finally:
        if failures and "server_log_tail" not in result:
            result["server_log_tail"] = _log_errors(tmp / "server.log")
        if sampler is not None:
            sampler.stop()
            result.setdefault("rss", sampler.summary())
        _server.stop_all()
        if pg:
            try:
                _server.pg_drop()
            except Exception as e:
                failures.append(f"dropping {_server.PG_BENCH_DB} failed: {e}")
        shutil.rmtree(tmp, ignore_errors=True)
        result["load_avg_end"] = _machine.load_average()
    return result


def _per_cpu(result: dict, *keys: str) -> None:  # type: ignore[type-arg]
    """Work per CPU second used by the server (+ PostgreSQL): a figure that a busy machine distorts less."""
    for key in keys or ("ingest", "ingest_fallback", "read"):
        count = "requests" if key.startswith("read") else "resources_created"
        step = result.get(key) or {}
        cpu = (step.get("server_cpu_s") or 0) + (step.get("postgres_cpu_s") or 0)
        if cpu and step.get(count):
            step[f"{count}_per_cpu_s"] = round(step[count] / cpu, 1)


def _log_errors(path: Path, keep: int = 40) -> list[str]:
    """The server log's last lines around errors (tracebacks), for failures recorded in the result."""
    try:
        lines = path.read_text(errors="replace").splitlines()
    except OSError:
        return []
    return [line[:300] for line in lines[-keep:]]


def step_plain(failures: list[str], name: str, fn, *a):  # type: ignore[no-untyped-def]
    watch = _machine.CpuWatch()
    print(f"{name} ...", file=sys.stderr, flush=True)
    try:
        out = fn(*a)
    except Exception as e:
        out = {"result": f"failed: {type(e).__name__}: {e}"}
        failures.append(f"{name}: {out['result']}")
    out.update(watch.result())
    return out


def _warm(base: str, paths: list[str], tmp: Path) -> None:
    """3 s of the same load, not recorded: connection pools, caches, first-touch of pages."""
    if reads.wrk_available() is not None:
        with contextlib.suppress(Exception):
            reads.run_wrk(base, paths, tmp, seconds=3)


def _read(base: str, paths: list[str], tmp: Path, seconds: int, label: str) -> dict:  # type: ignore[type-arg]
    if reads.wrk_available() is None:
        return {"result": "unavailable: wrk is not installed (apt-get install -y wrk)"}
    problem = reads.check_reads(base, paths)
    if problem:
        return {"result": f"failed: {problem}"}
    out = reads.run_wrk(base, paths, tmp, seconds=seconds)
    out["server"] = label
    if out["errors"]:
        out["result"] = f"failed: wrk errors {out['errors']}"
    return out


def _rss_per_search(rows: list[dict], sampler: _server.RssSampler) -> None:  # type: ignore[type-arg]
    for row in rows:
        t0, t1 = row.pop("_t", (None, None))
        if t0 is None:
            continue
        inside = [s.rss for s in sampler.samples if t0 <= s.t <= (t1 or t0)]
        if inside:
            row["server_rss_peak_mib"] = round(max(inside) / 2**20, 1)


def _search_summary(rows: list[dict]) -> dict:  # type: ignore[type-arg]
    timed = [r for r in rows if "p50_ms" in r]
    return {
        "timed": len(timed),
        "of": len(rows),
        "p50_ms_median_of_searches": round(sorted(r["p50_ms"] for r in timed)[len(timed) // 2], 2)
        if timed
        else None,
        "p50_ms_worst": max((r["p50_ms"] for r in timed), default=None),
        "under_3ms": sum(1 for r in timed if r["p50_ms"] < 3),
        "count_mismatches": [r["name"] for r in rows if r.get("count_ok") is False],
    }


def _display(exe: str) -> str:
    try:
        return str(Path(exe).relative_to(_server.ROOT))
    except ValueError:
        return exe


def write_result(result: dict, out_dir: Path, quick: bool) -> Path:  # type: ignore[type-arg]
    out_dir.mkdir(parents=True, exist_ok=True)
    # <date>T<HHMM>Z: several runs a day keep their own files; names sort by time (report.py relies on it).
    stamp = result["date"][:16].replace(":", "") + "Z"
    name = f"{stamp}-{result['backend']}{'-quick' if quick else ''}.json"
    path = out_dir / name
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(result, indent=2, ensure_ascii=False) + "\n")
    os.replace(tmp, path)
    return path


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    _server.install_signal_cleanup()
    backends = ["sqlite", "postgres"] if args.backend == "both" else [args.backend]
    paths = bundle_paths(args)
    t0 = time.perf_counter()
    bundles, facts = _data.load(paths)
    print(
        f"{len(bundles)} bundles, {sum(b.size for b in bundles)} resources parsed in "
        f"{time.perf_counter() - t0:.1f}s",
        file=sys.stderr,
    )
    meta = {
        "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "command": shlex.join([_display(sys.executable), *sys.argv]),
        "machine": _machine.machine(),
        "git": _machine.git_commit(),
        "goals": GOALS,
        "config": {
            "quick": args.quick,
            "patients": args.patients,
            "bundles": len(bundles),
            "resources": sum(b.size for b in bundles),
            "types": dict(facts.types.most_common()),
            "data": str(paths[0].parent),
            "workers": args.workers,
            "senders": args.senders,
            "read_seconds": args.read_seconds,
            "search_repeats": args.search_repeats,
            "everything_patients_rounds": list(args.everything),
        },
    }
    written = []
    try:
        for backend in backends:
            result = run_backend(backend, args, bundles, facts, meta)
            print(json.dumps(result, indent=2, ensure_ascii=False))
            written.append(write_result(result, args.out, args.quick))
    finally:
        _server.stop_all()
    for p in written:
        print(f"wrote {p}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
