"""SQL-on-FHIR flatten throughput: medcloud on DuckDB and on Spark local vs FHIR4DS (issue 6; not a test).

    nice .venv/bin/python bench/sof.py                       # ~250k Synthea resources (110 patients)
    nice .venv/bin/python bench/sof.py --copies 4            # the same data 4x with suffixed ids (~1M)

Data: seeded Synthea batches (``--batches PATIENTS:SEED,...``, reference date 2025-01-01) cached under
bench/data/sof/, converted once to Bulk-export NDJSON (one file per type) by
``medcloud.analytics.bundles``. Views: bench/views/*.json. Each engine runs in its own subprocess so
its peak RSS (the process tree: Python + the Spark JVM) is its own; each writes every view to a
Parquet file after one untimed warm-up run. resources/s = resources of the view's type / seconds.

FHIR4DS (``pip install 'fhir4ds==0.5.1'``, bench-only): its DuckDB dialect runs ``INSTALL json``,
which fails offline and leaves NULL columns, so the benchmark hands it a connection that skips that
statement (JSON is built into the duckdb wheel). Its resources are loaded into its table with one
native DuckDB INSERT from the same NDJSON (its own ``bulk_load_resources``, 100 literal rows per
batch, is timed separately on a sample and reported as ``fhir4ds_own_loader``); each view is compiled
by its ViewRunner and the SQL is run with ``COPY ... TO parquet``, the same sink as medcloud's.
Its timing includes that INSERT (the load share of the view's resource type), so both sides go
from NDJSON files to a Parquet file. Conformance: medcloud's runner over
tests/conformance/sql-on-fhir-v2 on both engines and, through an adapter (``_Fhir4dsEngine``), on
FHIR4DS. Results: bench/results/<utc>-sof.json and a table on stdout.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import subprocess
import sys
import threading
import time
from datetime import UTC, datetime
from functools import partial
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
DATA = ROOT / "bench" / "data" / "sof"
VIEWS = ROOT / "bench" / "views"
SUITE = ROOT / "tests" / "conformance" / "sql-on-fhir-v2"
ENGINES = ("duckdb", "spark", "fhir4ds")


# -- data ------------------------------------------------------------------------------------------
def _batches(spec: str) -> list[tuple[int, int]]:
    out = []
    for part in spec.split(","):
        patients, seed = part.split(":")
        out.append((int(patients), int(seed)))
    return out


def ensure_ndjson(batches: list[tuple[int, int]], copies: int) -> tuple[Path, dict[str, int]]:
    from medcloud.analytics.bundles import bundles_to_ndjson

    key = "-".join(f"p{p}s{s}" for p, s in batches) + (f"-x{copies}" if copies > 1 else "")
    target = DATA / f"ndjson-{key}"
    if (target / "counts.json").exists():
        return target, json.loads((target / "counts.json").read_text())
    bundles: list[Path] = []
    for patients, seed in batches:
        out = DATA / f"synthea-p{patients}-s{seed}"
        if len(list((out / "fhir").glob("*.json"))) < patients:
            exe = Path(sys.executable).parent / "synthea"
            cmd = [str(exe), "-p", str(patients), "-s", str(seed), "-r", "20250101", "-o", str(out)]
            print("generating:", " ".join(cmd), file=sys.stderr)
            subprocess.run(cmd, check=True, timeout=3600, stdout=subprocess.DEVNULL)
        bundles += sorted((out / "fhir").glob("*.json"))
    partial = target.with_suffix(".partial")
    subprocess.run(["rm", "-rf", str(partial)], check=True)
    counts = bundles_to_ndjson(bundles, partial)
    if copies > 1:
        counts = _replicate(partial, copies)
    (partial / "counts.json").write_text(json.dumps(counts, indent=1))
    partial.rename(target)
    return target, counts


_ID = re.compile(r'^\{"resourceType":"[A-Za-z]+","id":"([^"]+)"')
_LITERAL_REFERENCE = re.compile(r'"reference":"([A-Z][A-Za-z]+/[^"/]+)"')


def _suffix_id(m: re.Match[str], suffix: str) -> str:
    return m.group(0)[:-1] + suffix + '"'


def _suffix_reference(m: re.Match[str], suffix: str) -> str:
    return f'"reference":"{m.group(1)}{suffix}"'


def _replicate(folder: Path, copies: int) -> dict[str, int]:
    """Each file k times, ids and literal references suffixed -cK (k > 0): distinct, equally shaped data."""
    counts: dict[str, int] = {}
    for f in sorted(folder.glob("*.ndjson")):
        tmp = f.with_suffix(".tmp")
        n = 0
        with tmp.open("w", encoding="utf-8") as dst:
            for k in range(copies):
                with f.open(encoding="utf-8") as src:
                    for line in src:
                        if k:
                            line = _ID.sub(partial(_suffix_id, suffix=f"-c{k}"), line, count=1)
                            line = _LITERAL_REFERENCE.sub(partial(_suffix_reference, suffix=f"-c{k}"), line)
                        dst.write(line)
                        n += 1
        tmp.replace(f)
        counts[f.stem] = n
    return counts


# -- peak RSS of a process tree ------------------------------------------------------------------
class PeakRss:
    def __init__(self, pid: int) -> None:
        import psutil

        self.proc = psutil.Process(pid)
        self.peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        import psutil

        while not self._stop.is_set():
            try:
                procs = [self.proc, *self.proc.children(recursive=True)]
                self.peak = max(self.peak, sum(p.memory_info().rss for p in procs if p.is_running()))
            except psutil.Error:
                pass
            self._stop.wait(0.2)

    def stop(self) -> int:
        self._stop.set()
        self._thread.join()
        return self.peak


# -- engines (run in a worker subprocess) --------------------------------------------------------
class _NoInstall:
    """A DuckDB connection that skips ``INSTALL``: FHIR4DS's dialect runs ``INSTALL json; LOAD json;``."""

    def __init__(self, con: Any) -> None:
        self._con = con

    def execute(self, sql: str, *args: Any, **kwargs: Any) -> Any:
        if sql.strip().upper().startswith("INSTALL"):
            return self._con
        return self._con.execute(sql, *args, **kwargs)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._con, name)


