"""FHIR primitive values as search ranges: shared by indexing (write side) and search (read side).

Dates become inclusive ``(low, high)`` microsecond ranges in UTC and decimals become implicit
precision ranges, following https://hl7.org/fhir/R4/search.html#date and #number: a value stands
for every instant (number) its precision allows, and comparisons are made on those ranges.
"""

from __future__ import annotations

import math
import re
import unicodedata
from datetime import date
from decimal import Decimal, InvalidOperation
from functools import lru_cache

from medcloud.errors import Invalid

_US_PER_DAY = 86_400_000_000
_EPOCH_ORDINAL = date(1970, 1, 1).toordinal()

MIN_US = (date(1, 1, 1).toordinal() - _EPOCH_ORDINAL) * _US_PER_DAY
"""0001-01-01T00:00:00Z in microseconds since the Unix epoch: the open lower end of a range."""
MAX_US = (date(9999, 12, 31).toordinal() - _EPOCH_ORDINAL + 1) * _US_PER_DAY - 1
"""9999-12-31T23:59:59.999999Z in microseconds since the Unix epoch: the open upper end."""

# https://hl7.org/fhir/R4/datatypes.html#dateTime, relaxed to also accept hh:mm (search values
# may omit seconds) and a time without a zone (treated as UTC).
_DATE_RE = re.compile(
    r"([0-9]{4})(?:-([0-9]{2})(?:-([0-9]{2})"
    r"(?:T([0-9]{2}):([0-9]{2})(?::([0-9]{2})(?:\.([0-9]{1,9}))?)?(Z|[+-][0-9]{2}:[0-9]{2})?)?)?)?"
)


def date_range(value: str) -> tuple[int, int]:
    """FHIR date/dateTime/instant -> inclusive (low, high) microseconds since the epoch, UTC.

    The range covers the value's precision ('2023' is the whole year; fractional seconds beyond
    microseconds are truncated). Values without a time zone are taken as UTC (the spec leaves
    them to the server). Raises ``Invalid``.
    """
    if type(value) is not str:
        raise Invalid(f"not a FHIR date/dateTime: {value!r}")
    return _date_range(value)


@lru_cache(maxsize=8192)
def _date_range(value: str) -> tuple[int, int]:
    m = _DATE_RE.fullmatch(value)
    if m is None:
        raise Invalid(f"not a FHIR date/dateTime: {value!r}")
    ys, ms, ds, hs, mins, ss, frac, tz = m.groups()
    year = int(ys)
    month = int(ms) if ms else 1
    day = int(ds) if ds else 1
    try:
        start = date(year, month, day)
        if ms is None:
            end = date(year, 12, 31)
        elif ds is None:
            end = (
                date(year, 12, 31)
                if month == 12
                else date.fromordinal(date(year, month + 1, 1).toordinal() - 1)
            )
        else:
            end = start
    except (ValueError, OverflowError):
        raise Invalid(f"not a valid calendar date: {value!r}") from None
    low = (start.toordinal() - _EPOCH_ORDINAL) * _US_PER_DAY
    if hs is None:
        return low, (end.toordinal() - _EPOCH_ORDINAL + 1) * _US_PER_DAY - 1
    hour, minute = int(hs), int(mins)
    second = int(ss) if ss else 0
    # A leap second (:60) is allowed by the FHIR regex; it is folded into the preceding second.
    if hour > 23 or minute > 59 or second > 60:
        raise Invalid(f"not a valid time of day: {value!r}")
    second = min(second, 59)
    low += ((hour * 60 + minute) * 60 + second) * 1_000_000
    if ss is None:
        width = 60_000_000
    elif frac is None:
        width = 1_000_000
    else:
        digits = frac[:6]
        low += int(digits) * 10 ** (6 - len(digits))
        width = 10 ** (6 - len(digits))
    if tz and tz != "Z":
        oh, om = int(tz[1:3]), int(tz[4:6])
        if oh > 14 or om > 59:
            raise Invalid(f"not a valid time zone offset: {value!r}")
        offset = (oh * 60 + om) * 60_000_000
        low += -offset if tz[0] == "+" else offset
    high = low + width - 1
    # A zone offset can push the ends of years 0001/9999 outside the representable range.
    return min(max(low, MIN_US), MAX_US), max(min(high, MAX_US), MIN_US)


# https://hl7.org/fhir/R4/datatypes.html#decimal, plus a leading '+' and leading zeros in search values.
_DECIMAL_RE = re.compile(r"[+-]?[0-9]+(?:\.[0-9]+)?(?:[eE][+-]?[0-9]+)?")


@lru_cache(maxsize=8192)
def _decimal_range(text: str) -> tuple[float, float, float]:
    if _DECIMAL_RE.fullmatch(text) is None:
        raise Invalid(f"not a decimal: {text!r}")
    try:
        d = Decimal(text)
        half = Decimal(5).scaleb(d.as_tuple().exponent - 1)  # type: ignore[operator]
        out = float(d), float(d - half), float(d + half)
    except (InvalidOperation, ArithmeticError):
        raise Invalid(f"decimal out of range: {text!r}") from None
    if not all(map(math.isfinite, out)):
        raise Invalid(f"decimal out of range: {text!r}")
    return out


def number_range(value: str | int | float | Decimal) -> tuple[float, float, float]:
    """Decimal -> (value, low, high), the implicit precision range of https://hl7.org/fhir/R4/search.html#number.

    Half a unit of the last written digit either side: '100' -> [99.5, 100.5], '1.50' ->
    [1.495, 1.505], '1e2' -> [50, 150] (the exponent sets the last digit; the spec's example
    table says [95, 105] for 1e2, which contradicts its own significant-figures rule).
    Floats use their shortest repr, so a JSON 1.50 parsed to a float counts as 1.5. Raises ``Invalid``.
    """
    if type(value) is bool:
        raise Invalid(f"not a decimal: {value!r}")
    if isinstance(value, int):
        if abs(value) > 2**1000:
            raise Invalid(f"decimal out of range: {value!r}")
        f = float(value)
        return f, f - 0.5, f + 0.5
    if isinstance(value, float):
        return _decimal_range(repr(value))
    if isinstance(value, Decimal):
        if not value.is_finite():
            raise Invalid(f"not a finite decimal: {value!r}")
        return _decimal_range(str(value))
    if isinstance(value, str):
        return _decimal_range(value)
    raise Invalid(f"not a decimal: {value!r}")


@lru_cache(maxsize=65536)
def normalise_string(s: str) -> str:
    """Case-fold, strip accents (NFKD minus combining marks) and collapse whitespace, for string search."""
    if s.isascii():
        return " ".join(s.lower().split())
    # Compatibility caseless matching (Unicode §3.13, D146): fold, decompose, fold again, so that
    # e.g. a mathematical 𝔸 (no case mapping until decomposed) still ends up as 'a'.
    folded = unicodedata.normalize("NFKD", unicodedata.normalize("NFKD", s).casefold()).casefold()
    decomposed = unicodedata.normalize("NFKD", folded)
    stripped = "".join(c for c in decomposed if not unicodedata.combining(c))
    return " ".join(unicodedata.normalize("NFKC", stripped).split())
