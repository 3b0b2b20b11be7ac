"""DICOMweb side by side with Orthanc: STOW-RS, QIDO-RS, WADO-RS metadata, rendered JPEG (issue 5).

    .venv/bin/python bench/imaging.py --quick       # smoke run: 80 + 50 small instances, ~1 minute
    .venv/bin/python bench/imaging.py               # 200 patients x 3 studies x 4 (64x64) + 500 x 512x512
    .venv/bin/python bench/imaging.py --db postgresql://postgres@127.0.0.1/medcloud_bench   # or --db postgres
    make bench-imaging BENCH_ARGS=--quick

One run starts a fresh ``medcloud serve --no-auth`` (SQLite in a temp dir unless ``--db``; DIMSE
off) and a fresh Orthanc with its DICOMweb plugin at ``/dicom-web/`` (stock plugin settings, SQLite
index), both on free ports on 127.0.0.1, and measures both in the same run, test by test
(medcloud first, then Orthanc, so drift of a shared machine hits both alike):

* STOW-RS instances/s: the population (patients x studies x instances, CT ``--size``) and then one
  ``--series-instances`` series (CT ``--series-size``), in ``--batch`` instances per
  multipart/related request from ``--stow-clients`` concurrent clients; same files, same bodies.
* QIDO-RS study search p50/p99 by PatientID, by a one-month StudyDate range, by PatientName prefix
  wildcard (``--requests`` each from ``--clients`` concurrent clients, rotating over the values).
* WADO-RS metadata of the big series (what OHIF waits for before the first image) p50/p99, one
  client (one viewer opening one series).
* ``.../instances/{i}/rendered`` (Accept: image/jpeg) p50/p99, rotating over the big series.

Every response is checked against the generator's ground truth (status, the exact set of study or
instance UIDs, JPEG magic and size), so a fast wrong answer is counted as wrong, not as fast.
Latencies are client-side (httpx, one keep-alive connection per client). Results go to
bench/results/<utc>-imaging[-quick].json with the machine, load average and git commit.
"""

from __future__ import annotations

import argparse
import calendar
import datetime as dt
import io
import json
import shlex
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _machine  # noqa: E402
import _server  # noqa: E402
from _dicom import (  # noqa: E402
    DATA,
    ORTHANC_INSTALL,
    RESULTS,
    ROOT,
    CtInstance,
    Orthanc,
    dicomweb_plugin,
    orthanc_executable,
    orthanc_version,
    uid,
    write_set,
)

FAMILIES = ("Smith", "Jones", "Garcia", "Miller", "Davis", "Lopez", "Wilson", "Moore", "Taylor", "Thomas",
            "Martin", "Clark", "Lewis", "Walker", "Hall", "Young", "King", "Wright", "Scott", "Baker")
FIRST_DAY = dt.date(2020, 1, 1)
DAYS = 4 * 365  # study dates spread over 2020-2023
JPEG_MAGIC = b"\xff\xd8\xff"
SOP_INSTANCE_UID, STUDY_INSTANCE_UID = "00080018", "0020000D"
WARMUP_N = 4
WARMUP = DATA / "imaging" / f"warmup-{WARMUP_N}-ct64"


# -- the data -----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Population:
    patients: int
    studies_per_patient: int
    instances_per_study: int
    size: int

    @property
    def n(self) -> int:
        return self.patients * self.studies_per_patient * self.instances_per_study

    @property
    def folder(self) -> Path:
        return DATA / "imaging" / (f"pop-p{self.patients}-s{self.studies_per_patient}-"
                                   f"i{self.instances_per_study}-ct{self.size}")

    def specs(self) -> Iterable[CtInstance]:
        """One series per study; dates spread over four years so month ranges match a few studies."""
        for p in range(self.patients):
            for s in range(self.studies_per_patient):
                date = FIRST_DAY + dt.timedelta(days=(p * 37 + s * 411) % DAYS)
                for k in range(self.instances_per_study):
                    yield CtInstance(
                        sop_uid=uid(f"bench-imaging-sop-{p}-{s}-{k}"),
                        study_uid=uid(f"bench-imaging-study-{p}-{s}"),
                        series_uid=uid(f"bench-imaging-series-{p}-{s}"),
                        patient_id=f"IMG-{p:05d}",
                        patient_name=f"{FAMILIES[p % len(FAMILIES)]}^P{p:05d}",
                        study_date=date.strftime("%Y%m%d"),
                        accession=f"IA{p:05d}{s:02d}",
                        study_id=str(s + 1),
                        series_number=1,
                        instance_number=k + 1,
                    )