def _patch_fhir4ds() -> None:
    """Every DuckDBDialect FHIR4DS makes (its SQL generator makes its own) gets a ``_NoInstall`` connection.

    Patched on the class at run time; site-packages is not edited.
    """
    import duckdb
    from fhir4ds.dialects import duckdb as dialect_module

    cls = dialect_module.DuckDBDialect
    if getattr(cls, "_medcloud_patched", False):
        return
    original = cls.__init__

    def init(self: Any, connection: Any = None, database: str = ":memory:") -> None:
        con = connection if connection is not None else duckdb.connect(database)
        original(self, con if isinstance(con, _NoInstall) else _NoInstall(con), database)

    cls.__init__ = init
    cls._medcloud_patched = True


def _fhir4ds_store(con: Any) -> Any:
    from fhir4ds.datastore import FHIRDataStore
    from fhir4ds.dialects import DuckDBDialect

    _patch_fhir4ds()
    return FHIRDataStore(DuckDBDialect(connection=con))


class _Fhir4dsEngine:
    """medcloud's conformance runner calls ``run(view, source)``; this runs FHIR4DS instead.

    Each call loads the test file's resources into a fresh FHIR4DS store (``load_resources``) and
    executes the view with ``ViewRunner``; any exception FHIR4DS raises becomes medcloud's
    EvaluationError, so expectError cases pass when it rejects the view for whatever reason.
    Cells: Decimal -> float; JSON text of arrays/objects -> parsed; others as DuckDB returns them.
    """

    name = "fhir4ds"

    def run(self, view: dict[str, Any], source: Any) -> Any:
        import decimal

        import duckdb
        from fhir4ds import ViewRunner

        from medcloud.analytics.engines.duckdb import ViewResult
        from medcloud.analytics.errors import EvaluationError

        con = duckdb.connect()
        try:
            store = _fhir4ds_store(con)
            store.load_resources(list(source.resources))
            result = ViewRunner(store).execute_view(view)
            rows = result.fetchall()
            columns = tuple(d[0] for d in result.description)
        except Exception as exc:
            raise EvaluationError(f"fhir4ds: {type(exc).__name__}: {exc}") from exc
        finally:
            con.close()

        def cell(v: Any) -> Any:
            if isinstance(v, decimal.Decimal):
                return float(v)
            if isinstance(v, str) and v[:1] in "[{":
                try:
                    return json.loads(v)
                except ValueError:
                    return v
            return v

        return ViewResult(columns, [dict(zip(columns, map(cell, r), strict=True)) for r in rows])


