"""uri parameters (search.html#uri): exact match, ``:above`` (stored is a prefix), ``:below``."""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import ColumnElement

from medcloud.errors import Invalid
from medcloud.fhir.search.params.string import starts_with
from medcloud.fhir.search.parse import unescape

MODIFIERS = frozenset({"above", "below"})


@dataclass(frozen=True, slots=True)
class UriValue:
    value: str
    modifier: str | None


def parse(raw: str, modifier: str | None = None) -> UriValue:
    value = unescape(raw)
    if not value:
        raise Invalid("empty uri search value")
    return UriValue(value, modifier)


def _ancestors(uri: str) -> list[str]:
    """``http://a/b/c`` -> itself and every shorter path ending at a ``/`` boundary."""
    out = [uri]
    cut = uri.rstrip("/")
    while "/" in cut:
        cut = cut.rsplit("/", 1)[0]
        if cut.endswith(":/") or cut.endswith(":") or not cut:
            break
        out += [cut, cut + "/"]
    return out


def predicate(t, v: UriValue) -> ColumnElement[bool]:
    if v.modifier == "below":
        return starts_with(t.c.value, v.value)
    if v.modifier == "above":
        return t.c.value.in_(_ancestors(v.value))
    return t.c.value == v.value
