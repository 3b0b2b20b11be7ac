"""Ten typical searches and Patient/$everything, timed one request at a time on one warm connection.

Parameter values come from the loaded data (a real family name, a real patient with many height
measurements, ...), and where the answer is knowable from the bundles alone the expected total is
computed here, independently of the server, and compared with what it returns.

The client is ``http.client`` on a keep-alive connection: about 0.1 ms of client overhead per
request on this machine, which is part of each figure.
"""

from __future__ import annotations

import http.client
import math
import random
import statistics
import time
from dataclasses import dataclass
from urllib.parse import quote, urlsplit

import orjson
from _data import LOINC, OBS_CODES, SNOMED, Facts, encounter_window, patients_matching_name
from ingest import Loaded


@dataclass(frozen=True)
class Search:
    name: str
    path: str  # relative to the FHIR base, query included
    expected_total: int | None = None
    note: str = ""


def _q(v: str) -> str:
    return quote(v, safe="")


def typical_searches(facts: Facts, loaded: Loaded) -> list[Search]:
    """The issue's ten typical searches with concrete values from the data."""
    out: list[Search] = []
    patients = [u for u in facts.patients if loaded.server_id(u)]
    if not patients:
        return out
    ascii_patients = sorted(u for u in patients if str(facts.patients[u]["family"]).isascii())
    family = str(facts.patients[(ascii_patients or patients)[len(ascii_patients or patients) // 2]]["family"])
    by_name = patients_matching_name(facts, family)
    out.append(Search("name", f"Patient?name={_q(family)}", len(by_name), f"family name {family!r}"))

    code = next((c for c in OBS_CODES if any(facts.obs_by_patient[p][c] for p in patients)), OBS_CODES[0])
    busiest = max(patients, key=lambda p: facts.obs_by_patient[p][code])
    pid = loaded.server_id(busiest)
    out.append(
        Search(
            "patient+code+_sort=-date",
            f"Observation?patient={pid}&code={_q(LOINC + '|' + code)}&_sort=-date",
            facts.obs_by_patient[busiest][code],
            f"LOINC {code}, patient with the most",
        )
    )

    lo, hi, n_enc = encounter_window(facts)
    out.append(
        Search(
            "date range",
            f"Encounter?date=ge{lo}&date=lt{hi}",
            n_enc,
            f"30-day window; {n_enc} encounter periods overlap it",
        )
    )

    out.append(
        Search(
            "chained",
            f"Observation?subject:Patient.name={_q(family)}",
            sum(facts.obs_count_by_patient[p] for p in by_name),
            f"family name {family!r}",
        )
    )

    n_pat = len(patients)
    has_code = min(
        sorted(facts.obs_patients_by_code), key=lambda c: abs(len(facts.obs_patients_by_code[c]) - n_pat / 4)
    )
    out.append(
        Search(
            "_has",
            f"Patient?_has:Observation:patient:code={_q(LOINC + '|' + has_code)}",
            len(facts.obs_patients_by_code[has_code] & set(patients)),
            f"LOINC {has_code}: patients with such an Observation",
        )
    )

    out.append(Search("_include", "Encounter?_include=Encounter:patient", None, "first page + its patients"))
    out.append(Search("_summary=count", "Observation?_summary=count", facts.types["Observation"]))

    common = [c for c, n in facts.condition_codes.most_common() if n >= 3] or list(facts.condition_codes)
    cond = common[len(common) // 2] if common else "44054006"
    out.append(
        Search(
            "token",
            f"Condition?code={_q(SNOMED + '|' + cond)}",
            facts.condition_codes[cond],
            f"SNOMED {cond}",
        )
    )

    with_mr = sorted(
        (p for p in patients if facts.medreq_by_patient[p]), key=lambda p: facts.medreq_by_patient[p]
    )
    mr = with_mr[len(with_mr) // 2] if with_mr else patients[0]
    out.append(
        Search(
            "reference",
            f"MedicationRequest?patient={loaded.server_id(mr)}",
            facts.medreq_by_patient[mr],
            "patient with the median number of prescriptions",
        )
    )

    births = sorted(str(facts.patients[p]["birthDate"]) for p in patients if facts.patients[p]["birthDate"])
    if births:
        b = births[int(len(births) * 0.8)]
        out.append(
            Search(
                "birthdate",
                f"Patient?birthdate=ge{b}",
                sum(1 for x in births if x >= b),
                "about 20 % of patients",
            )
        )
    return out


class Conn:
    """One keep-alive HTTP/1.1 connection to the server; reconnects if the server closed it."""

    def __init__(self, base: str, timeout: float = 60):
        u = urlsplit(base)
        self.host, self.port, self.prefix = u.hostname or "127.0.0.1", u.port or 80, u.path.rstrip("/")
        self.timeout = timeout
        self.c = http.client.HTTPConnection(self.host, self.port, timeout=timeout)

    def get(self, path: str) -> tuple[int, bytes, float]:
        for attempt in (0, 1):
            t0 = time.perf_counter()
            try:
                self.c.request("GET", f"{self.prefix}/{path}", headers={"Accept": "application/fhir+json"})
                r = self.c.getresponse()
                body = r.read()
                return r.status, body, time.perf_counter() - t0
            except (http.client.HTTPException, ConnectionError):
                self.c.close()
                self.c = http.client.HTTPConnection(self.host, self.port, timeout=self.timeout)
                if attempt:
                    raise
        raise AssertionError("unreachable")

    def close(self) -> None:
        self.c.close()


def pct(values: list[float], p: float) -> float:
    """Nearest-rank percentile."""
    s = sorted(values)
    return s[max(0, math.ceil(p / 100 * len(s)) - 1)]


def _ms(x: float) -> float:
    return round(x * 1000, 2)


def _describe(body: bytes) -> dict[str, object]:
    try:
        doc = orjson.loads(body)
    except orjson.JSONDecodeError:
        return {}
    entries = doc.get("entry") or []
    modes: dict[str, int] = {}
    for e in entries:
        m = (e.get("search") or {}).get("mode", "match")
        modes[m] = modes.get(m, 0) + 1
    return {
        "total": doc.get("total"),
        "entries": len(entries),
        "by_mode": modes,
        "next": any(link.get("relation") == "next" for link in doc.get("link", [])),
    }


def _problem(status: int, body: bytes) -> str:
    try:
        issues = orjson.loads(body).get("issue", [])
        text = "; ".join(str(i.get("diagnostics") or i.get("details", {}).get("text", "")) for i in issues)
    except (orjson.JSONDecodeError, AttributeError):
        text = body[:200].decode("utf-8", "replace")
    return f"unavailable: HTTP {status} {text[:240]}"


def run_searches(
    base: str, searches: list[Search], repeats: int, budget_s: float, warmup: int = 3
) -> list[dict]:  # type: ignore[type-arg]
    """Each search ``repeats`` times, or fewer if it uses up ``budget_s`` seconds (``n`` says how many)."""
    conn = Conn(base)
    results = []
    try:
        for s in searches:
            row: dict[str, object] = {"name": s.name, "query": s.path, "note": s.note}
            row["_t"] = (time.monotonic(), None)  # when it ran, for the RSS samples; removed by run.py
            try:
                status, body, first = conn.get(s.path)  # also the first warm-up
                if status != 200:
                    row["result"] = _problem(status, body)
                    results.append(row)
                    continue
                shape = _describe(body)
                row.update(shape)
                if s.expected_total is not None:
                    row["expected_total"] = s.expected_total
                    got = shape.get("total")
                    if got is None and not shape.get("next"):
                        got = shape.get("by_mode", {}).get("match", 0)  # type: ignore[union-attr]
                    if got is None and first < 2.0:  # paged, no total: ask once, untimed (if affordable)
                        st, b2, _ = conn.get(s.path + "&_total=accurate")
                        got = _describe(b2).get("total") if st == 200 else None
                    row["server_total"] = got
                    row["count_ok"] = got == s.expected_total if got is not None else None
                # Warm-up and timing share the budget; at least 3 timed runs however slow the search is.
                stop_at = time.monotonic() + budget_s
                for _ in range(warmup - 1):
                    if time.monotonic() > stop_at - budget_s / 2:
                        break
                    conn.get(s.path)
                times = []
                for _ in range(repeats):
                    status, _, dt = conn.get(s.path)
                    if status != 200:
                        raise RuntimeError(f"HTTP {status} during timing")
                    times.append(dt)
                    if time.monotonic() > stop_at and len(times) >= 3:
                        break
                row.update(
                    {
                        "n": len(times),
                        "p50_ms": _ms(pct(times, 50)),
                        "p99_ms": _ms(pct(times, 99)),
                        "mean_ms": _ms(statistics.fmean(times)),
                        "bytes": len(body),
                    }
                )
            except TimeoutError:
                row["result"] = f"failed: no answer within {conn.timeout:.0f} s (timed out)"
                conn.close()
                conn = Conn(base)
            except Exception as e:  # a broken search must not stop the run
                row["result"] = f"failed: {type(e).__name__}: {e}"
            row["_t"] = (row["_t"][0], time.monotonic())  # type: ignore[index]
            results.append(row)
    finally:
        conn.close()
    return results


def run_everything(
    base: str, facts: Facts, loaded: Loaded, patients: int, rounds: int, budget_s: float = 120
) -> dict:  # type: ignore[type-arg]
    """``Patient/[id]/$everything`` on ``patients`` random patients, ``rounds`` times each (first page)."""
    ids = sorted(filter(None, (loaded.server_id(u) for u in facts.patients)))
    chosen = random.Random(11).sample(ids, min(patients, len(ids)))
    if not chosen:
        return {"result": "unavailable: no patients loaded"}
    conn = Conn(base, timeout=120)
    try:
        status, body, _ = conn.get(f"Patient/{chosen[0]}/$everything")
        if status != 200:
            return {"result": _problem(status, body)}
        times: list[float] = []
        entries: list[int] = []
        paged = 0
        stop_at = time.monotonic() + budget_s
        for r in range(rounds):
            if r and time.monotonic() > stop_at:
                break
            for pid in chosen:
                status, body, dt = conn.get(f"Patient/{pid}/$everything")
                if status != 200:
                    return {"result": f"failed: HTTP {status} for Patient/{pid}/$everything"}
                times.append(dt)
                if r == 0:
                    shape = _describe(body)
                    entries.append(int(shape.get("entries") or 0))
                    paged += bool(shape.get("next"))
        out: dict[str, object] = {
            "patients": len(chosen),
            "rounds": rounds,
            "n": len(times),
            "median_ms": _ms(statistics.median(times)),
            "p99_ms": _ms(pct(times, 99)),
            "max_ms": _ms(max(times)),
            "entries_median": statistics.median(entries),
            "entries_max": max(entries),
            "responses_with_next_link": paged,
        }
        if paged:
            out["all_pages"] = _everything_all_pages(conn, chosen, budget_s)
        return out
    finally:
        conn.close()


def _everything_all_pages(conn: Conn, ids: list[str], budget_s: float) -> dict:  # type: ignore[type-arg]
    """What a client pays to fetch a patient's whole record: follow ``next`` links to the end."""
    times: list[float] = []
    pages: list[int] = []
    resources: list[int] = []
    stop_at = time.monotonic() + budget_s
    for pid in ids:
        path: str | None = f"Patient/{pid}/$everything"
        t0 = time.perf_counter()
        n_pages = n_res = 0
        while path:
            status, body, _ = conn.get(path)
            if status != 200:
                return {"result": f"failed: HTTP {status} on page {n_pages + 1} of Patient/{pid}/$everything"}
            doc = orjson.loads(body)
            n_pages += 1
            n_res += sum(1 for e in doc.get("entry", []) if (e.get("search") or {}).get("mode") != "outcome")
            nxt = next((link["url"] for link in doc.get("link", []) if link.get("relation") == "next"), None)
            path = nxt.split(conn.prefix + "/", 1)[1] if nxt and conn.prefix + "/" in nxt else None
        times.append(time.perf_counter() - t0)
        pages.append(n_pages)
        resources.append(n_res)
        if time.monotonic() > stop_at:
            break
    return {
        "patients": len(times),
        "median_ms": _ms(statistics.median(times)),
        "max_ms": _ms(max(times)),
        "pages_median": statistics.median(pages),
        "resources_median": statistics.median(resources),
        "resources_max": max(resources),
    }


def type_counts(base: str, facts: Facts, loaded: Loaded) -> dict:  # type: ignore[type-arg]
    """``[type]?_summary=count`` per loaded type against what the server acknowledged creating."""
    created = loaded.created
    conn = Conn(base)
    out: dict[str, object] = {}
    mismatches = []
    try:
        for rtype in sorted(facts.types):
            status, body, _ = conn.get(f"{rtype}?_summary=count")
            if status != 200:
                return {"result": _problem(status, body)}
            total = orjson.loads(body).get("total")
            out[rtype] = total
            if total != created.get(rtype, 0):
                mismatches.append(f"{rtype}: server {total}, created {created.get(rtype, 0)}")
    finally:
        conn.close()
    return {
        "by_type": out,
        "total": sum(v for v in out.values() if isinstance(v, int)),
        "mismatches": mismatches,
    }


def floor(base: str, repeats: int = 200) -> dict:  # type: ignore[type-arg]
    """``GET /healthz`` (no FHIR, no database) the same way as the searches: the latency floor of
    client + uvicorn + Starlette on this machine at this moment, to read the search figures against."""
    conn = Conn(base)
    conn.prefix = ""
    try:
        status, body, _ = conn.get("healthz")
        if status != 200:
            return {"result": _problem(status, body)}
        for _ in range(5):
            conn.get("healthz")
        times = [conn.get("healthz")[2] for _ in range(repeats)]
    finally:
        conn.close()
    return {"n": len(times), "p50_ms": _ms(pct(times, 50)), "p99_ms": _ms(pct(times, 99))}
