"""date parameters (search.html#date, #prefix): ranges against stored inclusive (low, high) ranges.

With the search value's range [lo, hi] and a stored range [low, high] (both implied by precision),
search.html#prefix reads:

    eq  the search range contains the stored range       low >= lo and high <= hi
    ne  not eq
    gt  the range above the value overlaps the stored     high > hi
    lt  the range below the value overlaps the stored     low < lo
    ge  gt or eq;  le  lt or eq
    sa  the stored range starts after the search range    low > hi
    eb  the stored range ends before the search range     high < lo
    ap  overlaps the search range widened by 10% of its distance from now
"""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import ColumnElement, and_, or_

from medcloud.errors import Invalid
from medcloud.fhir.primitives import date_range
from medcloud.fhir.search.parse import split_prefix, unescape


@dataclass(frozen=True, slots=True)
class DateValue:
    prefix: str
    lo: int
    hi: int


def parse(raw: str, modifier: str | None = None) -> DateValue:
    prefix, rest = split_prefix(unescape(raw))
    try:
        lo, hi = date_range(rest)
    except Invalid as e:
        raise Invalid(f"invalid date search value {raw!r}: {e.message}") from None
    return DateValue(prefix, lo, hi)


def range_predicate(low, high, v: DateValue, now_us: int) -> ColumnElement[bool]:
    # The extra bounds (``low <= hi`` on eq, ``high >= lo`` on ge, ``low <= hi`` on le) follow from
    # low <= high and change no result; they give both databases one bounded index range to scan.
    lo, hi = v.lo, v.hi
    eq = and_(low >= lo, low <= hi, high <= hi)
    p = v.prefix
    if p == "eq":
        return eq
    if p == "ne":
        return or_(low < lo, high > hi)
    if p == "gt":
        return high > hi
    if p == "lt":
        return low < lo
    if p == "ge":
        return and_(high >= lo, or_(high > hi, eq))
    if p == "le":
        return and_(low <= hi, or_(low < lo, eq))
    if p == "sa":
        return low > hi
    if p == "eb":
        return high < lo
    slack = abs(now_us - (lo + hi) // 2) // 10
    return and_(low <= hi + slack, high >= lo - slack)


def predicate(t, v: DateValue, now_us: int) -> ColumnElement[bool]:
    return range_predicate(t.c.low, t.c.high, v, now_us)
