"""The equations against their published values: PCE worked examples (Goff 2013, Table A) and the NEWS2 chart."""

from __future__ import annotations

import pytest

from medcloud.cds import news2, pce
from medcloud.cds.units import UnitError, convert


@pytest.mark.parametrize(("female", "aa", "published_pct", "published_sum"), [
    (True, False, 2.1, -29.67), (True, True, 3.0, 86.16), (False, False, 5.3, 60.69), (False, True, 6.1, 18.97),
])
def test_pce_reproduces_the_guideline_worked_examples(female: bool, aa: bool, published_pct: float,
                                                      published_sum: float) -> None:
    # Goff 2013 Table A: 55 years, TC 213, HDL 50, untreated SBP 120, non-smoker, no diabetes.
    r = pce.ten_year_risk(pce.PceInputs(55, female, aa, 213, 50, 120, False, False, False))
    assert r.risk * 100 == pytest.approx(published_pct, abs=0.15)  # the table rounds its sums to 2 decimals
    assert r.individual_sum == pytest.approx(published_sum, abs=0.05)
    assert sum(t.contribution for t in r.terms) == pytest.approx(r.individual_sum)


def test_pce_risk_rises_with_each_risk_factor() -> None:
    base = pce.PceInputs(60, False, False, 200, 50, 140, False, False, False)
    b = pce.ten_year_risk(base).risk
    for changed in (dict(smoker=True), dict(diabetes=True), dict(systolic=160), dict(hdl=35)):
        assert pce.ten_year_risk(pce.PceInputs(**{**base.__dict__, **changed})).risk > b, changed


@pytest.mark.parametrize(("inputs", "total", "band"), [
    (dict(respiratory_rate=16, spo2=97, on_oxygen=False, systolic=125, pulse=70, alert=True, temperature=37.0), 0, "low"),
    (dict(respiratory_rate=22, spo2=95, on_oxygen=False, systolic=105, pulse=95, alert=True, temperature=38.5), 6, "medium"),
    (dict(respiratory_rate=16, spo2=97, on_oxygen=False, systolic=125, pulse=70, alert=False, temperature=37.0), 3,
     "low-medium"),
    (dict(respiratory_rate=26, spo2=90, on_oxygen=True, systolic=88, pulse=135, alert=False, temperature=34.8), 20, "high"),
    (dict(respiratory_rate=8, spo2=96, on_oxygen=False, systolic=111, pulse=51, alert=True, temperature=36.1), 3,
     "low-medium"),
    (dict(respiratory_rate=21, spo2=94, on_oxygen=False, systolic=220, pulse=41, alert=True, temperature=39.1), 9, "high"),
])
def test_news2_scores_follow_the_rcp_chart(inputs: dict, total: int, band: str) -> None:
    r = news2.score(news2.News2Inputs(**inputs))
    assert (r.total, r.band) == (total, band)


@pytest.mark.parametrize(("spo2", "oxygen", "points"), [
    (83, False, 3), (85, False, 2), (87, True, 1), (90, True, 0), (95, False, 0), (93, True, 1), (96, True, 2),
    (97, True, 3)])
def test_news2_spo2_scale2(spo2: float, oxygen: bool, points: int) -> None:
    assert news2.spo2_scale2(spo2, oxygen) == points


def test_news2_scale1_boundaries() -> None:
    assert [news2.spo2_scale1(s) for s in (91, 92, 93, 94, 95, 96)] == [3, 2, 2, 1, 1, 0]


def test_units_convert_known_and_refuse_unknown() -> None:
    assert convert(5.5, "mmol/L", "cholesterol")[0] == pytest.approx(212.685)
    assert convert(98.6, "[degF]", "temperature")[0] == pytest.approx(37.0)
    with pytest.raises(UnitError, match="mg/dL"):
        convert(5.5, "mmol/mol", "cholesterol")
    with pytest.raises(UnitError, match="no unit"):
        convert(5.5, None, "cholesterol")
