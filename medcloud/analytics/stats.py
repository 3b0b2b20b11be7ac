"""Statistics over a table (a view's output, CSV or Parquet): the numbers a methods section reports.

Every function takes a pandas DataFrame and column names and returns DataFrames (one row per group
or cell), so each result can be written as CSV/Parquet and suppressed by ``suppression.py``. Tests
and intervals come from scipy.stats and lifelines; the choices made here are stated where made:

- ``describe``: sd with ddof=1; quartiles with numpy's default (linear) interpolation.
- ``crosstab``: Pearson chi-square (Yates' correction on 2x2, scipy's default) unless a 2x2 table
  has an expected count below 5, then Fisher's exact test (two-sided).
- ``compare``: two groups: Welch t-test (effect: Hedges' g, CI of the mean difference) or
  Mann-Whitney U (effect: rank-biserial r); more groups: one-way ANOVA (eta squared) or Kruskal-Wallis
  (epsilon squared). ``test="auto"`` takes the parametric test only if every group passes Shapiro-Wilk
  at alpha 0.05 (with 3 to 5000 values) — a convention, reported in the output as ``test``.
- ``incidence``: events / person-time, exact (Garwood) Poisson CI.
- ``prevalence``: cases / persons, Wilson score CI.
- ``kaplan_meier``: lifelines' KaplanMeierFitter (Greenwood exponential CI), log-rank test.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from medcloud.errors import Invalid

if TYPE_CHECKING:
    import pandas as pd

Test = Literal["auto", "t", "mann-whitney", "anova", "kruskal"]
TESTS: tuple[str, ...] = ("auto", "t", "mann-whitney", "anova", "kruskal")


# ---------------------------------------------------------------- input


def load_table(path: str | Path, view: dict[str, Any] | None = None) -> pd.DataFrame:
    """A CSV/Parquet/NDJSON table, or (``view`` given) the view's rows over the FHIR folder ``path``."""
    import duckdb

    from medcloud.analytics.engines._sources import source_from_path
    from medcloud.analytics.engines.duckdb import DuckDBEngine

    p = Path(path)
    if not p.exists():
        raise Invalid(f"{p}: no such file or directory")
    with DuckDBEngine() as engine:
        if view is not None:
            query, _ = engine.sql(view, source_from_path(p), typed=True)
        else:
            reader = {".csv": "read_csv_auto", ".parquet": "read_parquet", ".ndjson": "read_json_auto",
                      ".json": "read_json_auto"}.get(p.suffix.lower())
            if reader is None:
                raise Invalid(f"{p}: use a .csv, .parquet or .ndjson table (or --view over a FHIR folder)")
            query = f"SELECT * FROM {reader}('{str(p).replace(chr(39), chr(39) * 2)}')"
        try:
            return engine.con.execute(query).df()
        except duckdb.Error as e:
            raise Invalid(f"{p}: cannot read the table: {str(e).splitlines()[0]}") from e


def require_columns(df: pd.DataFrame, *columns: str | None) -> None:
    missing = [c for c in columns if c is not None and c not in df.columns]
    if missing:
        raise Invalid(f"unknown column(s) {', '.join(missing)}; the table has {', '.join(map(str, df.columns))}")


def _numeric(df: pd.DataFrame, column: str) -> pd.Series:
    import pandas as pd

    values = pd.to_numeric(df[column], errors="coerce")
    bad = int(values.isna().sum() - df[column].isna().sum())
    if bad:
        raise Invalid(f"column {column} has {bad} non-numeric value(s)")
    return values


def _groups(df: pd.DataFrame, by: str | None) -> list[tuple[str, pd.DataFrame]]:
    if by is None:
        return [("all", df)]
    return [(str(k), g) for k, g in df.groupby(df[by].astype("string").fillna("(missing)"), sort=True)]


# ---------------------------------------------------------------- distributions


