"""reference parameters (search.html#reference): ``Type/id``, ``id``, absolute URLs, canonicals.

An absolute URL on this server's base is the local reference it names; any other absolute URL is
matched against the stored URL (``/_history/n`` and ``|version`` become a version condition).
``:Type``, ``:identifier`` and chains are handled by the planner.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from sqlalchemy import ColumnElement, and_, or_

from medcloud.errors import Invalid
from medcloud.fhir import definitions
from medcloud.fhir.search.parse import unescape

_ID = re.compile(r"[A-Za-z0-9\-.]{1,64}")
_LOCAL = re.compile(r"([A-Z][A-Za-z]+)/([A-Za-z0-9\-.]{1,64})(?:/_history/([A-Za-z0-9\-.]{1,64}))?")
_HISTORY = re.compile(r"(.*)/_history/([A-Za-z0-9\-.]{1,64})")


@dataclass(frozen=True, slots=True)
class ReferenceValue:
    types: tuple[str, ...]  # acceptable target types; () = any
    id: str | None
    url: str | None
    version: str | None
    base: str


def parse(raw: str, type_modifier: str | None, targets: tuple[str, ...], base: str) -> ReferenceValue:
    value = unescape(raw)
    if base and value.startswith(base.rstrip("/") + "/"):
        value = value[len(base.rstrip("/")) + 1 :]
    m = _LOCAL.fullmatch(value)
    if m and m.group(1) in definitions.resource_types():
        rtype = m.group(1)
        if type_modifier and type_modifier != rtype:
            raise Invalid(f"reference {raw!r} contradicts the :{type_modifier} modifier")
        return ReferenceValue((rtype,), m.group(2), None, m.group(3), base)
    if _ID.fullmatch(value):
        types = (type_modifier,) if type_modifier else targets
        return ReferenceValue(types, value, None, None, base)
    if ":" in value and " " not in value:
        url, _, version = value.partition("|")
        if not version and (h := _HISTORY.fullmatch(url)):
            url, version = h.group(1), h.group(2)
        return ReferenceValue((), None, url, version or None, base)
    raise Invalid(f"not a reference (Type/id, id or absolute URL): {raw!r}")


def predicate(t, v: ReferenceValue) -> ColumnElement[bool]:
    conds: list[ColumnElement[bool]] = []
    if v.url is not None:
        conds.append(t.c.url == v.url)
    else:
        conds.append(t.c.target_id == v.id)
        if len(v.types) == 1:
            conds.append(t.c.target_type == v.types[0])
            local = f"{v.base.rstrip('/')}/{v.types[0]}/{v.id}"
            conds.append(or_(t.c.url.is_(None), t.c.url == local))
        else:
            if v.types:
                conds.append(t.c.target_type.in_(v.types))
            conds.append(or_(t.c.url.is_(None), t.c.url.startswith(v.base.rstrip("/") + "/", autoescape=True)))
    if v.version is not None:
        conds.append(t.c.version == v.version)
    return and_(*conds)
