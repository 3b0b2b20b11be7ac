"""Rewrite links between the entries of a transaction (http.html#trules, bundle.html#references).

Placeholders (``urn:uuid:``/``urn:oid:`` fullUrls, and any other fullUrl of a created or updated entry)
are replaced by ``Type/id`` wherever they occur as a whole string value: references, elements of type
uri/url/oid/uuid, and ``href``/``src`` attributes of the narrative. Conditional references
(``Patient?identifier=s|v``) are resolved by a search that must match exactly one resource.

A resource is rewritten on its serialised form: orjson and one regular expression are C loops, so the
cost stays linear in the size of the resource however many links it holds (a Synthea Provenance
targets every other entry of its bundle).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from typing import Any

import orjson

# "urn:..." as a whole JSON string; \"urn:...\" as a whole attribute value inside the narrative;
# "reference":"Type?query" as a conditional reference.
_URN = rb'"(urn:(?:uuid|oid):[^"\\]+)"|\\"(urn:(?:uuid|oid):[^"\\]+)\\"'
_CONDITIONAL = rb'|"reference":"([A-Z][A-Za-z]*\?(?:[^"\\]|\\.)*)"'
_ABSOLUTE = rb'|"(https?://[^"\\]+)"'
_PATTERNS = {
    absolute: re.compile(_URN + _CONDITIONAL + (_ABSOLUTE if absolute else b"")) for absolute in (False, True)
}
_URN_ONLY = re.compile(rb'"(urn:(?:uuid|oid):[^"\\]+)"')


class Rewriter:
    """Rewrites the links of one transaction; ``resolve`` turns ``Type?query`` into ``Type/id``."""

    def __init__(self, links: Mapping[str, str], resolve: Callable[[str], str]):
        self._links = links
        self._resolve = resolve
        self._resolved: dict[str, str] = {}
        self._pattern = _PATTERNS[any(not k.startswith("urn:") for k in links)]

    def rewrite(self, document: Any) -> Any:
        """``document`` (a resource, or a patch document) with its links rewritten; unchanged if none."""
        raw = orjson.dumps(document)
        new = self._pattern.sub(self._replace, raw)
        return document if new == raw else orjson.loads(new)

    def rewrite_value(self, value: str) -> str:
        return self._links.get(value, value)

    def _replace(self, m: re.Match[bytes]) -> bytes:
        urn, escaped, conditional = m.group(1), m.group(2), m.group(3)
        if urn is not None or (conditional is None and escaped is None):
            key = (urn if urn is not None else m.group(4)).decode()
            target = self._links.get(key)
            return m.group(0) if target is None else orjson.dumps(target)
        if escaped is not None:
            target = self._links.get(escaped.decode())
            return m.group(0) if target is None else b'\\"' + target.encode() + b'\\"'
        query: str = orjson.loads(b'"' + conditional + b'"')
        target = self._resolved.get(query)
        if target is None:
            target = self._resolved[query] = self._resolve(query)
        return b'"reference":' + orjson.dumps(target)


def placeholders(resource: dict[str, Any]) -> set[str]:
    """The ``urn:`` strings a resource holds as whole values (to refuse links between batch entries)."""
    return {m.decode() for m in _URN_ONLY.findall(orjson.dumps(resource))}
