"""lowBoundary()/highBoundary() as inline Spark SQL: the DuckDB macros of ``_sqltext.py`` (fp_low,
fp_high and their date/time/decimal helpers) spelled without macros."""

from __future__ import annotations

from typing import TYPE_CHECKING

from medcloud.analytics.fhirpath._sqltext import _DT, _TIME
from medcloud.analytics.fhirpath.to_spark import is_num, is_obj, is_str, json_text, sql_str

if TYPE_CHECKING:
    from medcloud.analytics.fhirpath.to_spark import SparkCompiler

_DT_GROUPS = ("y", "mo", "d", "h", "mi", "sec", "f", "tz")
_TIME_GROUPS = ("h", "mi", "sec", "f")


def _groups(s: str, regex: str, names: tuple[str, ...]) -> dict[str, str]:
    return {n: f"regexp_extract({s}, {sql_str(regex)}, {k})" for k, n in enumerate(names, 1)}


def _or(g: dict[str, str], name: str, default: str) -> str:
    return f"CASE WHEN {g[name]} = '' THEN '{default}' ELSE {g[name]} END"


def _frac(g: dict[str, str], low: bool) -> str:
    return f"CASE WHEN {g['f']} = '' THEN '{'000' if low else '999'}' ELSE rpad({g['f']}, 3, '{'0' if low else '9'}') END"


def _datetime(s: str, low: bool, with_time: bool) -> str:
    g = _groups(s, _DT, _DT_GROUPS)
    mo = _or(g, "mo", "01" if low else "12")
    last_day = f"date_format(last_day(make_date(CAST({g['y']} AS INT), CAST({mo} AS INT), 1)), 'dd')"
    day = _or(g, "d", "01") if low else f"CASE WHEN {g['d']} = '' THEN {last_day} ELSE {g['d']} END"
    parts = [g["y"], "'-'", mo, "'-'", day]
    if with_time:
        hh, mm = ("00", "00") if low else ("23", "59")
        tz = f"CASE WHEN {g['tz']} = '' THEN '{'+14:00' if low else '-12:00'}' ELSE {g['tz']} END"
        parts += [
            "'T'",
            _or(g, "h", hh),
            "':'",
            _or(g, "mi", mm),
            "':'",
            _or(g, "sec", mm),
            "'.'",
            _frac(g, low),
            tz,
        ]
    return f"CASE WHEN {s} RLIKE {sql_str(_DT)} THEN concat({', '.join(parts)}) END"


def _time(s: str, low: bool) -> str:
    g = _groups(s, _TIME, _TIME_GROUPS)
    d = "00" if low else "59"
    parts = [g["h"], "':'", _or(g, "mi", d), "':'", _or(g, "sec", d), "'.'", _frac(g, low)]
    return f"CASE WHEN {s} RLIKE {sql_str(_TIME)} THEN concat({', '.join(parts)}) END"


def _decimal(c: SparkCompiler, t: str, p: str | None, low: bool) -> str:
    # Half a unit of the last written digit (FHIRPath lowBoundary()/highBoundary() on decimals).
    sign = "-" if low else "+"
    rnd = "floor" if low else "ceil"

    def body(d: str) -> str:
        x = f"(CAST({t} AS DOUBLE) {sign} 0.5 * pow(10, -{d}))"
        if p is None:
            return f"format_string(concat('%.', CAST({d} + 1 AS STRING), 'f'), {x})"
        return (
            f"format_string(concat('%.', CAST({p} AS STRING), 'f'), {rnd}({x} * pow(10, {p})) / pow(10, {p}))"
        )

    digits = f"CASE WHEN contains({t}, '.') THEN char_length(split_part({t}, '.', 2)) ELSE 0 END"
    return c.let(digits, body)


def boundary(c: SparkCompiler, low: bool, one: str, precision: str | None, hint: str | None) -> str:
    """A VARIANT: the low/high boundary of a decimal, date, dateTime, time or Period."""
    period = "start" if low else "end"

    def on(x: str) -> str:
        s = f"try_variant_get({x}, '$', 'string')"
        if hint == "time":
            as_string = _time(s, low)
        elif hint in ("dateTime", "instant"):
            as_string = _datetime(s, low, True)
        elif hint is not None:
            as_string = _datetime(s, low, False)
        else:
            as_string = (
                f"CASE WHEN {s} RLIKE {sql_str(_TIME)} THEN {_time(s, low)} "
                f"WHEN contains({s}, 'T') THEN {_datetime(s, low, True)} ELSE {_datetime(s, low, False)} END"
            )
        start = f"try_variant_get({x}, '$.{period}', 'string')"
        return (
            f"CASE WHEN {x} IS NULL THEN NULL "
            f"WHEN {is_num(x)} THEN parse_json({_decimal(c, f'({json_text(x)})', precision, low)}) "
            f"WHEN {is_obj(x)} THEN CAST({_datetime(start, low, True)} AS VARIANT) "
            f"WHEN NOT {is_str(x)} THEN NULL "
            f"ELSE CAST({as_string} AS VARIANT) END"
        )

    return c.let(one, on)