def describe(df: pd.DataFrame, column: str, by: str | None = None) -> pd.DataFrame:
    """n, missing, mean, sd, median, q1, q3, IQR, min, max of a numeric column (per group)."""
    import numpy as np
    import pandas as pd

    require_columns(df, column, by)
    values = _numeric(df, column)
    rows = []
    for name, g in _groups(df.assign(**{column: values}), by):
        v = g[column].dropna().to_numpy(dtype=float)
        q1, med, q3 = (np.percentile(v, [25, 50, 75]) if len(v) else (math.nan,) * 3)
        rows.append({"group": name, "n": len(v), "missing": int(g[column].isna().sum()),
                     "mean": v.mean() if len(v) else math.nan, "sd": v.std(ddof=1) if len(v) > 1 else math.nan,
                     "median": med, "q1": q1, "q3": q3, "iqr": q3 - q1,
                     "min": v.min() if len(v) else math.nan, "max": v.max() if len(v) else math.nan})
    return pd.DataFrame(rows)


def histogram(df: pd.DataFrame, column: str, bins: int = 10, by: str | None = None) -> pd.DataFrame:
    """Counts per bin (equal width over the whole column, so groups share the bins)."""
    import numpy as np
    import pandas as pd

    require_columns(df, column, by)
    if bins < 1:
        raise Invalid("bins must be at least 1")
    values = _numeric(df, column)
    edges = np.histogram_bin_edges(values.dropna().to_numpy(dtype=float), bins=bins)
    rows = []
    for name, g in _groups(df.assign(**{column: values}), by):
        counts, _ = np.histogram(g[column].dropna().to_numpy(dtype=float), bins=edges)
        rows += [{"group": name, "bin_start": lo, "bin_end": hi, "n": int(c)}
                 for lo, hi, c in zip(edges[:-1], edges[1:], counts, strict=True)]
    return pd.DataFrame(rows)


def frequencies(df: pd.DataFrame, column: str) -> pd.DataFrame:
    """Counts and percentages of each value of a categorical column (missing values counted)."""
    import pandas as pd

    require_columns(df, column)
    counts = df[column].astype("string").fillna("(missing)").value_counts().sort_index()
    total = int(counts.sum())
    return pd.DataFrame({"value": counts.index.astype(str), "n": counts.to_numpy(dtype=int),
                         "percent": (100.0 * counts.to_numpy() / total) if total else 0.0})


# ---------------------------------------------------------------- cross-tabs


@dataclass(frozen=True)
class CrossTab:
    counts: pd.DataFrame  # rows x columns of counts, with "Total" margins
    test: pd.DataFrame  # one row: test, statistic, dof, p_value


def crosstab(df: pd.DataFrame, row: str, col: str) -> CrossTab:
    import pandas as pd
    from scipy import stats

    require_columns(df, row, col)
    sub = df[[row, col]].dropna()
    table = pd.crosstab(sub[row].astype(str), sub[col].astype(str))
    if table.shape[0] < 2 or table.shape[1] < 2:
        raise Invalid(f"a cross-tab needs at least two values of {row} and of {col}")
    observed = table.to_numpy()
    chi = stats.chi2_contingency(observed)
    if table.shape == (2, 2) and (chi.expected_freq < 5).any():
        res = stats.fisher_exact(observed)
        test = {"test": "fisher-exact", "statistic": float(res.statistic), "dof": math.nan,
                "p_value": float(res.pvalue)}
    else:
        test = {"test": "chi-square", "statistic": float(chi.statistic), "dof": int(chi.dof),
                "p_value": float(chi.pvalue)}
    counts = pd.crosstab(sub[row].astype(str), sub[col].astype(str), margins=True, margins_name="Total")
    counts.index.name, counts.columns.name = row, None
    return CrossTab(counts.reset_index(), pd.DataFrame([test]))


# ---------------------------------------------------------------- group comparisons


