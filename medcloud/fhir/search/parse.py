"""Search request syntax (https://hl7.org/fhir/R4/search.html): escaping, prefixes, results parameters.

Value-level parsing for each parameter type lives in ``search/params/``; this module only knows
the shared grammar: ``name[:modifier]=v1,v2`` (OR), repetition (AND), the ``\\`` escapes of
search.html#escaping, the comparison prefixes of search.html#prefix, and the results parameters
of search.html#return (``_sort _count _include _revinclude _summary _total _elements``).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from medcloud.errors import Invalid, Issue, NotSupported
from medcloud.fhir import definitions

PREFIXES = frozenset({"eq", "ne", "gt", "lt", "ge", "le", "sa", "eb", "ap"})

RESULT_PARAMS = frozenset({
    "_sort", "_count", "_include", "_revinclude", "_summary", "_total", "_elements", "_contained",
    "_containedType", "_cursor", "_format", "_pretty",
})
# Accepted by the grammar but not implemented: ignored with a warning (lenient) or 400 (strict).
UNSUPPORTED_PARAMS = frozenset({"_list", "_query", "_filter", "_contained", "_containedType"})

SUMMARY_MODES = frozenset({"true", "false", "text", "data", "count"})
TOTAL_MODES = frozenset({"none", "estimate", "accurate"})

_PREFIXED = re.compile(r"(eq|ne|gt|lt|ge|le|sa|eb|ap)(?=[0-9+\-.])")
_SORT_CODE = re.compile(r"-?[A-Za-z_][A-Za-z0-9_\-]*")


class UnknownParameter(Exception):
    """A parameter the server does not know or support: ignored in lenient mode, 400 in strict mode."""


def split_escaped(value: str, sep: str) -> list[str]:
    """Split on ``sep`` where it is not escaped by a backslash; escapes are kept for the next level."""
    if "\\" not in value:
        return value.split(sep)
    parts: list[str] = []
    cur: list[str] = []
    i = 0
    while i < len(value):
        ch = value[i]
        if ch == "\\" and i + 1 < len(value):
            cur.append(value[i : i + 2])
            i += 2
            continue
        if ch == sep:
            parts.append("".join(cur))
            cur = []
        else:
            cur.append(ch)
        i += 1
    parts.append("".join(cur))
    return parts


def unescape(value: str) -> str:
    r"""Undo search.html#escaping: ``\,`` ``\$`` ``\|`` ``\\``."""
    if "\\" not in value:
        return value
    out: list[str] = []
    i = 0
    while i < len(value):
        ch = value[i]
        if ch == "\\" and i + 1 < len(value) and value[i + 1] in ",$|\\":
            out.append(value[i + 1])
            i += 2
            continue
        out.append(ch)
        i += 1
    return "".join(out)


def split_prefix(value: str) -> tuple[str, str]:
    """``'ge2020'`` -> ``('ge', '2020')``; no prefix means ``eq``."""
    m = _PREFIXED.match(value)
    if m:
        return m.group(1), value[2:]
    return "eq", value


def or_values(value: str) -> list[str]:
    """The comma-separated alternatives of one parameter value (escapes kept)."""
    parts = split_escaped(value, ",")
    if any(p == "" for p in parts):
        raise Invalid(f"empty value in {value!r}")
    return parts


@dataclass(frozen=True, slots=True)
class Include:
    """``_include`` / ``_revinclude`` = ``source:param[:target]`` (``param`` may be ``*``)."""

    source: str | None  # None with "*" alone
    param: str  # code or "*"
    target: str | None
    iterate: bool
    reverse: bool


@dataclass(slots=True)
class Results:
    """The results parameters of one search (search.html#return), with defaults applied."""

    count: int
    sort: list[tuple[str, bool]] = field(default_factory=list)  # (code, descending)
    total: str | None = None  # none | estimate | accurate; None = the default (see search/__init__)
    summary: str | None = None
    elements: tuple[str, ...] | None = None
    includes: list[Include] = field(default_factory=list)


