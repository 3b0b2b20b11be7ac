"""``medcloud stats ...``: statistics over a CSV/Parquet/NDJSON table or a view over a FHIR folder.

Each command prints its table, writes it with ``--out`` (``.csv`` or ``.parquet``) and, where it
draws, a PNG with ``--plot``. ``--suppress K`` applies the small-cell rule of ``suppression.py``.
Everything is computed before anything is written, and files are written through temporary names,
so a failure leaves no partial output. Exit codes: 0 ok, 3 invalid input (message on stderr).
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from medcloud.analytics import stats, suppression
from medcloud.errors import Invalid, MedcloudError

if TYPE_CHECKING:
    import pandas as pd
    from matplotlib.figure import Figure

app = typer.Typer(name="stats", help="Counts, distributions, tests, incidence, prevalence, survival.",
                  no_args_is_help=True)

Input = Annotated[Path, typer.Argument(help="Table (.csv/.parquet/.ndjson), or a FHIR folder with --view.")]
View = Annotated[Path | None, typer.Option(help="ViewDefinition JSON to run over the INPUT folder first.")]
By = Annotated[str | None, typer.Option("--by", help="Group column.")]
Out = Annotated[Path | None, typer.Option(help="Write the table here (.csv or .parquet).")]
Suppress = Annotated[int | None, typer.Option(help="Hide counts below K (and what would reveal them).", min=2)]
Conf = Annotated[float, typer.Option(help="Confidence level of intervals.", min=0.5, max=0.999)]


def _fail(message: str) -> typer.Exit:
    typer.echo(f"error: {message}", err=True)
    return typer.Exit(3)


def _load(path: Path, view: Path | None) -> pd.DataFrame:
    view_json = None
    if view is not None:
        try:
            view_json = json.loads(view.read_text())
        except (OSError, json.JSONDecodeError) as e:
            raise _fail(f"{view}: {e}") from e
    return stats.load_table(path, view_json)


def _guarded(compute: Callable[[], tuple[list[tuple[pd.DataFrame, Path | None]], Figure | None, Path | None]]) -> None:
    """Compute, then write every output; an error before the writes leaves nothing behind."""
    try:
        tables, figure, plot = compute()
    except MedcloudError as e:
        raise _fail(e.message) from e
    for i, (table, out) in enumerate(tables):
        if out is not None and out.suffix.lower() not in (".csv", ".parquet"):
            raise _fail(f"{out}: use a .csv or .parquet file name")
        if i:
            typer.echo("")
        typer.echo(table.to_string(index=False))
    written = []
    try:
        for table, out in tables:
            if out is not None:
                written.append(_write_table(table, out))
        if figure is not None and plot is not None:
            from medcloud.analytics.plots import save_png

            written.append(save_png(figure, plot))
    except Exception:
        for p in written:
            p.unlink(missing_ok=True)
        raise


def _write_table(df: pd.DataFrame, out: Path) -> Path:
    import duckdb

    out.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{out.name}.", suffix=".partial", dir=out.parent)
    os.close(fd)
    try:
        if out.suffix.lower() == ".csv":
            df.to_csv(tmp, index=False)
        else:
            con = duckdb.connect()
            try:
                # Suppressed columns mix numbers and "<K": store every object column as text.
                frame = df.astype({c: "string" for c in df.columns if df[c].dtype == object})
                con.register("t", frame)
                con.execute(f"COPY t TO '{tmp}' (FORMAT parquet)")
            finally:
                con.close()
        os.replace(tmp, out)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return out


def _suffixed(out: Path | None, suffix: str) -> Path | None:
    return None if out is None else out.with_name(f"{out.stem}-{suffix}{out.suffix}")


@app.command()
def describe(input: Input, column: Annotated[str, typer.Option(help="Numeric column.")], by: By = None,
             view: View = None, out: Out = None, suppress: Suppress = None,
             bins: Annotated[int, typer.Option(help="Histogram bins.", min=1)] = 10,
             unit: Annotated[str | None, typer.Option(help="Unit of the column, for the axis label.")] = None,
             plot: Annotated[Path | None, typer.Option(help="Histogram PNG.")] = None) -> None:
    """n, missing, mean, sd, median, IQR, min, max (per group); histogram bins with --out/--plot."""
    def compute() -> Any:
        df = _load(input, view)
        table = stats.describe(df, column, by)
        hist = stats.histogram(df, column, bins, by)
        fig = None
        if plot is not None:
            from medcloud.analytics.plots import histogram_figure

            fig = histogram_figure(hist, column, unit, suppress)
        if suppress:
            table = suppression.per_group(table, suppress, "n", [c for c in table.columns[3:]], counts=["missing"])
            hist = suppression.counts_table(hist, suppress, "n", partition="group")
        return [(table, out), (hist, _suffixed(out, "histogram"))], fig, plot

    _guarded(compute)


@app.command()
def frequencies(input: Input, column: Annotated[str, typer.Option(help="Categorical column.")],
                view: View = None, out: Out = None, suppress: Suppress = None) -> None:
    """Counts and percentages of each value."""
    def compute() -> Any:
        table = stats.frequencies(_load(input, view), column)
        if suppress:
            table = suppression.counts_table(table, suppress, "n", ["percent"])
        return [(table, out)], None, None

    _guarded(compute)


@app.command()
def crosstab(input: Input, row: Annotated[str, typer.Option(help="Row variable.")],
             col: Annotated[str, typer.Option(help="Column variable.")],
             view: View = None, out: Out = None, suppress: Suppress = None) -> None:
    """Counts with margins and a chi-square (or Fisher exact for sparse 2x2) test."""
    def compute() -> Any:
        ct = stats.crosstab(_load(input, view), row, col)
        counts = suppression.crosstab(ct.counts, suppress) if suppress else ct.counts
        return [(counts, out), (ct.test, _suffixed(out, "test"))], None, None

    _guarded(compute)


@app.command()
def compare(input: Input, value: Annotated[str, typer.Option(help="Numeric outcome column.")],
            group: Annotated[str, typer.Option(help="Group column.")],
            test: Annotated[str, typer.Option(help="auto, t, mann-whitney, anova or kruskal.")] = "auto",
            view: View = None, out: Out = None, suppress: Suppress = None, confidence: Conf = 0.95) -> None:
    """Compare a numeric column between groups, with effect size and confidence interval."""
    def compute() -> Any:
        df = _load(input, view)
        if test not in stats.TESTS:
            raise Invalid(f"unknown test {test!r}; use one of {', '.join(stats.TESTS)}")
        table = stats.compare(df, value, group, test, confidence)  # type: ignore[arg-type]
        groups = stats.describe(df, value, group)
        if suppress:
            groups = suppression.per_group(groups, suppress, "n", list(groups.columns[3:]), counts=["missing"])
            table = table.assign(n="; ".join(f"{g}={n}" for g, n in zip(groups["group"], groups["n"], strict=True)))
        return [(table, out), (groups, _suffixed(out, "groups"))], None, None

    _guarded(compute)


@app.command()
def incidence(input: Input, start: Annotated[str, typer.Option(help="Follow-up start date column.")],
              end: Annotated[str, typer.Option(help="Follow-up end date column (empty: ongoing).")],
              event: Annotated[str, typer.Option(help="Event date column (empty: no event).")],
              period_from: Annotated[str, typer.Option("--from", help="Period start (ISO date).")],
              period_to: Annotated[str, typer.Option("--to", help="Period end, exclusive (ISO date).")],
              by: By = None, per: Annotated[float, typer.Option(help="Rate per this many person-years.")] = 1000.0,
              view: View = None, out: Out = None, suppress: Suppress = None, confidence: Conf = 0.95) -> None:
    """Events per person-time in a period, with an exact Poisson CI."""
    def compute() -> Any:
        table = stats.incidence(_load(input, view), start, end, event, (period_from, period_to), by, per, confidence)
        if suppress:
            table = suppression.per_group(table, suppress, "persons", ["person_years", "rate", "ci_low", "ci_high"],
                                          counts=["events"])
        return [(table, out)], None, None

    _guarded(compute)


@app.command()
def prevalence(input: Input, case: Annotated[str | None, typer.Option(help="true/false case column.")] = None,
               onset: Annotated[str | None, typer.Option(help="Onset date column (with --from/--to).")] = None,
               end: Annotated[str | None, typer.Option(help="Resolution date column (optional).")] = None,
               period_from: Annotated[str | None, typer.Option("--from", help="Period start (ISO date).")] = None,
               period_to: Annotated[str | None, typer.Option("--to", help="Period end, exclusive.")] = None,
               by: By = None, view: View = None, out: Out = None, suppress: Suppress = None,
               confidence: Conf = 0.95) -> None:
    """Share of persons who are cases, with a Wilson CI."""
    def compute() -> Any:
        period = (period_from, period_to) if period_from and period_to else None
        table = stats.prevalence(_load(input, view), case, onset=onset, end=end, period=period, by=by,
                                 confidence=confidence)
        if suppress:
            derived = ["prevalence", "ci_low", "ci_high"]
            non_cases = table["persons"] - table["cases"]
            table = suppression.per_group(table, suppress, "persons", ["cases", *derived], counts=["cases"])
            # Complementary: few non-cases reveal the cases, given the persons.
            mask = non_cases.map(lambda v: suppression.small(v, suppress)).astype(bool)
            table = table.astype({"cases": object, **{c: object for c in derived}})
            table.loc[mask, ["cases", *derived]] = suppression.HIDDEN
        return [(table, out)], None, None

    _guarded(compute)


@app.command()
def km(input: Input, time: Annotated[str, typer.Option(help="Follow-up time column.")],
       event: Annotated[str, typer.Option(help="1 = event, 0 = censored.")],
       group: Annotated[str | None, typer.Option(help="Group column (log-rank test between groups).")] = None,
       at: Annotated[str | None, typer.Option(help="Times of the at-risk table, comma-separated.")] = None,
       time_unit: Annotated[str, typer.Option(help="Unit of the time column.")] = "days",
       view: View = None, out: Out = None, suppress: Suppress = None, confidence: Conf = 0.95,
       plot: Annotated[Path | None, typer.Option(help="Kaplan-Meier PNG.")] = None) -> None:
    """Kaplan-Meier curves, median survival with CI, number at risk, log-rank test."""
    def compute() -> Any:
        try:
            times = [float(x) for x in at.split(",")] if at else None
        except ValueError as e:
            raise Invalid(f"--at must be numbers separated by commas, not {at!r}") from e
        res = stats.kaplan_meier(_load(input, view), time, event, group, times, confidence)
        if suppress:
            res = _suppress_survival(res, suppress)
        fig = None
        if plot is not None:
            from medcloud.analytics.plots import km_figure

            fig = km_figure(res, time_unit, suppress)
        return [(res.summary, out), (res.logrank, _suffixed(out, "logrank")),
                (res.at_risk, _suffixed(out, "at-risk")), (res.curve, _suffixed(out, "curve"))], fig, plot

    _guarded(compute)


def _suppress_survival(res: stats.Survival, k: int) -> stats.Survival:
    """Groups under K lose their curve and estimates; small at-risk/event/censored counts are hidden."""
    small_groups = {g for g, n in zip(res.summary["group"], res.summary["n"], strict=True) if suppression.small(n, k)}
    summary = suppression.per_group(res.summary, k, "n", ["median", "median_ci_low", "median_ci_high"],
                                    counts=["events"])
    at_risk = res.at_risk
    for c in ("at_risk", "events", "censored"):
        at_risk = suppression.per_group(at_risk, k, c, [])
    curve = res.curve[~res.curve["group"].isin(small_groups)].reset_index(drop=True)
    return stats.Survival(curve, at_risk, summary, res.logrank)