def compare(df: pd.DataFrame, value: str, group: str, test: Test = "auto", confidence: float = 0.95) -> pd.DataFrame:
    """One row: the test, statistic, p-value, effect size with its name, a CI where defined, n per group."""
    import numpy as np
    import pandas as pd
    from scipy import stats

    require_columns(df, value, group)
    if test not in TESTS:
        raise Invalid(f"unknown test {test!r}; use one of {', '.join(TESTS)}")
    values = _numeric(df, value)
    data = [(name, g[value].dropna().to_numpy(dtype=float))
            for name, g in _groups(df.assign(**{value: values}).dropna(subset=[group]), group)]
    data = [(n, v) for n, v in data if len(v)]
    if len(data) < 2:
        raise Invalid(f"{group} has fewer than two groups with values of {value}")
    if any(len(v) < 2 for _, v in data):
        raise Invalid(f"every group of {group} needs at least two values of {value}")
    arrays = [v for _, v in data]
    if test == "auto":
        normal = all(3 <= len(v) <= 5000 and stats.shapiro(v).pvalue >= 0.05 for v in arrays)
        test = ("t" if normal else "mann-whitney") if len(arrays) == 2 else ("anova" if normal else "kruskal")
    if test in ("t", "mann-whitney") and len(arrays) != 2:
        raise Invalid(f"{test} compares two groups; {group} has {len(arrays)} (use anova or kruskal)")
    out: dict[str, Any] = {"test": test, "groups": len(arrays),
                           "n": "; ".join(f"{n}={len(v)}" for n, v in data),
                           "ci_level": confidence, "ci_low": math.nan, "ci_high": math.nan}
    if test == "t":
        a, b = arrays
        res = stats.ttest_ind(a, b, equal_var=False)
        ci = res.confidence_interval(confidence)
        pooled = math.sqrt(((len(a) - 1) * a.var(ddof=1) + (len(b) - 1) * b.var(ddof=1)) / (len(a) + len(b) - 2))
        d = (a.mean() - b.mean()) / pooled if pooled else math.nan
        g = d * (1 - 3 / (4 * (len(a) + len(b)) - 9))
        out |= {"test": "welch-t", "statistic": float(res.statistic), "p_value": float(res.pvalue),
                "effect": "hedges-g", "effect_size": g, "estimate": "mean difference",
                "estimate_value": float(a.mean() - b.mean()), "ci_low": float(ci.low), "ci_high": float(ci.high)}
    elif test == "mann-whitney":
        a, b = arrays
        res = stats.mannwhitneyu(a, b, alternative="two-sided")
        r = 1 - 2 * float(res.statistic) / (len(a) * len(b))  # rank-biserial (Kerby's simple difference)
        out |= {"statistic": float(res.statistic), "p_value": float(res.pvalue), "effect": "rank-biserial",
                "effect_size": -r, "estimate": "median difference",
                "estimate_value": float(np.median(a) - np.median(b))}
    elif test == "anova":
        res = stats.f_oneway(*arrays)
        allv = np.concatenate(arrays)
        ss_between = sum(len(v) * (v.mean() - allv.mean()) ** 2 for v in arrays)
        ss_total = float(((allv - allv.mean()) ** 2).sum())
        out |= {"statistic": float(res.statistic), "p_value": float(res.pvalue), "effect": "eta-squared",
                "effect_size": ss_between / ss_total if ss_total else math.nan}
    else:
        res = stats.kruskal(*arrays)
        n = sum(len(v) for v in arrays)
        out |= {"statistic": float(res.statistic), "p_value": float(res.pvalue), "effect": "epsilon-squared",
                "effect_size": float(res.statistic) * (n + 1) / (n * n - 1)}
    return pd.DataFrame([out])


# ---------------------------------------------------------------- incidence and prevalence


def poisson_ci(events: int, confidence: float = 0.95) -> tuple[float, float]:
    """Exact (Garwood) CI of a Poisson count: chi-square quantiles over 2."""
    from scipy import stats

    alpha = 1 - confidence
    low = 0.0 if events == 0 else float(stats.chi2.ppf(alpha / 2, 2 * events)) / 2
    return low, float(stats.chi2.ppf(1 - alpha / 2, 2 * events + 2)) / 2