@dataclass(frozen=True)
class BigSeries:
    """One study with one series of ``n`` instances (the WADO-RS metadata and rendered tests)."""

    n: int
    size: int

    @property
    def folder(self) -> Path:
        return DATA / "imaging" / f"series-{self.n}-ct{self.size}"

    @property
    def study_uid(self) -> str:
        return uid(f"bench-imaging-big-study-{self.n}")

    @property
    def series_uid(self) -> str:
        return uid(f"bench-imaging-big-series-{self.n}")

    def specs(self) -> Iterable[CtInstance]:
        for k in range(self.n):
            yield CtInstance(
                sop_uid=uid(f"bench-imaging-big-sop-{self.n}-{k}"), study_uid=self.study_uid,
                series_uid=self.series_uid, patient_id="IMG-SERIES", patient_name="Series^Big",
                study_date="20240615", accession="IASERIES", study_id="1", series_number=1,
                instance_number=k + 1, description="bench series",
            )


def warmup_specs(n: int) -> Iterable[CtInstance]:
    """A study outside every QIDO test's range (own patient, 2019), sent before STOW is timed."""
    for k in range(n):
        yield CtInstance(
            sop_uid=uid(f"bench-imaging-warmup-sop-{k}"), study_uid=uid(f"bench-imaging-warmup-study-{k}"),
            series_uid=uid(f"bench-imaging-warmup-series-{k}"), patient_id="IMG-WARMUP",
            patient_name="Warmup^Only", study_date="20190101", accession="IAWARMUP", study_id="1",
            series_number=1, instance_number=1, description="bench warm-up",
        )


def study_index(pop: Population) -> dict[str, dict[str, str]]:
    """StudyInstanceUID -> PatientID, family name, StudyDate: the ground truth of the QIDO tests."""
    out: dict[str, dict[str, str]] = {}
    for spec in pop.specs():
        out.setdefault(spec.study_uid, {"pid": spec.patient_id, "family": spec.patient_name.split("^")[0],
                                        "date": spec.study_date})
    return out


# -- requests and measurement -------------------------------------------------------------------------


@dataclass
class Req:
    path: str
    expected: Any
    headers: dict[str, str] = field(default_factory=dict)


Check = Callable[[httpx.Response, Any], str | None]