def _medcloud_engine(name: str, threads: int) -> Any:
    if name == "spark":
        from medcloud.analytics.engines.spark import SparkEngine, local_session

        return SparkEngine(local_session(f"local[{threads}]"))
    import duckdb

    from medcloud.analytics.engines.duckdb import DuckDBEngine

    return DuckDBEngine(duckdb.connect(":memory:", config={"threads": threads}))


def worker(args: argparse.Namespace) -> None:
    ndjson = Path(args.ndjson)
    counts = json.loads((ndjson / "counts.json").read_text())
    views = {p.stem: json.loads(p.read_text()) for p in sorted(VIEWS.glob("*.json"))}
    out_dir = Path(args.work) / args.worker
    out_dir.mkdir(parents=True, exist_ok=True)
    results: list[dict[str, Any]] = []
    extra: dict[str, Any] = {}
    if args.conformance_only:
        from medcloud.analytics.conformance import run_suite

        engine = _Fhir4dsEngine() if args.worker == "fhir4ds" else _medcloud_engine(args.worker, args.threads)
        extra["conformance"] = _conformance(run_suite(SUITE, engine))
    elif args.worker == "fhir4ds":
        results, extra = _run_fhir4ds(ndjson, counts, views, out_dir, args.threads, args.repeat)
    else:
        from medcloud.analytics.engines._sources import NdjsonSource

        engine = _medcloud_engine(args.worker, args.threads)
        source = NdjsonSource((ndjson,))
        start = time.perf_counter()
        engine.write(views["patient_demographics"], source, out_dir / "warmup.parquet", "parquet")
        extra["warmup_s"] = round(time.perf_counter() - start, 3)
        for name, view in views.items():
            times = []
            try:
                for _ in range(args.repeat):
                    start = time.perf_counter()
                    rows = engine.write(view, source, out_dir / f"{name}.parquet", "parquet").rows
                    times.append(time.perf_counter() - start)
            except Exception as exc:
                results.append({"view": name, "error": f"{type(exc).__name__}: {exc}"[:500]})
                continue
            results.append(_timing(name, counts.get(view["resource"], 0), rows, min(times)))
            print(json.dumps({"engine": args.worker, **results[-1]}), file=sys.stderr)
        engine.close()
    Path(args.result).write_text(json.dumps({"results": results, **extra}))


def _timing(view: str, resources: int, rows: int, seconds: float) -> dict[str, Any]:
    return {
        "view": view,
        "resources": resources,
        "rows": rows,
        "seconds": round(seconds, 3),
        "resources_per_s": round(resources / seconds) if seconds else None,
    }


def _conformance(results: list[Any]) -> dict[str, Any]:
    failed = [f"{r.file}: {r.name}: {r.reason[:160]}" for r in results if not r.passed]
    return {"passed": len(results) - len(failed), "total": len(results), "failed": failed}


