"""A small UCUM-aware conversion table: the units CDS inputs arrive in, to the unit each equation needs.

Only conversions that are exact (or defined by a published factor) are listed; any other unit is
refused by name, so a risk is never computed from a value in the wrong unit. Cholesterol:
1 mmol/L = 38.67 mg/dL (molar mass of cholesterol, 386.65 g/mol), the factor the NCEP/ACC tables use.
"""

from __future__ import annotations

from collections.abc import Callable

# analyte -> (target UCUM unit, {accepted UCUM unit (or common spelling) -> conversion to target})
_LINEAR: dict[str, tuple[str, dict[str, Callable[[float], float]]]] = {
    "cholesterol": ("mg/dL", {"mg/dL": lambda v: v, "mmol/L": lambda v: v * 38.67,
                              "g/L": lambda v: v * 100.0, "mg/L": lambda v: v / 10.0}),
    "pressure": ("mm[Hg]", {"mm[Hg]": lambda v: v, "mmHg": lambda v: v, "kPa": lambda v: v * 7.500617}),
    "temperature": ("Cel", {"Cel": lambda v: v, "[degF]": lambda v: (v - 32.0) * 5.0 / 9.0,
                            "degF": lambda v: (v - 32.0) * 5.0 / 9.0, "K": lambda v: v - 273.15}),
    "rate": ("/min", {"/min": lambda v: v, "{breaths}/min": lambda v: v, "{beats}/min": lambda v: v,
                      "beats/min": lambda v: v, "breaths/min": lambda v: v, "/s": lambda v: v * 60.0}),
    "percent": ("%", {"%": lambda v: v, "1": lambda v: v * 100.0}),
    "flow": ("L/min", {"L/min": lambda v: v, "mL/min": lambda v: v / 1000.0}),
}


class UnitError(ValueError):
    """The value's unit is not one this analyte can be converted from."""


def convert(value: float, unit: str | None, analyte: str) -> tuple[float, str]:
    """``value`` in ``unit`` as the analyte's target unit; raises UnitError for an unknown or missing unit."""
    target, table = _LINEAR[analyte]
    if unit is None or unit == "":
        raise UnitError(f"no unit given (expected {target} or one of {', '.join(sorted(table))})")
    fn = table.get(unit)
    if fn is None:
        raise UnitError(f"unit {unit!r} cannot be converted to {target} (accepted: {', '.join(sorted(table))})")
    return fn(value), target


def accepted(analyte: str) -> list[str]:
    return sorted(_LINEAR[analyte][1])
