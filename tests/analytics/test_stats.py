"""Statistics against known answers (textbook values, scipy, lifelines), suppression, and the CLI."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pandas as pd
import pytest
from lifelines import KaplanMeierFitter
from lifelines.datasets import load_waltons
from scipy import stats as sps
from typer.testing import CliRunner

from medcloud.analytics import stats, suppression
from medcloud.cli import app
from medcloud.errors import Invalid


@pytest.fixture(scope="module")
def waltons() -> pd.DataFrame:
    return load_waltons()


def test_wilson_interval_matches_newcombe_1998_example():
    # Newcombe, Stat Med 1998;17:857, Table I: 81/263 -> 0.2553 to 0.3662 (method 3, Wilson).
    low, high = stats.wilson_ci(81, 263)
    assert (round(low, 4), round(high, 4)) == (0.2553, 0.3662)
    assert stats.wilson_ci(0, 10)[0] == 0.0


def test_exact_poisson_interval_matches_tables():
    # Exact 95% limits for 10 observed events: 4.795, 18.390; for 0 events: 0, 3.689.
    assert [round(x, 3) for x in stats.poisson_ci(10)] == [4.795, 18.39]
    assert [round(x, 3) for x in stats.poisson_ci(0)] == [0.0, 3.689]


def test_kaplan_meier_on_waltons_matches_lifelines_and_the_log_rank_statistic(waltons):
    res = stats.kaplan_meier(waltons, "T", "E", "group", at=[0, 20, 40])
    for name, g in waltons.groupby("group"):
        kmf = KaplanMeierFitter().fit(g["T"], g["E"])
        row = res.summary[res.summary["group"] == name].iloc[0]
        assert row["median"] == kmf.median_survival_time_ and row["n"] == len(g)
        curve = res.curve[res.curve["group"] == name]
        assert curve["survival"].tolist() == pytest.approx(kmf.survival_function_.iloc[:, 0].tolist())
    assert res.summary.set_index("group")["median"].to_dict() == {"control": 58.0, "miR-137": 26.0}
    # lifelines docs, "Survival analysis with lifelines": the waltons log-rank statistic is 122.25.
    assert res.logrank["statistic"].iloc[0] == pytest.approx(122.25, abs=0.01)
    assert res.logrank["p_value"].iloc[0] < 1e-20
    at = res.at_risk.set_index(["group", "time"])["at_risk"]
    assert at[("miR-137", 0.0)] == 34 and at[("miR-137", 40.0)] == (waltons.query("group == 'miR-137'")["T"] >= 40).sum()


def test_describe_gives_the_usual_summary():
    df = pd.DataFrame({"x": [1, 2, 3, 4, None], "g": ["a", "a", "b", "b", "b"]})
    all_ = stats.describe(df, "x").iloc[0]
    assert (all_["n"], all_["missing"], all_["mean"], all_["median"]) == (4, 1, 2.5, 2.5)
    assert all_["sd"] == pytest.approx(math.sqrt(5 / 3)) and (all_["q1"], all_["q3"]) == (1.75, 3.25)
    by = stats.describe(df, "x", "g").set_index("group")
    assert by.loc["b", "n"] == 2 and by.loc["b", "missing"] == 1 and by.loc["b", "mean"] == 3.5


def test_histogram_bins_count_every_value_once():
    df = pd.DataFrame({"x": list(range(100))})
    hist = stats.histogram(df, "x", bins=4)
    assert hist["n"].tolist() == [25, 25, 25, 25] and hist["bin_start"].iloc[0] == 0


def test_crosstab_uses_chi_square_or_fisher_for_sparse_2x2():
    df = pd.DataFrame({"a": ["x"] * 30 + ["y"] * 30, "b": ["p", "q", "r"] * 20})
    ct = stats.crosstab(df, "a", "b")
    expected = sps.chi2_contingency(pd.crosstab(df["a"], df["b"]).to_numpy())
    assert ct.test["test"].iloc[0] == "chi-square" and ct.test["p_value"].iloc[0] == pytest.approx(expected.pvalue)
    sparse = pd.DataFrame({"a": ["x"] * 6 + ["y"] * 6, "b": ["p"] * 5 + ["q"] + ["q"] * 6})
    ct2 = stats.crosstab(sparse, "a", "b")
    assert ct2.test["test"].iloc[0] == "fisher-exact"
    assert ct2.test["p_value"].iloc[0] == pytest.approx(sps.fisher_exact([[5, 1], [0, 6]]).pvalue)
    assert ct2.counts.set_index("a").loc["Total", "Total"] == 12


def test_compare_auto_picks_a_rank_test_for_skewed_data_and_t_gives_welch(waltons):
    auto = stats.compare(waltons, "T", "group").iloc[0]
    assert auto["test"] == "mann-whitney"
    a, b = waltons.query("group == 'control'")["T"], waltons.query("group == 'miR-137'")["T"]
    assert auto["p_value"] == pytest.approx(sps.mannwhitneyu(a, b).pvalue)
    t = stats.compare(waltons, "T", "group", "t").iloc[0]
    ref = sps.ttest_ind(a, b, equal_var=False)
    assert t["test"] == "welch-t" and t["p_value"] == pytest.approx(ref.pvalue)
    assert (t["ci_low"], t["ci_high"]) == pytest.approx(tuple(ref.confidence_interval()))
    assert t["ci_low"] < t["estimate_value"] < t["ci_high"] and t["effect_size"] > 2  # large Hedges g
    kw = stats.compare(waltons.assign(g3=waltons.index % 3), "T", "g3", "kruskal").iloc[0]
    assert kw["p_value"] == pytest.approx(sps.kruskal(*[g["T"] for _, g in waltons.groupby(waltons.index % 3)]).pvalue)
    with pytest.raises(Invalid, match="two groups"):
        stats.compare(waltons.assign(g3=waltons.index % 3), "T", "g3", "t")


def test_incidence_counts_person_time_inside_the_period():
    df = pd.DataFrame({"start": ["2020-01-01", "2020-01-01", "2021-01-01"],
                       "end": ["", "2020-12-31", ""],
                       "event": ["2020-07-02", "", "2019-05-01"]})
    res = stats.incidence(df, "start", "end", "event", ("2020-01-01", "2021-01-01")).iloc[0]
    # person 1: half a year to the event; person 2: a full year less a day; person 3: not in the period.
    assert res["events"] == 1
    assert res["person_years"] == pytest.approx((183 + 365) / 365.25, rel=1e-6)
    assert res["rate"] == pytest.approx(1 / res["person_years"] * 1000)
    assert res["ci_low"] == pytest.approx(stats.poisson_ci(1)[0] / res["person_years"] * 1000)


def test_prevalence_from_a_case_column_and_from_onset_dates():
    df = pd.DataFrame({"case": [True] * 81 + [False] * 182})
    row = stats.prevalence(df, "case").iloc[0]
    assert (row["cases"], row["persons"]) == (81, 263) and round(row["ci_low"], 4) == 0.2553
    dates = pd.DataFrame({"onset": ["2019-01-01", "2020-06-01", "2022-01-01", None],
                          "end": ["2019-12-31", None, None, None]})
    p = stats.prevalence(dates, onset="onset", end="end", period=("2020-01-01", "2021-01-01")).iloc[0]
    assert (p["cases"], p["persons"]) == (1, 4)


def test_crosstab_suppression_hides_small_cells_and_their_complements():
    counts = pd.DataFrame({"a": ["x", "y", "Total"], "p": [3, 40, 43], "q": [50, 60, 110], "Total": [53, 100, 153]})
    out = suppression.crosstab(counts, 5).set_index("a")
    assert out.loc["x", "p"] == "<5"
    # Row x and column p each had one hidden cell: the smallest other cells go too, so neither the
    # row nor the column total gives the 3 back.
    assert out.loc["x", "q"] == suppression.HIDDEN and out.loc["y", "p"] == suppression.HIDDEN
    assert out.loc["y", "q"] == suppression.HIDDEN and out.loc["Total", "Total"] == 153
    # A small column total would be the grand total minus the other column totals: that one goes too.
    margins = pd.DataFrame({"a": ["x", "y", "Total"], "p": [3, 0, 3], "q": [50, 60, 110], "Total": [53, 60, 113]})
    m = suppression.crosstab(margins, 5).set_index("a")
    assert m.loc["Total", "p"] == "<5" and m.loc["Total", "q"] == suppression.HIDDEN
    assert m.loc["x", "p"] == "<5" and m.loc["y", "p"] == 0 and m.loc["Total", "Total"] == 113


def test_frequency_suppression_keeps_zero_and_protects_against_the_total():
    freq = pd.DataFrame({"value": ["a", "b", "c", "d"], "n": [2, 0, 30, 50], "percent": [2.4, 0, 36.6, 61.0]})
    out = suppression.counts_table(freq, 5, "n", ["percent"]).set_index("value")
    assert out.loc["a", "n"] == "<5" and out.loc["a", "percent"] == suppression.HIDDEN
    assert out.loc["b", "n"] == 0
    assert out.loc["c", "n"] == suppression.HIDDEN and out.loc["d", "n"] == 50


def test_bad_input_is_invalid(waltons):
    with pytest.raises(Invalid, match="unknown column"):
        stats.describe(waltons, "nope")
    with pytest.raises(Invalid, match="1 \\(event\\) or 0"):
        stats.kaplan_meier(waltons.assign(E=2), "T", "E")
    with pytest.raises(Invalid, match="non-numeric"):
        stats.describe(waltons, "group")


# ---------------------------------------------------------------- CLI

runner = CliRunner()


@pytest.fixture
def waltons_csv(tmp_path: Path, waltons) -> Path:
    p = tmp_path / "waltons.csv"
    waltons.to_csv(p, index=False)
    return p


def test_cli_km_writes_tables_and_a_png(tmp_path: Path, waltons_csv: Path):
    out, plot = tmp_path / "out" / "km.parquet", tmp_path / "out" / "km.png"
    r = runner.invoke(app, ["stats", "km", str(waltons_csv), "--time", "T", "--event", "E", "--group", "group",
                            "--out", str(out), "--plot", str(plot), "--at", "0,20,40,60"])
    assert r.exit_code == 0, r.output
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    summary = stats.load_table(out)
    assert summary.set_index("group")["median"].to_dict() == {"control": 58.0, "miR-137": 26.0}
    assert stats.load_table(tmp_path / "out" / "km-at-risk.parquet")["at_risk"].max() == 129


def test_cli_suppression_reaches_the_written_table(tmp_path: Path, waltons_csv: Path):
    out = tmp_path / "risk.csv"
    r = runner.invoke(app, ["stats", "km", str(waltons_csv), "--time", "T", "--event", "E", "--group", "group",
                            "--at", "0,60", "--suppress", "5", "--out", str(out)])
    assert r.exit_code == 0, r.output
    at_risk = pd.read_csv(tmp_path / "risk-at-risk.csv", dtype=str)
    assert at_risk.set_index(["group", "time"]).loc[("miR-137", "60.0"), "at_risk"] == "<5"  # 2 at risk


def test_cli_unknown_column_exits_non_zero_and_writes_nothing(tmp_path: Path, waltons_csv: Path):
    out, plot = tmp_path / "d.csv", tmp_path / "d.png"
    r = runner.invoke(app, ["stats", "describe", str(waltons_csv), "--column", "age", "--out", str(out),
                            "--plot", str(plot)])
    assert r.exit_code == 3 and "unknown column(s) age" in r.output
    assert list(tmp_path.iterdir()) == [waltons_csv]


def test_cli_unreadable_input_is_a_clear_error(tmp_path: Path):
    r = runner.invoke(app, ["stats", "frequencies", str(tmp_path / "missing.csv"), "--column", "x"])
    assert r.exit_code == 3 and "no such file" in r.output


def test_cli_stats_over_a_view_of_a_fhir_folder(tmp_path: Path):
    folder = tmp_path / "export"
    folder.mkdir()
    genders = ["female"] * 7 + ["male"] * 3
    (folder / "Patient.ndjson").write_text("".join(
        json.dumps({"resourceType": "Patient", "id": f"p{i}", "gender": g}) + "\n" for i, g in enumerate(genders)))
    view = {"resourceType": "ViewDefinition", "name": "patients", "resource": "Patient", "status": "active",
            "select": [{"column": [{"name": "id", "path": "getResourceKey()"}, {"name": "gender", "path": "gender"}]}]}
    (tmp_path / "view.json").write_text(json.dumps(view))
    out = tmp_path / "genders.csv"
    r = runner.invoke(app, ["stats", "frequencies", str(folder), "--view", str(tmp_path / "view.json"),
                            "--column", "gender", "--out", str(out)])
    assert r.exit_code == 0, r.output
    assert pd.read_csv(out).set_index("value")["n"].to_dict() == {"female": 7, "male": 3}
    r = runner.invoke(app, ["stats", "frequencies", str(folder), "--view", str(tmp_path / "view.json"),
                            "--column", "gender", "--suppress", "5", "--out", str(out)])
    written = pd.read_csv(out, dtype=str).set_index("value")
    # 3 males are hidden; the 7 females would give them back from the total of 10, so they go too.
    assert written.loc["male", "n"] == "<5" and written.loc["female", "n"] == suppression.HIDDEN
    assert (written["percent"] == suppression.HIDDEN).all()


def test_cli_prevalence_suppression_hides_cases_revealed_by_few_non_cases(tmp_path: Path):
    table = tmp_path / "t.csv"
    pd.DataFrame({"case": [True] * 48 + [False] * 2 + [True] * 10 + [False] * 40,
                  "site": ["a"] * 50 + ["b"] * 50}).to_csv(table, index=False)
    out = tmp_path / "prev.csv"
    r = runner.invoke(app, ["stats", "prevalence", str(table), "--case", "case", "--by", "site",
                            "--suppress", "5", "--out", str(out)])
    assert r.exit_code == 0, r.output
    rows = pd.read_csv(out, dtype=str).set_index("group")
    assert rows.loc["a", "cases"] == suppression.HIDDEN and rows.loc["a", "ci_low"] == suppression.HIDDEN
    assert rows.loc["b", "cases"] == "10" and float(rows.loc["b", "prevalence"]) == 0.2


def test_cli_describe_suppression_hides_every_statistic_of_a_small_group(tmp_path: Path):
    table = tmp_path / "t.csv"
    pd.DataFrame({"x": list(range(20)) + [100, 200], "g": ["big"] * 20 + ["small"] * 2}).to_csv(table, index=False)
    out = tmp_path / "d.csv"
    r = runner.invoke(app, ["stats", "describe", str(table), "--column", "x", "--by", "g", "--suppress", "5",
                            "--out", str(out)])
    assert r.exit_code == 0, r.output
    rows = pd.read_csv(out, dtype=str).set_index("group")
    assert rows.loc["small", "n"] == "<5"
    assert (rows.loc["small", ["mean", "sd", "median", "min", "max"]] == suppression.HIDDEN).all()
    assert rows.loc["big", "n"] == "20" and float(rows.loc["big", "mean"]) == 9.5
