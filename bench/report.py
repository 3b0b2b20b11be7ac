"""Render benchmark results as the Markdown table used in BENCHMARKS.md (SQLite and PostgreSQL side by side).

.venv/bin/python bench/report.py                       # newest full run of each backend
.venv/bin/python bench/report.py bench/results/2026-11-26-sqlite.json bench/results/...
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"


def newest(quick: bool = False) -> list[Path]:
    out = []
    for backend in ("sqlite", "postgres"):
        suffix = f"-{backend}-quick.json" if quick else f"-{backend}.json"
        files = sorted(p for p in RESULTS.glob(f"*{suffix}"))
        if files:
            out.append(files[-1])
    return out


def _get(d: dict, *path: str) -> object:  # type: ignore[type-arg]
    for k in path:
        if not isinstance(d, dict):
            return None
        d = d.get(k)  # type: ignore[assignment]
    return d


def _fmt(v: object, unit: str = "") -> str:
    if v is None:
        return "–"
    if isinstance(v, float):
        v = f"{v:,.1f}" if v >= 100 else f"{v:.2f}" if v < 10 else f"{v:.1f}"
    elif isinstance(v, int):
        v = f"{v:,}"
    return f"{v}{unit}"


def _step_or(r: dict, key: str, fn: Callable[[dict], str]) -> str:  # type: ignore[type-arg]
    step = r.get(key)
    if not isinstance(step, dict):
        return "–"
    if "result" in step and str(step["result"]).startswith(("unavailable", "failed", "skipped")):
        return str(step["result"]).split(":", 1)[0]
    return fn(step)


def rows(results: list[dict]) -> list[tuple[str, str, list[str]]]:  # type: ignore[type-arg]
    out: list[tuple[str, str, list[str]]] = []

    def add(label: str, goal: str, fn: Callable[[dict], str]) -> None:  # type: ignore[type-arg]
        out.append((label, goal, [fn(r) for r in results]))

    add(
        "resources loaded",
        "≈130k (≥ 50 patients)",
        lambda r: (
            f"{_fmt(_get(r, 'ingest', 'resources_created'))} ({_get(r, 'config', 'patients')} patients)"
        ),
    )
    add(
        "ingest, resources/s",
        "≥ 1,300",
        lambda r: _step_or(
            r,
            "ingest",
            lambda s: (
                f"**{_fmt(s.get('resources_per_s'))}** "
                f"({s.get('senders')} senders, {_fmt(s.get('seconds'))} s)"
            ),
        ),
    )
    add(
        "ingest, resources per server CPU-second",
        "(≥ 650 to reach 1,300 on 2 cores)",
        lambda r: _step_or(r, "ingest", lambda s: _fmt(s.get("resources_created_per_cpu_s"))),
    )
    add(
        "ingest, server's share of the machine",
        "",
        lambda r: _step_or(
            r,
            "ingest",
            lambda s: (
                f"{_fmt(s.get('server_cpu_share_pct'))} % "
                f"(machine busy {_fmt(s.get('machine_cpu_busy_pct'))} %)"
            ),
        ),
    )
    add(
        "read by id, req/s (16 conn., wrk)",
        "≥ 4,000",
        lambda r: _step_or(r, "read", lambda s: f"**{_fmt(s.get('req_per_s'))}** ({s.get('server')})"),
    )
    add(
        "read by id, p50 / p99 ms",
        "p99 < 5",
        lambda r: _step_or(r, "read", lambda s: f"{_fmt(s.get('p50_ms'))} / **{_fmt(s.get('p99_ms'))}**"),
    )
    add(
        "read by id, req/s with the other worker count",
        "",
        lambda r: _step_or(
            r,
            "read_compare_workers",
            lambda s: f"{_fmt(s.get('req_per_s'))} ({s.get('server')}), p99 {_fmt(s.get('p99_ms'))} ms",
        ),
    )
    add(
        "read by id, requests per server CPU-second",
        "",
        lambda r: _step_or(r, "read", lambda s: _fmt(s.get("requests_per_cpu_s"))),
    )
    add(
        "floor: `GET /healthz` (no FHIR, no database), p50 / p99 ms",
        "",
        lambda r: _step_or(r, "floor", lambda s: f"{_fmt(s.get('p50_ms'))} / {_fmt(s.get('p99_ms'))}"),
    )
    names: list[str] = []
    for r in results:
        for s in _get(r, "searches", "list") or []:  # type: ignore[union-attr]
            if s["name"] not in names:
                names.append(s["name"])
    for name in names:
        query = next(
            (
                s["query"]
                for r in results
                for s in _get(r, "searches", "list") or []  # type: ignore[union-attr]
                if s["name"] == name
            ),
            "",
        )

        def cell(r: dict, name: str = name) -> str:  # type: ignore[type-arg]
            s = next((x for x in _get(r, "searches", "list") or [] if x["name"] == name), None)  # type: ignore[union-attr]
            if s is None:
                return "–"
            if "p50_ms" not in s:
                res = str(s.get("result", "–"))
                text = "timed out (> 60 s)" if "timed out" in res else res.split(":", 1)[0]
            else:
                check = {True: " ✓", False: " ✗count", None: ""}[s.get("count_ok")]
                text = f"**{_fmt(s['p50_ms'])}** / {_fmt(s['p99_ms'])}{check}"
            a = next((x for x in _get(r, "searches_analyzed", "list") or [] if x["name"] == name), None)  # type: ignore[union-attr]
            if a is not None and "p50_ms" in a:
                text += f" → {_fmt(a['p50_ms'])} / {_fmt(a['p99_ms'])}"
            return text

        add(f"search `{_short(query)}`, p50 / p99 ms (→ after ANALYZE)", "p50 < 3", cell)
    add(
        "`$everything`, first page, median / p99 ms",
        "median < 20",
        lambda r: _step_or(
            r,
            "everything",
            lambda s: (
                f"**{_fmt(s.get('median_ms'))}** / {_fmt(s.get('p99_ms'))} "
                f"({_fmt(s.get('entries_median'))} entries)"
            ),
        ),
    )
    add(
        "`$everything`, all pages, median ms",
        "",
        lambda r: _step_or(
            r,
            "everything",
            lambda s: (
                f"{_fmt(_get(s, 'all_pages', 'median_ms'))} "
                f"({_fmt(_get(s, 'all_pages', 'resources_median'))} resources, "
                f"{_fmt(_get(s, 'all_pages', 'pages_median'))} pages)"
                if s.get("all_pages")
                else "–"
            ),
        ),
    )
    add(
        "system `$export`, s to complete (+ download)",
        "",
        lambda r: _step_or(
            r,
            "export",
            lambda s: (
                f"{_fmt(s.get('seconds_to_complete'))} "
                f"(+{_fmt(s.get('download_seconds'))}), {_fmt(s.get('ndjson_lines'))} lines"
            ),
        ),
    )

    def rss(phase: str | None) -> Callable[[dict], str]:  # type: ignore[type-arg]
        def cell(r: dict) -> str:  # type: ignore[type-arg]
            d = _get(r, "rss", "phases", phase) if phase else r.get("rss")
            if not isinstance(d, dict) or "peak_mib" not in d:
                return "–"
            anon = f" ({_fmt(d['peak_anon_mib'])} anon.)" if "peak_anon_mib" in d else ""
            return f"**{_fmt(d['peak_mib'])}**{anon}"

        return cell

    add("server RSS peak during ingest, MiB", "< 1,024", rss("ingest"))
    add("server RSS peak during `$export`, MiB", "< 1,024", rss("export"))
    add("server RSS peak over the whole run, MiB", "< 1,024", rss(None))
    add(
        "… per process at that peak, MiB",
        "",
        lambda r: " + ".join(_fmt(x) for x in _get(r, "rss", "peak_per_process_mib") or []) or "–",
    )
    add(
        "load average at start → end",
        "",
        lambda r: f"{(r.get('load_avg_start') or ['–'])[0]} → {(r.get('load_avg_end') or ['–'])[0]}",
    )
    return out


def _short(query: str, n: int = 70) -> str:
    from urllib.parse import unquote

    q = unquote(query)
    if "patient=" in q:  # ids make the table wide and say nothing
        import re

        q = re.sub(r"patient=[0-9a-fA-F-]{20,}", "patient=<id>", q)
    q = q if len(q) <= n else q[: n - 1] + "…"
    return q.replace("|", "\\|")  # a bare | would end the Markdown table cell


def markdown(results: list[dict]) -> str:  # type: ignore[type-arg]
    heads = [r.get("backend", "?") for r in results]
    lines = ["| figure | goal | " + " | ".join(heads) + " |", "|---|---|" + "---|" * len(heads)]
    for label, goal, cells in rows(results):
        lines.append(f"| {label} | {goal} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def header(results: list[dict]) -> str:  # type: ignore[type-arg]
    r = results[0]
    m = r.get("machine", {})
    git = r.get("git", {})
    return "\n".join(
        [
            f"- date: {r.get('date')} (UTC)",
            f"- machine: {m.get('nproc')} cores ({m.get('cpu_model')}), {m.get('ram_gib')} GiB RAM, {m.get('os')}, "
            f"Python {m.get('python')}"
            + (
                f", PostgreSQL {results[-1].get('postgres_version')}"
                if results[-1].get("postgres_version")
                else ""
            ),
            f"- code: {git.get('commit')} ({git.get('dirty_files')} uncommitted files in the working tree)",
            f"- command: `{r.get('command')}`",
            f"- data: {_get(r, 'config', 'patients')} Synthea patients, {_fmt(_get(r, 'config', 'resources'))} "
            f"resources in {_get(r, 'config', 'bundles')} transaction bundles ({_get(r, 'config', 'data')})",
        ]
    )


def main(argv: list[str]) -> int:
    quick = "--quick" in argv
    files = [Path(a) for a in argv if not a.startswith("--")] or newest(quick)
    if not files:
        print("no results in bench/results/", file=sys.stderr)
        return 1
    results = [json.loads(p.read_text()) for p in files]
    print(header(results))
    print()
    print(markdown(results))
    fails = [(r.get("backend"), f) for r in results for f in r.get("failures", [])]
    if fails:
        print("\nFailures and unavailable steps:\n")
        for backend, f in fails:
            print(f"- {backend}: {f[:300]}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