def measure(base: str, reqs: list[Req], clients: int, check: Check, warmup: int = 5) -> dict[str, Any]:
    """Send ``reqs`` from ``clients`` threads (round-robin slices); latency per request, every answer checked.

    Responses are checked once all clients are done, so decoding them does not take CPU from the
    server under test. Warm-up requests (first of each client's slice, not timed) open the connection
    and fill caches both servers would have warm in production.
    """
    slices = [reqs[i::clients] for i in range(clients)]
    answers: list[tuple[Req, httpx.Response]] = []

    def run(part: list[Req]) -> list[float]:
        times = []
        with httpx.Client(base_url=base, timeout=120) as client:
            for r in part[:max(1, warmup // clients)]:
                client.get(r.path, headers=r.headers)
            for r in part:
                t0 = time.perf_counter()
                resp = client.get(r.path, headers=r.headers)
                times.append(time.perf_counter() - t0)
                answers.append((r, resp))
        return times

    watch = _machine.CpuWatch()
    t0 = time.perf_counter()
    with ThreadPoolExecutor(clients) as pool:
        all_times = [t for times in pool.map(run, [s for s in slices if s]) for t in times]
    wall = time.perf_counter() - t0
    cpu = watch.result()
    errors = [f"GET {r.path}: {err}" for r, resp in answers if (err := check(resp, r.expected))]
    return {**latency_summary(all_times), "clients": clients, "req_per_s": round(len(all_times) / wall, 1),
            "wrong": len(errors), "errors": errors[:5], **cpu}


def latency_summary(times: list[float]) -> dict[str, Any]:
    ms = sorted(t * 1000 for t in times)
    if not ms:
        return {"requests": 0}

    def pct(q: float) -> float:
        return round(ms[min(len(ms) - 1, int(round(q / 100 * (len(ms) - 1))))], 2)

    return {"requests": len(ms), "p50_ms": pct(50), "p99_ms": pct(99), "mean_ms": round(statistics.fmean(ms), 2),
            "max_ms": round(ms[-1], 2)}


def stow_bodies(folder: Path, batch: int) -> list[tuple[bytes, str, list[str]]]:
    """multipart/related; type="application/dicom" bodies of ``batch`` files: (body, boundary, SOP UIDs)."""
    import pydicom

    files = sorted(folder.glob("*.dcm"))
    out = []
    for i in range(0, len(files), batch):
        boundary = f"bench-imaging-{i:08d}"
        parts, uids = [], []
        for f in files[i:i + batch]:
            data = f.read_bytes()
            uids.append(str(pydicom.dcmread(f, stop_before_pixels=True).SOPInstanceUID))
            parts.append(b"--" + boundary.encode() + b"\r\nContent-Type: application/dicom\r\n\r\n" + data + b"\r\n")
        out.append((b"".join(parts) + b"--" + boundary.encode() + b"--\r\n", boundary, uids))
    return out


def stow(base: str, bodies: list[tuple[bytes, str, list[str]]], clients: int) -> dict[str, Any]:
    """POST every body to ``{base}/studies``; instances/s over the wall time of all requests."""
    errors: list[str] = []

    def run(part: list[tuple[bytes, str, list[str]]]) -> list[float]:
        times = []
        with httpx.Client(base_url=base, timeout=300) as client:
            for body, boundary, uids in part:
                headers = {"Content-Type": f'multipart/related; type="application/dicom"; boundary={boundary}',
                           "Accept": "application/dicom+json"}
                t0 = time.perf_counter()
                resp = client.post("/studies", content=body, headers=headers)
                times.append(time.perf_counter() - t0)
                err = check_stow(resp, uids)
                if err:
                    errors.append(f"POST /studies ({len(uids)} instances): {err}")
        return times

    watch = _machine.CpuWatch()
    t0 = time.perf_counter()
    with ThreadPoolExecutor(clients) as pool:
        times = [t for ts in pool.map(run, [bodies[i::clients] for i in range(clients)]) for t in ts]
    wall = time.perf_counter() - t0
    n = sum(len(u) for _, _, u in bodies)
    return {"instances": n, "requests": len(bodies), "batch": len(bodies[0][2]) if bodies else 0,
            "clients": clients, "seconds": round(wall, 2), "per_second": round(n / wall, 1),
            "request_p50_ms": latency_summary(times).get("p50_ms"), "wrong": len(errors), "errors": errors[:5],
            **watch.result()}


# -- checks: a fast wrong answer must not win -----------------------------------------------------------


def _json(resp: httpx.Response) -> Any:
    return json.loads(resp.content) if resp.content.strip() else []


def _values(items: list[dict[str, Any]], tag: str) -> list[str]:
    return [str((item.get(tag) or {}).get("Value", [None])[0]) for item in items]


def check_stow(resp: httpx.Response, uids: list[str]) -> str | None:
    if resp.status_code != 200:
        return f"HTTP {resp.status_code}: {resp.text[:200]}"
    body = _json(resp)
    failed = (body.get("00081198") or {}).get("Value", [])
    stored = {v for item in (body.get("00081199") or {}).get("Value", [])
              for v in (item.get("00081155") or {}).get("Value", [])}
    if failed or stored != set(uids):
        return f"{len(stored)} of {len(uids)} referenced, {len(failed)} failed"
    return None


def check_studies(resp: httpx.Response, expected: set[str]) -> str | None:
    if resp.status_code != 200:
        return f"HTTP {resp.status_code}: {resp.text[:200]}"
    got = _values(_json(resp), STUDY_INSTANCE_UID)
    if len(got) != len(expected) or set(got) != expected:
        return f"{len(got)} studies, expected {len(expected)} ({len(set(got) & expected)} of them right)"
    return None


def check_metadata(resp: httpx.Response, expected: set[str]) -> str | None:
    if resp.status_code != 200:
        return f"HTTP {resp.status_code}: {resp.text[:200]}"
    got = _values(_json(resp), SOP_INSTANCE_UID)
    if len(got) != len(expected) or set(got) != expected:
        return f"{len(got)} instances, expected {len(expected)} ({len(set(got) & expected)} of them right)"
    return None


def check_jpeg(resp: httpx.Response, size: int) -> str | None:
    if resp.status_code != 200:
        return f"HTTP {resp.status_code}: {resp.text[:200]}"
    if not resp.content.startswith(JPEG_MAGIC):
        return f"not a JPEG (Content-Type {resp.headers.get('content-type')!r}, starts {resp.content[:4]!r})"
    from PIL import Image

    with Image.open(io.BytesIO(resp.content)) as img:
        if img.size != (size, size):
            return f"JPEG of {img.size[0]}x{img.size[1]}, expected {size}x{size}"
    return None


# -- the run ------------------------------------------------------------------------------------------


def qido_requests(pop: Population, n: int) -> dict[str, list[Req]]:
    """``n`` requests per QIDO test, rotating over the values, each with its exact set of studies."""
    studies = study_index(pop)
    pids = sorted({s["pid"] for s in studies.values()})
    months = sorted({s["date"][:6] for s in studies.values()})
    prefixes = sorted({f[:3] for f in FAMILIES})

    def starting(key: str, prefix: str) -> set[str]:
        return {u for u, s in studies.items() if s[key].startswith(prefix)}

    out: dict[str, list[Req]] = {"qido_patient_id": [], "qido_study_date": [], "qido_patient_name": []}
    for i in range(n):
        pid, month, pre = pids[i % len(pids)], months[(i * 7) % len(months)], prefixes[i % len(prefixes)]
        out["qido_patient_id"].append(Req(f"/studies?PatientID={pid}", starting("pid", pid)))  # ids: same length
        last = calendar.monthrange(int(month[:4]), int(month[4:]))[1]
        out["qido_study_date"].append(Req(f"/studies?StudyDate={month}01-{month}{last}", starting("date", month)))
        out["qido_patient_name"].append(Req(f"/studies?PatientName={pre}*", starting("family", pre)))
    return out


TESTS = (  # name, unit, which direction is better
    ("stow_population", "inst/s", "higher"),
    ("stow_series", "inst/s", "higher"),
    ("qido_patient_id", "ms", "lower"),
    ("qido_study_date", "ms", "lower"),
    ("qido_patient_name", "ms", "lower"),
    ("wado_metadata", "ms", "lower"),
    ("rendered_jpeg", "ms", "lower"),
)


def run_all(targets: dict[str, str], pop: Population, big: BigSeries, args: argparse.Namespace,
            log: Callable[[str], None]) -> dict[str, dict[str, Any]]:
    out: dict[str, dict[str, Any]] = {name: {} for name in targets}

    def each(test: str, fn: Callable[[str], dict[str, Any]]) -> None:
        for name, base in targets.items():
            log(f"{test} on {name} ...")
            try:
                out[name][test] = fn(base)
            except Exception as e:  # a failing target is reported, the other still measured
                out[name][test] = {"failed": f"{type(e).__name__}: {e}"}

    # One single-instance STOW per client first (not timed): each server process pays its one-time
    # costs (lazy imports, first connection, first patient) outside the figures.
    warm = stow_bodies(WARMUP, 1)
    each("warmup", lambda base: stow(base, warm, len(warm)))
    for test, folder in (("stow_population", pop.folder), ("stow_series", big.folder)):
        bodies = stow_bodies(folder, args.batch)  # built before the clock starts; same bytes to both
        each(test, lambda base, bodies=bodies: stow(base, bodies, args.stow_clients))  # type: ignore[misc]
    for test, reqs in qido_requests(pop, args.requests).items():
        each(test, lambda base, reqs=reqs: measure(base, reqs, args.clients, check_studies))  # type: ignore[misc]
    sops = {s.sop_uid for s in big.specs()}
    meta = [Req(f"/studies/{big.study_uid}/series/{big.series_uid}/metadata", sops,
                {"Accept": "application/dicom+json"}) for _ in range(args.metadata_requests)]
    each("wado_metadata", lambda base: measure(base, meta, 1, check_metadata, warmup=2))
    sop_list = [s.sop_uid for s in big.specs()]
    rendered = [Req(f"/studies/{big.study_uid}/series/{big.series_uid}/instances/{sop_list[i % len(sop_list)]}"
                    "/rendered", big.size, {"Accept": "image/jpeg"}) for i in range(args.requests)]
    each("rendered_jpeg", lambda base: measure(base, rendered, args.clients, check_jpeg))
    return out


def _figure(r: dict[str, Any] | None, unit: str) -> tuple[str, float | None]:
    if not r:
        return "-", None
    if "failed" in r:
        return "failed", None
    wrong = f" ({r['wrong']} wrong)" if r.get("wrong") else ""
    if unit == "inst/s":
        return f"{r['per_second']}{wrong}", float(r["per_second"])
    return f"{r['p50_ms']} / {r['p99_ms']}{wrong}", float(r["p50_ms"])


def ratios(results: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """medcloud / Orthanc per test: the p50 for latencies, instances/s for STOW; ``better`` says which way."""
    out = {}
    m, o = results.get("medcloud", {}), results.get("orthanc", {})
    for test, unit, better in TESTS:
        _, mv = _figure(m.get(test), unit)
        _, ov = _figure(o.get(test), unit)
        row: dict[str, Any] = {"better": better, "ratio": round(mv / ov, 2) if mv and ov else None}
        if unit == "ms":
            mp, op = (m.get(test) or {}).get("p99_ms"), (o.get(test) or {}).get("p99_ms")
            row["ratio_p99"] = round(mp / op, 2) if mp and op else None
        wrong = any((r.get(test) or {}).get("wrong") or "failed" in (r.get(test) or {}) for r in (m, o))
        if wrong:
            row["note"] = "a wrong or failed answer: the ratio does not count"
        out[test] = row
    return out


def table(results: dict[str, dict[str, Any]], rat: dict[str, dict[str, Any]], pop: Population,
          big: BigSeries) -> str:
    labels = {
        "stow_population": f"STOW-RS {pop.n} x CT {pop.size}x{pop.size}, inst/s",
        "stow_series": f"STOW-RS {big.n} x CT {big.size}x{big.size}, inst/s",
        "qido_patient_id": "QIDO studies by PatientID, p50 / p99 ms",
        "qido_study_date": "QIDO studies by StudyDate month, p50 / p99 ms",
        "qido_patient_name": "QIDO studies by PatientName prefix*, p50 / p99 ms",
        "wado_metadata": f"WADO-RS metadata of {big.n}-instance series, p50 / p99 ms",
        "rendered_jpeg": f"rendered JPEG {big.size}x{big.size}, p50 / p99 ms",
    }
    rows = [("test", "medcloud", "Orthanc", "medcloud/Orthanc", "better if")]
    for test, unit, better in TESTS:
        m, _ = _figure(results.get("medcloud", {}).get(test), unit)
        o, _ = _figure(results.get("orthanc", {}).get(test), unit)
        r = rat.get(test, {})
        ratio = "-" if r.get("ratio") is None else f"{r['ratio']}x" + (" (!)" if r.get("note") else "")
        verdict = "ratio > 1" if better == "higher" else "ratio < 1"
        rows.append((labels[test], m, o, ratio, verdict))
    widths = [max(len(row[i]) for row in rows) for i in range(5)]
    lines = ["  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)) for row in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="small set, few requests: checks the harness (~1 min)")
    ap.add_argument("--patients", type=int, help="patients (default 200, quick 20)")
    ap.add_argument("--studies-per-patient", type=int, help="default 3, quick 2")
    ap.add_argument("--instances-per-study", type=int, help="default 4, quick 2")
    ap.add_argument("--size", type=int, default=64, help="population image size (default 64)")
    ap.add_argument("--series-instances", type=int, help="instances of the big series (default 500, quick 50)")
    ap.add_argument("--series-size", type=int, help="big series image size (default 512, quick 64)")
    ap.add_argument("--batch", type=int, default=20, help="instances per STOW-RS request (default 20)")
    ap.add_argument("--stow-clients", type=int, default=4, help="concurrent STOW-RS clients (default 4)")
    ap.add_argument("--requests", type=int, help="requests per QIDO/rendered test (default 500, quick 50)")
    ap.add_argument("--metadata-requests", type=int, help="series metadata requests (default 100, quick 10)")
    ap.add_argument("--clients", type=int, default=4, help="concurrent clients for QIDO/rendered (default 4)")
    ap.add_argument("--workers", type=int, default=2, help="medcloud worker processes (default 2)")
    ap.add_argument("--db", default=None,
                    help="medcloud database: an empty PostgreSQL URL, or 'postgres' for a fresh database "
                         f"{_server.PG_BENCH_DB} (dropped after); default SQLite in a temp dir")
    ap.add_argument("--no-orthanc", action="store_true", help="measure medcloud only")
    args = ap.parse_args(argv)
    q = args.quick
    for name, full, quick in (("patients", 200, 20), ("studies_per_patient", 3, 2), ("instances_per_study", 4, 2),
                              ("series_instances", 500, 50), ("series_size", 512, 64), ("requests", 500, 50),
                              ("metadata_requests", 100, 10)):
        if getattr(args, name) is None:
            setattr(args, name, quick if q else full)
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if not args.no_orthanc and (orthanc_executable() is None or dicomweb_plugin() is None):
        sys.exit(f"Orthanc with its DICOMweb plugin is needed ({ORTHANC_INSTALL}), or pass --no-orthanc")
    _server.install_signal_cleanup()

    def log(msg: str) -> None:
        print(f"[imaging] {msg}", file=sys.stderr, flush=True)

    started = dt.datetime.now(dt.UTC)
    pop = Population(args.patients, args.studies_per_patient, args.instances_per_study, args.size)
    big = BigSeries(args.series_instances, args.series_size)
    log(f"data: {pop.n} instances ({pop.folder.name}), {big.n} ({big.folder.name}) under {DATA.relative_to(ROOT)}")
    write_set(pop.folder, pop.specs(), pop.size, pop.n)
    write_set(big.folder, big.specs(), big.size, big.n)
    write_set(WARMUP, warmup_specs(WARMUP_N), 64, WARMUP_N)

    report: dict[str, Any] = {
        "date": started.isoformat(timespec="seconds"), "command": shlex.join(["bench/imaging.py", *sys.argv[1:]]),
        "quick": args.quick, "machine": _machine.machine(), "load_avg_start": _machine.load_average(),
        "git": _machine.git_commit(),
        "data": {"population": {"patients": pop.patients, "studies_per_patient": pop.studies_per_patient,
                                "instances_per_study": pop.instances_per_study, "instances": pop.n,
                                "size": pop.size},
                 "series": {"instances": big.n, "size": big.size}},
        "settings": {k: getattr(args, k) for k in ("batch", "stow_clients", "requests", "metadata_requests",
                                                   "clients", "workers")},
    }
    work = Path(tempfile.mkdtemp(prefix="bench-imaging-"))
    server: _server.Server | None = None
    orthanc: Orthanc | None = None
    pg_fresh = args.db == "postgres"
    try:
        db_url = _server.pg_create() if pg_fresh else (args.db or "")
        server = _server.Server(work / "medcloud", db_url, args.workers, work / "medcloud.log")
        server.command += ["--dicom-port", "0"]  # HTTP only: no clash with another SCP on 11112
        report["medcloud"] = {"db": "postgresql" if db_url else "sqlite", "workers": args.workers,
                              "command": shlex.join(server.command), "startup_s": round(server.start(), 2)}
        targets = {"medcloud": f"http://127.0.0.1:{server.port}/dicomweb"}
        if not args.no_orthanc:
            orthanc = Orthanc(work, dicomweb=True)
            orthanc.start()
            targets["orthanc"] = orthanc.base
            report["orthanc"] = {"version": orthanc_version(), "plugin": str(dicomweb_plugin()),
                                 "config": orthanc.config}
        results = run_all(targets, pop, big, args, log)
        report["results"] = results
        report["ratios"] = ratios(results)
        report["load_avg_end"] = _machine.load_average()
        print(table(results, report["ratios"], pop, big))
        for name, per in results.items():
            for test, r in per.items():
                for err in (r.get("errors") or []) + ([r["failed"]] if "failed" in r else []):
                    print(f"  {name} {test}: {err}")
    finally:
        if orthanc is not None:
            orthanc.stop()
        if server is not None:
            if not server.alive():
                report.setdefault("medcloud", {})["log_tail"] = server.log_tail()
            server.stop()
        if pg_fresh:
            _server.pg_drop()
        shutil.rmtree(work, ignore_errors=True)
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"{started.strftime('%Y-%m-%dT%H%MZ')}-imaging{'-quick' if args.quick else ''}.json"
    if path.exists():  # two runs in one minute: keep both
        path = path.with_name(f"{started.strftime('%Y-%m-%dT%H%M%SZ')}-imaging{'-quick' if args.quick else ''}.json")
    path.write_text(json.dumps(report, indent=2) + "\n")
    print(f"results: {path.relative_to(ROOT)}")
    wrong = sum(int(r.get("wrong", 0)) + ("failed" in r) for per in report["results"].values() for r in per.values())
    return 1 if wrong else 0


if __name__ == "__main__":
    sys.exit(main())
