"""Server-maintained parts of a resource: id, meta.versionId, meta.lastUpdated; ETag and dates."""

from __future__ import annotations

import re
from datetime import UTC, datetime
from email.utils import format_datetime, parsedate_to_datetime
from typing import Any

import orjson

from medcloud.errors import Invalid
from medcloud.storage.resources import Stored

ID_RE = re.compile(r"^[A-Za-z0-9\-.]{1,64}$")


def check_id(value: str) -> str:
    if not ID_RE.match(value):
        raise Invalid(f"invalid resource id {value!r} (FHIR ids are 1-64 of A-Z a-z 0-9 - .)")
    return value


def instant(us: int) -> str:
    """FHIR instant for a microsecond timestamp, e.g. 2024-05-01T10:00:00.123456+00:00."""
    return datetime.fromtimestamp(us / 1_000_000, tz=UTC).isoformat(timespec="microseconds")


def http_date(us: int) -> str:
    return format_datetime(datetime.fromtimestamp(us / 1_000_000, tz=UTC), usegmt=True)


def parse_http_date(value: str) -> int | None:
    try:
        dt = parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=UTC)
    return int(dt.timestamp() * 1_000_000)


def etag(version: int) -> str:
    return f'W/"{version}"'


def parse_etag(value: str) -> int | None:
    v = value.strip()
    if v.startswith("W/"):
        v = v[2:]
    v = v.strip('"')
    return int(v) if v.isdigit() else None


def stamp(resource: dict[str, Any], rid_id: str, version: int, last_updated: int) -> bytes:
    """Set id and meta the server owns and serialise; client meta (tags, profiles, source) is kept."""
    resource["id"] = rid_id
    meta = dict(resource.get("meta") or {})
    meta["versionId"] = str(version)
    meta["lastUpdated"] = instant(last_updated)
    # Keep id/meta near the top like other servers do; orjson keeps dict order.
    ordered = {"resourceType": resource["resourceType"], "id": rid_id, "meta": meta}
    for k, v in resource.items():
        if k not in ordered:
            ordered[k] = v
    resource.clear()
    resource.update(ordered)
    return orjson.dumps(ordered)


def location(base: str, s: Stored) -> str:
    return f"{base}/{s.type}/{s.id}/_history/{s.version}"
