"""token parameters (search.html#token): code, system|code, |code, system|, :not, :text, :of-type,
:in / :not-in (ValueSet expansion) and :above / :below (code-system subsumption), see fhir/terminology.py."""

from __future__ import annotations

import re
from dataclasses import dataclass

from sqlalchemy import ColumnElement, FromClause, and_, false, or_

from medcloud.errors import Invalid, NotSupported
from medcloud.fhir.primitives import normalise_string
from medcloud.fhir.search.params.string import starts_with
from medcloud.fhir.search.parse import split_escaped, unescape
from medcloud.fhir.terminology import Expansion, Terminology

MODIFIERS = frozenset({"not", "text", "of-type", "in", "not-in", "above", "below"})
UNSUPPORTED: frozenset[str] = frozenset()
TERMINOLOGY = frozenset({"in", "not-in", "above", "below"})

_LOOKS_PREFIXED = re.compile(r"(eq|ne|gt|lt|ge|le|sa|eb|ap)[0-9]")


@dataclass(frozen=True, slots=True)
class TokenValue:
    system: str | None = None
    code: str | None = None
    no_system: bool = False  # "|code": only codes without a system
    text: str | None = None  # :text
    expansion: Expansion | None = None  # :in, :not-in (the value set), :above, :below (the related codes)


def parse(raw: str, modifier: str | None, terminology: Terminology | None = None) -> TokenValue:
    if modifier in TERMINOLOGY:
        if terminology is None:
            raise NotSupported(f"the :{modifier} modifier needs terminology, which is not available here")
        if modifier in ("in", "not-in"):
            return TokenValue(expansion=terminology.with_bare_codes(terminology.expand(unescape(raw))))
        parts = split_escaped(raw, "|")
        if len(parts) != 2 or not parts[0] or not parts[1]:
            raise Invalid(f":{modifier} needs system|code, not {raw!r}")
        return TokenValue(expansion=terminology.with_bare_codes(
            terminology.subsumption(unescape(parts[0]), unescape(parts[1]), modifier)))
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
    if v.expansion is not None:
        e = v.expansion
        alts = [t.c.system == s for s in sorted(e.systems)]
        alts += [and_(t.c.system == s, t.c.code.in_(codes)) for s, codes in e.by_system().items()]
        if e.bare:
            alts.append(and_(t.c.system.is_(None), t.c.code.in_(sorted(e.bare))))
        return or_(*alts) if alts else false()
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
