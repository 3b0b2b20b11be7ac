"""Building Bundles from stored versions without re-parsing them (orjson.Fragment embeds bytes)."""

from __future__ import annotations

from typing import Any

import orjson

from medcloud.fhir.resource_meta import etag, instant
from medcloud.storage.resources import Stored


def resource_fragment(s: Stored) -> orjson.Fragment:
    assert s.content is not None
    return orjson.Fragment(s.content)


def full_url(base: str, s: Stored) -> str:
    return f"{base}/{s.type}/{s.id}"


def history_entry(base: str, s: Stored, first_version: bool = False) -> dict[str, Any]:
    method = s.method or ("DELETE" if s.deleted else "PUT")
    url = f"{s.type}/{s.id}" if method != "POST" else s.type
    entry: dict[str, Any] = {"fullUrl": full_url(base, s)}
    if not s.deleted:
        entry["resource"] = resource_fragment(s)
    entry["request"] = {"method": method, "url": url}
    status = "204" if s.deleted else ("201" if method == "POST" or s.version == 1 else "200")
    entry["response"] = {"status": status, "etag": etag(s.version), "lastModified": instant(s.last_updated)}
    return entry


def bundle(kind: str, entries: list[dict[str, Any]], *, total: int | None = None, links: list[tuple[str, str]] | None = None,
           timestamp_us: int | None = None, bundle_id: str | None = None) -> dict[str, Any]:
    b: dict[str, Any] = {"resourceType": "Bundle"}
    if bundle_id:
        b["id"] = bundle_id
    if timestamp_us is not None:
        b["meta"] = {"lastUpdated": instant(timestamp_us)}
    b["type"] = kind
    if total is not None:
        b["total"] = total
    if links:
        b["link"] = [{"relation": rel, "url": url} for rel, url in links]
    b["entry"] = entries
    if not entries:
        del b["entry"]
    return b
