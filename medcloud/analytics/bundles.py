"""Transaction Bundles (e.g. a Synthea export) -> one NDJSON file per resource type (Bulk-export layout).

Views read NDJSON in the ``$export`` layout (``Patient.ndjson``, ``Observation.ndjson``); Synthea writes
one transaction Bundle per patient whose references are ``urn:uuid:`` fullUrls. Each entry's
``urn:uuid:`` references are rewritten to ``Type/id``, as a FHIR server does on transaction ingest
(https://hl7.org/fhir/R4/http.html#trules), so ``getReferenceKey()`` joins work on the result.
One Bundle is in memory at a time.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from pathlib import Path
from typing import IO

import orjson

from medcloud.errors import Invalid

__all__ = ["bundles_to_ndjson"]

_URN_REFERENCE = re.compile(rb'"reference":"(urn:uuid:[^"]+)"')


def bundles_to_ndjson(bundles: Iterable[Path], out_dir: Path) -> dict[str, int]:
    """Append every entry's resource to ``out_dir/<type>.ndjson``; returns resources written per type.

    Raises ``Invalid`` for a file that is not a JSON Bundle.
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    handles: dict[str, IO[bytes]] = {}
    counts: dict[str, int] = {}
    try:
        for path in bundles:
            try:
                bundle = orjson.loads(path.read_bytes())
            except orjson.JSONDecodeError as exc:
                raise Invalid(f"{path}: not JSON ({exc})") from exc
            if not isinstance(bundle, dict) or bundle.get("resourceType") != "Bundle":
                raise Invalid(f"{path}: not a FHIR Bundle")
            entries = [e for e in bundle.get("entry", []) if isinstance(e.get("resource"), dict)]
            ids = {
                e["fullUrl"]: f"{e['resource']['resourceType']}/{e['resource'].get('id', '')}"
                for e in entries
                if "fullUrl" in e
            }

            def local(m: re.Match[bytes], ids: dict[str, str] = ids) -> bytes:
                target = ids.get(m.group(1).decode())
                return m.group(0) if target is None else b'"reference":"' + target.encode() + b'"'

            for entry in entries:
                resource = entry["resource"]
                rtype = str(resource.get("resourceType", ""))
                if not re.fullmatch(r"[A-Z][A-Za-z]+", rtype):
                    raise Invalid(f"{path}: an entry has no valid resourceType")
                if rtype not in handles:
                    handles[rtype] = (out_dir / f"{rtype}.ndjson").open("ab")
                handles[rtype].write(_URN_REFERENCE.sub(local, orjson.dumps(resource)) + b"\n")
                counts[rtype] = counts.get(rtype, 0) + 1
    finally:
        for h in handles.values():
            h.close()
    return counts