def wilson_ci(cases: int, n: int, confidence: float = 0.95) -> tuple[float, float]:
    """Wilson score interval of a proportion (Wilson 1927; Newcombe 1998, method 3)."""
    from scipy import stats

    if n <= 0:
        raise Invalid("a proportion needs at least one person")
    z = float(stats.norm.ppf(1 - (1 - confidence) / 2))
    p = cases / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return max(0.0, centre - half), min(1.0, centre + half)


def incidence(df: pd.DataFrame, start: str, end: str, event: str, period: tuple[str, str],
              by: str | None = None, per: float = 1000.0, confidence: float = 0.95) -> pd.DataFrame:
    """Events per ``per`` person-years in ``period`` (ISO dates, end exclusive).

    Each row is one person: follow-up from ``start`` to ``end`` (empty ``end``: still followed at the
    period's end), ``event`` the date of the first event (empty: none). Person-time is follow-up
    inside the period, up to the event; an event counts when it falls inside both.
    """
    import pandas as pd

    require_columns(df, start, end, event, by)
    lo, hi = _dates(pd.Series([period[0], period[1]]), "period")
    if hi <= lo:
        raise Invalid("the period's end must be after its start")
    s, e, ev = _dates(df[start], start), _dates(df[end], end), _dates(df[event], event)
    if s.isna().any():
        raise Invalid(f"column {start} has empty follow-up starts")
    exit_ = e.fillna(hi).clip(upper=hi)
    stop = exit_.where(ev.isna() | (ev > exit_), ev)
    entry = s.clip(lower=lo)
    years = ((stop - entry).dt.total_seconds() / (365.25 * 86400)).clip(lower=0)
    counted = ev.notna() & (ev >= lo) & (ev < hi) & (ev >= s) & (ev <= exit_)
    frame = pd.DataFrame({"g": df[by].astype("string").fillna("(missing)") if by else "all",
                          "years": years, "event": counted})
    rows = []
    for name, g in frame.groupby("g", sort=True):
        k, pt = int(g["event"].sum()), float(g["years"].sum())
        low, high = poisson_ci(k, confidence)
        rows.append({"group": str(name), "persons": len(g), "events": k, "person_years": pt,
                     "rate": k / pt * per if pt else math.nan, "per": per, "ci_level": confidence,
                     "ci_low": low / pt * per if pt else math.nan, "ci_high": high / pt * per if pt else math.nan})
    return pd.DataFrame(rows)


def prevalence(df: pd.DataFrame, case: str | None = None, *, onset: str | None = None, end: str | None = None,
               period: tuple[str, str] | None = None, by: str | None = None,
               confidence: float = 0.95) -> pd.DataFrame:
    """Share of persons (rows) who are cases, with a Wilson CI.

    A case is either a truthy ``case`` column, or (``onset`` and ``period``) a condition with onset
    before the period's end that had not ended (``end``, optional) before its start: period
    prevalence; a one-day period gives point prevalence.
    """
    import pandas as pd

    require_columns(df, case, onset, end, by)
    if case is not None:
        raw = df[case]
        if raw.dtype == bool:
            cases = raw.fillna(False).astype(bool)
        else:
            text = raw.astype("string").str.lower()
            if not text.dropna().isin(["true", "false", "1", "0", "yes", "no"]).all():
                raise Invalid(f"column {case} must hold true/false (or 1/0, yes/no)")
            cases = text.isin(["true", "1", "yes"]).fillna(False).astype(bool)
    elif onset is not None and period is not None:
        lo, hi = _dates(pd.Series(list(period)), "period")
        on = _dates(df[onset], onset)
        stop = _dates(df[end], end) if end else pd.Series(pd.NaT, index=df.index)
        cases = (on.notna() & (on < hi) & (stop.isna() | (stop >= lo))).astype(bool)
    else:
        raise Invalid("prevalence needs a case column, or an onset column and a period")
    frame = pd.DataFrame({"g": df[by].astype("string").fillna("(missing)") if by else "all", "case": cases})
    rows = []
    for name, g in frame.groupby("g", sort=True):
        k, n = int(g["case"].sum()), len(g)
        low, high = wilson_ci(k, n, confidence)
        rows.append({"group": str(name), "persons": n, "cases": k, "prevalence": k / n,
                     "ci_level": confidence, "ci_low": low, "ci_high": high})
    return pd.DataFrame(rows)