def parse_results(
    query: list[tuple[str, str]], *, default_count: int, max_count: int, warn: WarnFn,
) -> Results:
    """Results parameters of ``query``; malformed values raise ``Invalid``; unknown ones go to ``warn``."""
    res = Results(count=default_count)
    for key, value in query:
        name, _, modifier = key.partition(":")
        if name not in RESULT_PARAMS or name in ("_cursor", "_format", "_pretty"):
            continue
        if name in UNSUPPORTED_PARAMS:
            warn(key, value, f"the parameter {name} is not supported")
            continue
        if modifier and name not in ("_include", "_revinclude"):
            raise Invalid(f"{name} takes no modifier ({key!r})")
        if name == "_count":
            if not value.isdigit():
                raise Invalid(f"_count must be a non-negative integer, not {value!r}")
            res.count = min(int(value), max_count)
        elif name == "_total":
            if value not in TOTAL_MODES:
                raise Invalid(f"_total must be one of none, estimate, accurate (not {value!r})")
            res.total = value
        elif name == "_summary":
            if value not in SUMMARY_MODES:
                raise Invalid(f"_summary must be one of true, false, text, data, count (not {value!r})")
            res.summary = value
        elif name == "_elements":
            names = tuple(v.strip().split(".")[-1] for v in value.split(",") if v.strip())
            if not names or not all(re.fullmatch(r"[A-Za-z][A-Za-z0-9]*", n) for n in names):
                raise Invalid(f"_elements must list element names, not {value!r}")
            res.elements = (res.elements or ()) + names
        elif name == "_sort":
            for item in value.split(","):
                item = item.strip()
                if not _SORT_CODE.fullmatch(item):
                    raise Invalid(f"malformed _sort key {item!r}")
                res.sort.append((item.lstrip("-"), item.startswith("-")))
        else:
            try:
                res.includes.append(_include(name, modifier, value))
            except UnknownParameter as e:
                warn(key, value, str(e))
    return res


def _include(name: str, modifier: str, value: str) -> Include:
    if modifier not in ("", "iterate", "recurse"):
        raise Invalid(f"{name} supports only the :iterate modifier ({name}:{modifier})")
    iterate = modifier in ("iterate", "recurse")
    reverse = name == "_revinclude"
    if value == "*":
        return Include(None, "*", None, iterate, reverse)
    parts = value.split(":")
    if len(parts) not in (2, 3) or not all(parts):
        raise Invalid(f"{name} must be Type:param[:targetType] or *, not {value!r}")
    source, param = parts[0], parts[1]
    target = parts[2] if len(parts) == 3 else None
    types = definitions.resource_types()
    if source not in types or (target is not None and target not in types):
        raise UnknownParameter(f"{name}={value}: unknown resource type")
    if param != "*":
        sp = definitions.search_params(source).get(param)
        if sp is None or sp.type != "reference":
            raise UnknownParameter(f"{name}={value}: {source} has no reference parameter {param!r}")
        if target is not None and sp.targets and target not in sp.targets:
            raise UnknownParameter(f"{name}={value}: {param} cannot refer to {target}")
    return Include(source, param, target, iterate, reverse)


def strict_handling(prefer: str | None) -> bool:
    """``Prefer: handling=strict`` (search.html#errors); lenient is the default."""
    if not prefer:
        return False
    return any(p.strip().replace(" ", "") == "handling=strict" for part in prefer.split(",") for p in part.split(";"))


class WarnFn:
    """Collects ignored parameters (lenient) or refuses them (strict)."""

    def __init__(self, strict: bool):
        self.strict = strict
        self.issues: list[Issue] = []
        self.ignored: set[tuple[str, str]] = set()

    def __call__(self, key: str, value: str, message: str) -> None:
        if self.strict:
            raise Invalid(message) if not message.endswith("not supported") else NotSupported(message)
        self.issues.append(Issue(f"{message}; ignored", "not-supported", "warning"))
        self.ignored.add((key, value))
