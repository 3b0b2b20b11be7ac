"""number parameters (search.html#number): prefixes, and equality over the implicit precision range.

``eq100`` means [99.5, 100.5): a stored value matches when it lies in that range. Ordered prefixes
compare the stored value with the value as written; ``ap`` allows 10%.
"""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import ColumnElement, and_, not_

from medcloud.errors import Invalid
from medcloud.fhir.primitives import number_range
from medcloud.fhir.search.parse import split_prefix, unescape


@dataclass(frozen=True, slots=True)
class NumberValue:
    prefix: str
    value: float
    lo: float
    hi: float


def parse_number(raw: str) -> NumberValue:
    prefix, rest = split_prefix(unescape(raw))
    try:
        v, lo, hi = number_range(rest)
    except Invalid as e:
        raise Invalid(f"invalid number search value {raw!r}: {e.message}") from None
    return NumberValue(prefix, v, lo, hi)


def parse(raw: str, modifier: str | None = None) -> NumberValue:
    return parse_number(raw)


def value_predicate(col, n: NumberValue) -> ColumnElement[bool]:
    p = n.prefix
    eq = and_(col >= n.lo, col < n.hi)
    if p == "eq":
        return eq
    if p == "ne":
        return not_(eq)
    if p in ("gt", "sa"):
        return col > n.value
    if p in ("lt", "eb"):
        return col < n.value
    if p == "ge":
        return col >= n.value
    if p == "le":
        return col <= n.value
    if p == "ap":
        slack = abs(n.value) * 0.1
        return and_(col >= min(n.lo, n.value - slack), col <= max(n.hi, n.value + slack))
    raise Invalid(f"unknown prefix {p!r}")


def predicate(t, v: NumberValue) -> ColumnElement[bool]:
    return value_predicate(t.c.value, v)
