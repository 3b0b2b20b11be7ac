"""string parameters (search.html#string): starts-with on the normalised value, :exact, :contains."""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import ColumnElement, FromClause, and_

from medcloud.errors import Invalid
from medcloud.fhir.primitives import normalise_string
from medcloud.fhir.search.parse import unescape

MODIFIERS = frozenset({"exact", "contains"})


@dataclass(frozen=True, slots=True)
class StringValue:
    text: str  # normalised, or as written for :exact
    modifier: str | None


def parse(raw: str, modifier: str | None) -> StringValue:
    text = unescape(raw)
    if modifier == "exact":
        return StringValue(text, modifier)
    norm = normalise_string(text)
    if not norm:
        raise Invalid(f"empty string search value {raw!r}")
    return StringValue(norm, modifier)


def predicate(t: FromClause, v: StringValue) -> ColumnElement[bool]:
    if v.modifier == "exact":
        return t.c.exact == v.text
    if v.modifier == "contains":
        return t.c.value.contains(v.text, autoescape=True)
    return starts_with(t.c.value, v.text)


def starts_with(col, prefix: str) -> ColumnElement[bool]:
    """A prefix match both databases answer from a b-tree index: a range, re-checked with LIKE.

    SQLite's LIKE is case-insensitive and so cannot use a BINARY index, and PostgreSQL only uses one
    for LIKE under the C collation; ``prefix <= col < prefix+1`` works for both.
    """
    upper = _successor(prefix)
    rng = col >= prefix if upper is None else and_(col >= prefix, col < upper)
    return and_(rng, col.startswith(prefix, autoescape=True))


def _successor(s: str) -> str | None:
    for i in range(len(s) - 1, -1, -1):
        if ord(s[i]) < 0x10FFFF and not (0xD7FF <= ord(s[i]) < 0xE000):
            return s[:i] + chr(ord(s[i]) + 1)
    return None
