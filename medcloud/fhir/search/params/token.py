"""token parameters (search.html#token): code, system|code, |code, system|, :not, :text, :of-type."""

from __future__ import annotations

import re
from dataclasses import dataclass

from sqlalchemy import ColumnElement, FromClause, and_, or_

from medcloud.errors import Invalid, NotSupported
from medcloud.fhir.primitives import normalise_string
from medcloud.fhir.search.params.string import starts_with
from medcloud.fhir.search.parse import split_escaped, unescape

MODIFIERS = frozenset({"not", "text", "of-type"})
UNSUPPORTED = frozenset({"in", "not-in", "above", "below"})

_LOOKS_PREFIXED = re.compile(r"(eq|ne|gt|lt|ge|le|sa|eb|ap)[0-9]")


@dataclass(frozen=True, slots=True)
class TokenValue:
    system: str | None = None
    code: str | None = None
    no_system: bool = False  # "|code": only codes without a system
    text: str | None = None  # :text


def parse(raw: str, modifier: str | None) -> TokenValue:
    if modifier in UNSUPPORTED:
        raise NotSupported(f"the :{modifier} modifier on token parameters is not supported (no terminology server)")
    if modifier == "text":
        text = normalise_string(unescape(raw))
        if not text:
            raise Invalid("empty :text search value")
        return TokenValue(text=text)
    parts = split_escaped(raw, "|")
    if modifier == "of-type":
        if len(parts) != 3 or not parts[1] or not parts[2]:
            raise Invalid(f":of-type needs system|code|value, not {raw!r}")
        return TokenValue(unescape(parts[0]) or None, f"{unescape(parts[1])}|{unescape(parts[2])}")
    if len(parts) == 1:
        if _LOOKS_PREFIXED.match(raw):
            raise Invalid(f"comparison prefixes do not apply to token parameters ({raw!r})")
        return TokenValue(code=unescape(raw))
    if len(parts) != 2:
        raise Invalid(f"a token is code, system|code, |code or system| (not {raw!r})")
    system, code = unescape(parts[0]), unescape(parts[1])
    if not system and not code:
        raise Invalid(f"empty token {raw!r}")
    if not system:
        return TokenValue(code=code, no_system=True)
    return TokenValue(system=system, code=code or None)


def predicate(t: FromClause, v: TokenValue) -> ColumnElement[bool]:
    if v.text is not None:
        return or_(starts_with(t.c.text, v.text), t.c.text.contains(" " + v.text, autoescape=True))
    conds = []
    if v.code is not None:
        conds.append(t.c.code == v.code)
    if v.no_system:
        conds.append(t.c.system.is_(None))
    elif v.system is not None:
        conds.append(t.c.system == v.system)
    return and_(*conds)
