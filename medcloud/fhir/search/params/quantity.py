"""quantity parameters (search.html#quantity): ``[prefix]number|system|code`` and ``number||unit``.

Units are compared as written (no UCUM conversion): with a system, ``code`` must match; without
one, the unit may match either the coded unit or the human ``unit``.
"""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import ColumnElement, and_, or_

from medcloud.errors import Invalid
from medcloud.fhir.search.params.number import NumberValue, parse_number, value_predicate
from medcloud.fhir.search.parse import split_escaped, unescape


@dataclass(frozen=True, slots=True)
class QuantityValue:
    number: NumberValue
    system: str | None
    code: str | None


def parse(raw: str, modifier: str | None = None) -> QuantityValue:
    parts = split_escaped(raw, "|")
    if len(parts) not in (1, 3):
        raise Invalid(f"a quantity is number, number|system|code or number||code (not {raw!r})")
    number = parse_number(parts[0])
    if len(parts) == 1:
        return QuantityValue(number, None, None)
    return QuantityValue(number, unescape(parts[1]) or None, unescape(parts[2]) or None)


def predicate(t, v: QuantityValue) -> ColumnElement[bool]:
    conds = [value_predicate(t.c.value, v.number)]
    if v.system is not None:
        conds.append(t.c.system == v.system)
        if v.code is not None:
            conds.append(t.c.code == v.code)
    elif v.code is not None:
        conds.append(or_(t.c.code == v.code, t.c.unit == v.code))
    return and_(*conds)
