"""composite parameters (search.html#composite): ``a$b`` matched on the same element.

The indexer stores component ``i`` of composite ``code`` as rows with ``param = "code#i"`` and one
``grp`` per matched element, so a value matches when rows of every component share a ``grp``.
"""

from __future__ import annotations

from sqlalchemy import Select, and_, or_, select

from medcloud.errors import Invalid
from medcloud.fhir.definitions import SearchParam
from medcloud.fhir.search.params import parse_value, predicate
from medcloud.fhir.search.parse import split_escaped
from medcloud.storage.schema import INDEX_TABLES


def rids(rtype: str | None, sp: SearchParam, raws: list[str], now_us: int, base: str) -> Select:
    """rids of resources with an element matching any of ``raws`` (OR)."""
    comps = sp.components
    if not comps or any(c.type not in INDEX_TABLES for c in comps):
        raise Invalid(f"the composite parameter {sp.code} is not searchable here")
    tables = [INDEX_TABLES[c.type].alias(f"c{i}") for i, c in enumerate(comps)]
    alternatives = []
    for raw in raws:
        parts = split_escaped(raw, "$")
        if len(parts) != len(comps):
            raise Invalid(f"{sp.code} needs {len(comps)} components separated by $, not {raw!r}")
        conds = []
        for t, c, part in zip(tables, comps, parts, strict=True):
            conds.append(predicate(c.type, t, parse_value(c.type, part, None, base=base), now_us))
        alternatives.append(and_(*conds))
    first = tables[0]
    stmt = select(first.c.rid).select_from(first)
    for i, t in enumerate(tables[1:], 1):
        stmt = stmt.join(t, and_(t.c.rid == first.c.rid, t.c.grp == first.c.grp, t.c.param == f"{sp.code}#{i}"))
    stmt = stmt.where(first.c.param == f"{sp.code}#0", or_(*alternatives))
    if rtype is not None:
        stmt = stmt.where(first.c.type == rtype)
    return stmt