def _run_fhir4ds(
    ndjson: Path, counts: dict[str, int], views: dict[str, Any], out_dir: Path, threads: int, repeat: int
) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    import duckdb
    from fhir4ds import ViewRunner

    from medcloud.analytics.fhirpath._sqltext import sql_str

    extra: dict[str, Any] = {}
    # Its own loader on a sample (it is far too slow for the whole data set).
    sample_file = ndjson / "Observation.ndjson"
    with sample_file.open(encoding="utf-8") as fh:
        sample = [json.loads(line) for _, line in zip(range(args_sample()), fh, strict=False)]
    con = duckdb.connect(":memory:", config={"threads": threads})
    store = _fhir4ds_store(con)
    start = time.perf_counter()
    store.bulk_load_resources(sample)
    seconds = time.perf_counter() - start
    extra["fhir4ds_own_loader"] = {
        "resources": len(sample), "seconds": round(seconds, 3), "resources_per_s": round(len(sample) / seconds)
    }
    con.close()

    results: list[dict[str, Any]] = []
    con = duckdb.connect(":memory:", config={"threads": threads})
    store = _fhir4ds_store(con)
    runner = ViewRunner(store)
    for name, view in views.items():
        rtype = view["resource"]
        src = ndjson / f"{rtype}.ndjson"
        con.execute(f"DELETE FROM {store.table_name}")
        con.execute(
            f"INSERT INTO {store.table_name} ({store.json_col}) "
            f"SELECT json FROM read_ndjson_objects({sql_str(str(src))}) LIMIT 200"
        )
        reduced, dropped = _reduce(runner, view)
        for variant, v in (("full", view), ("reduced", reduced)):
            if v is None or (variant == "reduced" and not dropped):
                continue
            best = (float("inf"), 0.0)
            try:
                for _ in range(repeat):
                    start = time.perf_counter()
                    con.execute(f"DELETE FROM {store.table_name}")
                    con.execute(
                        f"INSERT INTO {store.table_name} ({store.json_col}) "
                        f"SELECT json FROM read_ndjson_objects({sql_str(str(src))})"
                    )
                    loaded = time.perf_counter() - start
                    sql = runner.execute_view(v).sql
                    target = out_dir / f"{name}.{variant}.parquet"
                    copied = con.execute(f"COPY ({sql}) TO {sql_str(str(target))} (FORMAT parquet)").fetchone()
                    rows = int(copied[0]) if copied else 0
                    best = min(best, (time.perf_counter() - start, loaded))
            except Exception as exc:
                results.append({"view": name, "variant": variant, "error": f"{type(exc).__name__}: {exc}"[:300]})
                continue
            loaded = best[1]
            results.append(_timing(name, counts.get(rtype, 0), rows, best[0]))
            results[-1].update(variant=variant, load_s=round(loaded, 3), null_columns=_null_columns(con, target))
            if variant == "reduced":
                results[-1]["dropped_columns"] = dropped
            print(json.dumps({"engine": "fhir4ds", **results[-1]}), file=sys.stderr)
    con.close()
    return results, extra


def _reduce(runner: Any, view: dict[str, Any]) -> tuple[dict[str, Any] | None, list[str]]:
    """The view without the columns FHIR4DS cannot run (tried one at a time on 200 resources)."""
    import copy

    dropped: list[str] = []
    reduced = copy.deepcopy(view)
    for select in reduced["select"]:
        kept = []
        for col in select.get("column", []):
            probe = {"resource": view["resource"], "select": [{**{k: select[k] for k in select if k != "column"
                                                                 and k != "select"}, "column": [col]}]}
            try:
                runner.execute_view(probe).fetchall()
                kept.append(col)
            except Exception:
                dropped.append(col["name"])
        select["column"] = kept
    reduced["select"] = [s for s in reduced["select"] if s.get("column")]
    return (reduced if reduced["select"] else None), dropped


def args_sample() -> int:
    return int(os.environ.get("SOF_BENCH_FHIR4DS_SAMPLE", "5000"))


def _null_columns(con: Any, path: Path) -> list[str]:
    """Columns that are NULL in every row: how FHIR4DS shows a path it did not understand."""
    from medcloud.analytics.fhirpath._sqltext import sql_str

    cols = [r[0] for r in con.execute(f"DESCRIBE SELECT * FROM read_parquet({sql_str(str(path))})").fetchall()]
    if not cols:
        return []
    counts = con.execute(
        "SELECT " + ", ".join(f'count("{c}")' for c in cols) + f" FROM read_parquet({sql_str(str(path))})"
    ).fetchone()
    return [c for c, n in zip(cols, counts or (), strict=True) if n == 0]