def _dates(s: pd.Series, what: str) -> pd.Series:
    import pandas as pd

    out = pd.to_datetime(s, errors="coerce", utc=True, format="mixed")
    bad = int(out.isna().sum() - s.isna().sum() - (s.astype("string") == "").sum())
    if bad > 0:
        raise Invalid(f"{what}: {bad} value(s) are not dates")
    return out


# ---------------------------------------------------------------- survival


@dataclass(frozen=True)
class Survival:
    curve: pd.DataFrame  # group, time, survival, ci_low, ci_high
    at_risk: pd.DataFrame  # group, time, at_risk, events (cumulative), censored (cumulative)
    summary: pd.DataFrame  # group, n, events, median, median_ci_low, median_ci_high
    logrank: pd.DataFrame  # one row (two or more groups), else empty


def kaplan_meier(df: pd.DataFrame, time: str, event: str, group: str | None = None,
                 at: Sequence[float] | None = None, confidence: float = 0.95) -> Survival:
    """Kaplan-Meier estimates per group, the number-at-risk table at ``at`` and a log-rank test."""
    import numpy as np
    import pandas as pd
    from lifelines import KaplanMeierFitter
    from lifelines.statistics import multivariate_logrank_test
    from lifelines.utils import median_survival_times

    require_columns(df, time, event, group)
    t = _numeric(df, time)
    e = _numeric(df, event)
    if not e.dropna().isin([0, 1]).all():
        raise Invalid(f"column {event} must be 1 (event) or 0 (censored)")
    if (t.dropna() < 0).any():
        raise Invalid(f"column {time} has negative times")
    frame = pd.DataFrame({"t": t, "e": e, "g": df[group].astype("string") if group else "all"}).dropna()
    if frame.empty:
        raise Invalid("no rows with a time and an event indicator")
    if at is None:
        at = [float(x) for x in np.linspace(0, float(frame["t"].max()), 6)]
    curves, risks, summaries = [], [], []
    for name, g in frame.groupby("g", sort=True):
        kmf = KaplanMeierFitter(alpha=1 - confidence).fit(g["t"], g["e"], label=str(name))
        sf, ci = kmf.survival_function_, kmf.confidence_interval_survival_function_
        curves.append(pd.DataFrame({"group": str(name), "time": sf.index.to_numpy(dtype=float),
                                    "survival": sf.iloc[:, 0].to_numpy(), "ci_low": ci.iloc[:, 0].to_numpy(),
                                    "ci_high": ci.iloc[:, 1].to_numpy()}))
        for x in at:
            risks.append({"group": str(name), "time": float(x), "at_risk": int((g["t"] >= x).sum()),
                          "events": int(((g["t"] <= x) & (g["e"] == 1)).sum()),
                          "censored": int(((g["t"] <= x) & (g["e"] == 0)).sum())})
        mci = median_survival_times(kmf.confidence_interval_)
        summaries.append({"group": str(name), "n": len(g), "events": int(g["e"].sum()),
                          "median": float(kmf.median_survival_time_),
                          "median_ci_low": float(mci.iloc[0, 0]), "median_ci_high": float(mci.iloc[0, 1])})
    logrank = pd.DataFrame()
    if frame["g"].nunique() >= 2:
        res = multivariate_logrank_test(frame["t"], frame["g"], frame["e"])
        logrank = pd.DataFrame([{"test": "log-rank", "statistic": float(res.test_statistic),
                                 "dof": int(res.degrees_of_freedom), "p_value": float(res.p_value)}])
    return Survival(pd.concat(curves, ignore_index=True), pd.DataFrame(risks), pd.DataFrame(summaries), logrank)
