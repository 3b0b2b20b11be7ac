"""One module per search-parameter type: parse a value, then a SQL predicate over its index table.

Each ``parse`` raises ``Invalid`` for a malformed value; each ``predicate`` takes an alias of the
type's index table (storage/schema.py) and returns a SQLAlchemy condition on that row alone.
The planner adds ``type``/``param`` and combines rows into resource conditions.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import ColumnElement

from medcloud.errors import Invalid
from medcloud.fhir.search.params import date, number, quantity, reference, string, token, uri
from medcloud.fhir.terminology import Terminology


def parse_value(ptype: str, raw: str, modifier: str | None, *, targets: tuple[str, ...] = (), base: str = "",
                terminology: Terminology | None = None) -> Any:
    """One (OR-) value of a parameter of type ``ptype``; raises ``Invalid``."""
    if ptype == "string":
        return string.parse(raw, modifier)
    if ptype == "token":
        return token.parse(raw, modifier, terminology)
    if ptype == "date":
        return date.parse(raw)
    if ptype == "number":
        return number.parse(raw)
    if ptype == "quantity":
        return quantity.parse(raw)
    if ptype == "uri":
        return uri.parse(raw, modifier)
    if ptype == "reference":
        return reference.parse(raw, modifier, targets, base)
    raise Invalid(f"search parameters of type {ptype!r} are not supported")


def predicate(ptype: str, t: Any, value: Any, now_us: int) -> ColumnElement[bool]:
    if ptype == "date":
        return date.predicate(t, value, now_us)
    module = {"string": string, "token": token, "number": number, "quantity": quantity, "uri": uri,
              "reference": reference}[ptype]
    return module.predicate(t, value)