# -- driver --------------------------------------------------------------------------------------
def _same_output(work: Path, view: str) -> dict[str, Any]:
    """Spark vs DuckDB Parquet files at full size: same schema, same rows in the same order."""
    import duckdb

    from medcloud.analytics.fhirpath._sqltext import sql_str

    a, b = work / "duckdb" / f"{view}.parquet", work / "spark" / f"{view}.parquet"
    if not (a.exists() and b.exists()):
        return {"compared": False}
    con = duckdb.connect()
    schema = [con.execute(f"DESCRIBE SELECT * FROM read_parquet({sql_str(str(p))})").fetchall() for p in (a, b)]
    differing = con.execute(
        f"SELECT count(*) FROM (SELECT *, row_number() OVER () AS n FROM read_parquet({sql_str(str(a))}) "
        f"EXCEPT SELECT *, row_number() OVER () AS n FROM read_parquet({sql_str(str(b))}))"
    ).fetchone()
    counts = [con.execute(f"SELECT count(*) FROM read_parquet({sql_str(str(p))})").fetchone() for p in (a, b)]
    return {
        "compared": True,
        "same_schema": schema[0] == schema[1],
        "rows": [c[0] if c else None for c in counts],
        "rows_differing": differing[0] if differing else None,  # (row, position) pairs of duckdb not in spark
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--batches", default="100:7,10:8", help="Synthea batches PATIENTS:SEED,...")
    ap.add_argument("--copies", type=int, default=1, help="repeat the data N times with suffixed ids")
    ap.add_argument("--engines", default=",".join(ENGINES))
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeat", type=int, default=3, help="runs per view; the fastest counts (shared machine)")
    ap.add_argument("--work", type=Path, default=DATA / "work")
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "results")
    ap.add_argument("--no-conformance", dest="conformance", action="store_false")
    ap.add_argument("--worker", choices=ENGINES, help=argparse.SUPPRESS)
    ap.add_argument("--conformance-only", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--ndjson", help=argparse.SUPPRESS)
    ap.add_argument("--result", help=argparse.SUPPRESS)
    ap.add_argument("--table", type=Path, help="print the table of an earlier results file and stop")
    args = ap.parse_args()
    if args.table:
        _print_table(json.loads(args.table.read_text()))
        return
    if args.worker:
        worker(args)
        return

    ndjson, counts = ensure_ndjson(_batches(args.batches), args.copies)
    total = sum(counts.values())
    print(f"data: {ndjson} ({total} resources)", file=sys.stderr)
    engines: dict[str, Any] = {}
    for name in args.engines.split(","):
        result = args.work / f"{name}.json"
        cmd = [
            sys.executable, __file__, "--worker", name, "--ndjson", str(ndjson), "--result", str(result),
            "--work", str(args.work), "--threads", str(args.threads), "--repeat", str(args.repeat),
        ]
        start = time.perf_counter()
        proc = subprocess.Popen(cmd, cwd=ROOT)
        rss = PeakRss(proc.pid)
        code = proc.wait()
        peak = rss.stop()
        if code != 0 or not result.exists():
            engines[name] = {"error": f"worker exited {code}"}
            continue
        engines[name] = json.loads(result.read_text())
        engines[name]["peak_rss_mb"] = round(peak / 2**20)
        engines[name]["wall_s"] = round(time.perf_counter() - start, 1)
        if args.conformance:  # its own process, so the flatten's peak RSS is the flatten's alone
            subprocess.run([*cmd, "--conformance-only"], cwd=ROOT, check=False)
            conformance = json.loads(result.read_text()).get("conformance") if result.exists() else None
            if conformance:
                engines[name]["conformance"] = conformance

    parity = {v.stem: _same_output(args.work, v.stem) for v in sorted(VIEWS.glob("*.json"))}
    report = {
        "utc": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "data": {"batches": args.batches, "copies": args.copies, "resources": total, "by_type": counts},
        "threads": args.threads,
        "repeat": args.repeat,
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version()},
        "versions": _versions(),
        "engines": engines,
        "spark_vs_duckdb_output": parity,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / f"{report['utc'].replace(':', '').replace('-', '')}-sof.json"
    path.write_text(json.dumps(report, indent=2) + "\n")
    _print_table(report)
    print(f"written: {path}")


def _versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    out = {}
    for pkg in ("duckdb", "pyspark", "fhir4ds", "medcloud"):
        try:
            out[pkg] = version(pkg)
        except PackageNotFoundError:
            out[pkg] = "not installed"
    return out


def _pick(results: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Per view: the full run if it worked, else the reduced one (FHIR4DS), marked."""
    by: dict[str, dict[str, Any]] = {}
    for r in results:
        if r["view"] not in by or ("error" in by[r["view"]] and "error" not in r):
            by[r["view"]] = r
    return by


def _fhir4ds_own_loader_rate(report: dict[str, Any], r: dict[str, Any]) -> int | None:
    """FHIR4DS end to end with its own loader: the sample's load rate instead of our native INSERT."""
    own = report["engines"].get("fhir4ds", {}).get("fhir4ds_own_loader")
    if not own or not r.get("resources_per_s") or not r.get("resources"):
        return None
    query_s = max(r["seconds"] - r.get("load_s", 0.0), 0.0)
    return round(r["resources"] / (r["resources"] / own["resources_per_s"] + query_s))


def _print_table(report: dict[str, Any]) -> None:
    engines = report["engines"]
    names = list(engines)
    by = {n: _pick(engines[n].get("results", [])) for n in names}
    views = sorted({v for n in names for v in by[n]})
    ratios = [n for n in names if n != "fhir4ds" and "fhir4ds" in names]
    extra = ["fhir4ds own-load"] if "fhir4ds" in names else []
    print(f"{'view':22}{'resources':>10}" + "".join(f"{n + ' res/s':>20}" for n in [*names, *extra])
          + "".join(f"{n + '/fhir4ds':>17}" for n in ratios)
          + "".join(f"{n + '/own-load':>17}" for n in ratios if extra))
    for v in views:
        line = f"{v:22}{next((by[n][v].get('resources', 0) for n in names if v in by[n]), 0):>10}"
        rows = {n: by[n].get(v, {}).get("rows") for n in names}
        usable: dict[str, int | None] = {}
        for n in names:
            r = by[n].get(v, {})
            rate = r.get("resources_per_s")
            mark = ""
            if r.get("variant") == "reduced":
                mark = "*"
            if rate and rows.get("duckdb") and not r.get("rows"):
                mark = "!"  # ran, but produced no rows where medcloud found some
            usable[n] = rate if rate and mark != "!" else None
            line += f"{(f'{rate}{mark}' if rate else 'error'):>20}"
        own = None
        if extra:
            r = by["fhir4ds"].get(v, {})
            own = _fhir4ds_own_loader_rate(report, r) if usable.get("fhir4ds") else None
            line += f"{(f'{own}' + ('*' if r.get('variant') == 'reduced' else '') if own else '-'):>20}"
        for n in ratios:
            a, b = usable.get(n), usable.get("fhir4ds")
            line += f"{(f'{a / b:.1f}x' if a and b else '-'):>17}"
        for n in ratios if extra else []:
            a = usable.get(n)
            line += f"{(f'{a / own:.1f}x' if a and own else '-'):>17}"
        print(line)
    print("* FHIR4DS ran only the columns it can compile (dropped_columns); ! it returned no rows;")
    print("  own-load: FHIR4DS with its own bulk_load_resources rate (sampled) instead of a native INSERT")
    for n in names:
        conf = engines[n].get("conformance", {})
        print(f"{n}: peak RSS {engines[n].get('peak_rss_mb')} MB; conformance "
              f"{conf.get('passed', '-')}/{conf.get('total', '-')}")


if __name__ == "__main__":
    main()
