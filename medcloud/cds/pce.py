"""The Pooled Cohort Equations (Goff et al., 2013 ACC/AHA Guideline on the Assessment of Cardiovascular
Risk, Circulation 2014;129:S49-S73, Table A): 10-year risk of a first hard ASCVD event.

Risk = 1 - S10 ** exp(sum(coefficient * term) - mean), with one coefficient set per sex and race
(African-American, or white; the guideline recommends the white equations for other groups). The
equations were derived for ages 40-79, total cholesterol 130-320 mg/dL, HDL 20-100 mg/dL and systolic
pressure 90-200 mmHg; outside those the caller says so instead of extrapolating silently.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

# term name -> coefficient, per group; then (mean of the sum, baseline survival at 10 years)
_TERMS = ("ln_age", "ln_age_sq", "ln_tc", "ln_age_ln_tc", "ln_hdl", "ln_age_ln_hdl", "ln_treated_sbp",
          "ln_age_ln_treated_sbp", "ln_untreated_sbp", "ln_age_ln_untreated_sbp", "smoker", "ln_age_smoker",
          "diabetes")
_GROUPS: dict[str, tuple[dict[str, float], float, float]] = {
    "white-female": ({"ln_age": -29.799, "ln_age_sq": 4.884, "ln_tc": 13.540, "ln_age_ln_tc": -3.114,
                      "ln_hdl": -13.578, "ln_age_ln_hdl": 3.149, "ln_treated_sbp": 2.019, "ln_untreated_sbp": 1.957,
                      "smoker": 7.574, "ln_age_smoker": -1.665, "diabetes": 0.661}, -29.18, 0.9665),
    "african-american-female": ({"ln_age": 17.114, "ln_tc": 0.940, "ln_hdl": -18.920, "ln_age_ln_hdl": 4.475,
                                 "ln_treated_sbp": 29.291, "ln_age_ln_treated_sbp": -6.432,
                                 "ln_untreated_sbp": 27.820, "ln_age_ln_untreated_sbp": -6.087,
                                 "smoker": 0.691, "diabetes": 0.874}, 86.61, 0.9533),
    "white-male": ({"ln_age": 12.344, "ln_tc": 11.853, "ln_age_ln_tc": -2.664, "ln_hdl": -7.990,
                    "ln_age_ln_hdl": 1.769, "ln_treated_sbp": 1.797, "ln_untreated_sbp": 1.764, "smoker": 7.837,
                    "ln_age_smoker": -1.795, "diabetes": 0.658}, 61.18, 0.9144),
    "african-american-male": ({"ln_age": 2.469, "ln_tc": 0.302, "ln_hdl": -0.307, "ln_treated_sbp": 1.916,
                               "ln_untreated_sbp": 1.809, "smoker": 0.549, "diabetes": 0.645}, 19.54, 0.8954),
}
LABELS = {"ln_age": "ln age", "ln_age_sq": "(ln age)²", "ln_tc": "ln total cholesterol",
          "ln_age_ln_tc": "ln age × ln total cholesterol", "ln_hdl": "ln HDL-C", "ln_age_ln_hdl": "ln age × ln HDL-C",
          "ln_treated_sbp": "ln treated systolic BP", "ln_age_ln_treated_sbp": "ln age × ln treated systolic BP",
          "ln_untreated_sbp": "ln untreated systolic BP",
          "ln_age_ln_untreated_sbp": "ln age × ln untreated systolic BP", "smoker": "current smoker",
          "ln_age_smoker": "ln age × current smoker", "diabetes": "diabetes"}
AGE_RANGE = (40, 79)


@dataclass(frozen=True)
class PceInputs:
    age: float
    female: bool
    african_american: bool
    total_cholesterol: float  # mg/dL
    hdl: float  # mg/dL
    systolic: float  # mmHg
    treated: bool  # on antihypertensive treatment
    smoker: bool
    diabetes: bool


@dataclass(frozen=True)
class Term:
    name: str
    value: float  # the term's x
    coefficient: float
    contribution: float  # coefficient * x


@dataclass(frozen=True)
class PceResult:
    group: str
    risk: float  # 0..1
    terms: tuple[Term, ...]
    individual_sum: float
    mean: float
    baseline_survival: float


def group_of(inputs: PceInputs) -> str:
    return f"{'african-american' if inputs.african_american else 'white'}-{'female' if inputs.female else 'male'}"


def ten_year_risk(inputs: PceInputs) -> PceResult:
    """The 10-year ASCVD risk and each term's contribution to the linear predictor."""
    for name, v in (("age", inputs.age), ("total cholesterol", inputs.total_cholesterol), ("HDL", inputs.hdl),
                    ("systolic pressure", inputs.systolic)):
        if not v > 0:
            raise ValueError(f"{name} must be positive, got {v}")
    group = group_of(inputs)
    coefficients, mean, s10 = _GROUPS[group]
    la, ltc, lhdl, lsbp = (math.log(inputs.age), math.log(inputs.total_cholesterol), math.log(inputs.hdl),
                           math.log(inputs.systolic))
    smoker, diabetes = float(inputs.smoker), float(inputs.diabetes)
    treated = inputs.treated
    x = {"ln_age": la, "ln_age_sq": la * la, "ln_tc": ltc, "ln_age_ln_tc": la * ltc, "ln_hdl": lhdl,
         "ln_age_ln_hdl": la * lhdl, "ln_treated_sbp": lsbp if treated else 0.0,
         "ln_age_ln_treated_sbp": la * lsbp if treated else 0.0, "ln_untreated_sbp": 0.0 if treated else lsbp,
         "ln_age_ln_untreated_sbp": 0.0 if treated else la * lsbp, "smoker": smoker,
         "ln_age_smoker": la * smoker, "diabetes": diabetes}
    terms = tuple(Term(t, x[t], coefficients[t], coefficients[t] * x[t]) for t in _TERMS if t in coefficients)
    total = sum(t.contribution for t in terms)
    risk = 1.0 - s10 ** math.exp(total - mean)
    return PceResult(group, min(max(risk, 0.0), 1.0), terms, total, mean, s10)
