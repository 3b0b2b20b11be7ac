"""Write a Bulk Data export to NDJSON files, resumably (hl7.org/fhir/uv/bulkdata/export.html).

The export walks each requested type in ``rid`` order in batches (keyset, never OFFSET, never the
whole set in memory) and appends each resource's stored JSON as one line. After every batch the
file is flushed to disk and the checkpoint (type index, last ``rid``, each file's line count and
byte size) is saved with the job, so a worker that is killed mid-batch is resumed by truncating
the files back to the checkpointed sizes and continuing after the last ``rid``: no duplicates,
no gaps. Used by the ``$export`` job and, with the same code, by ``medcloud export``.

Server-side exports (files under DATA_DIR) are encrypted at rest when ``ctx.at_rest`` is given:
each batch becomes one or more sealed records of a mode 3 file (``security/crypto.py``), so the
same checkpoint/truncate/resume logic works on ciphertext. ``medcloud export --out`` writes
plaintext: the folder is the user's. With ``request["deidentify"]`` set, every line goes through
``security/deid`` before it is written (``$export?_deidentify=true``, a medcloud extension).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import orjson
from sqlalchemy import select

from medcloud.fhir.context import FhirContext
from medcloud.fhir.definitions import patient_compartment
from medcloud.fhir.exchange import Principal, outcome_message
from medcloud.storage.resources import Stored, current_join
from medcloud.storage.schema import compartments, resource_history, resources

if TYPE_CHECKING:
    from medcloud.security.at_rest import AtRest

BATCH = 1000
LINES_PER_FILE = 100_000

Checkpoint = Callable[[dict[str, Any]], None]
Transform = Callable[[bytes], bytes]  # one resource's JSON -> the JSON to write (de-identification)


class _Sink(Protocol):
    def write(self, data: bytes) -> None: ...

    def commit(self) -> tuple[int, int]:
        """Make the writes durable; returns (bytes on disk, plaintext bytes)."""

    def close(self) -> None: ...


class _PlainSink:
    def __init__(self, path: Path):
        self._f = open(path, "ab")  # noqa: SIM115 - kept open across batches

    def write(self, data: bytes) -> None:
        self._f.write(data)

    def commit(self) -> tuple[int, int]:
        self._f.flush()
        os.fsync(self._f.fileno())
        size = self._f.tell()
        return size, size

    def close(self) -> None:
        self._f.close()


class _SealedSink:
    def __init__(self, at_rest: AtRest, path: Path, sealed_size: int):
        self._w = at_rest.resume_records(path, sealed_size) if sealed_size else at_rest.new_records(path)

    def write(self, data: bytes) -> None:
        self._w.write(data)

    def commit(self) -> tuple[int, int]:
        return self._w.seal(), self._w.plain_size

    def close(self) -> None:
        self._w.close()


def compartment_types() -> list[str]:
    """Resource types that can be in a Patient compartment (what Patient/Group $export returns)."""
    return sorted({"Patient", *patient_compartment()})


def principal_to_json(p: Principal) -> dict[str, Any]:
    return {"subject": p.subject, "client_id": p.client_id, "scopes": list(p.scopes), "patient": p.patient}


def principal_from_json(d: dict[str, Any]) -> Principal:
    return Principal(subject=d.get("subject", "anonymous"), client_id=d.get("client_id"),
                     scopes=tuple(d.get("scopes", ())), patient=d.get("patient"))


def run_export(ctx: FhirContext, request: dict[str, Any], out_dir: Path, state: dict[str, Any] | None,
               checkpoint: Checkpoint, *, at_rest: AtRest | None = None,
               transform: Transform | None = None) -> dict[str, Any]:
    """Run (or resume from ``state``) the export described by ``request``; returns the file list.

    ``request`` keys: level (system|patient|group), types (list or None), since (µs or None),
    patients (ids or None: restrict to these compartments), principal, warnings. ``at_rest``
    encrypts the files (when it is switched on); ``transform`` rewrites each resource's JSON.
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    if state is None:
        state = {"types": _types(ctx, request), "t": 0, "rid": 0, "files": []}
        _remove_unlisted(out_dir, [])
        checkpoint(state)
    else:
        _restore(out_dir, state["files"])
    principal = principal_from_json(request.get("principal", {}))
    types: list[str] = state["types"]
    while state["t"] < len(types):
        rtype = types[state["t"]]
        _export_type(ctx, request, principal, rtype, out_dir, state, checkpoint, at_rest, transform)
        state["t"] += 1
        state["rid"] = 0
        checkpoint(state)
    errors = _write_warnings(out_dir, request.get("warnings") or [])
    return {
        "output": [{"type": f["type"], "name": f["name"], "count": f["count"], "size": f.get("plain", f["bytes"])}
                   for f in state["files"]],
        "error": errors,
    }


def _types(ctx: FhirContext, request: dict[str, Any]) -> list[str]:
    wanted: list[str] | None = request.get("types")
    if request["level"] != "system":
        allowed = compartment_types()
        return [t for t in allowed if wanted is None or t in wanted]
    if wanted is not None:
        return sorted(set(wanted))
    with ctx.db.read() as conn:
        present = conn.execute(select(resources.c.type).where(resources.c.deleted.is_(False)).distinct()).scalars()
        return sorted(present)


def _export_type(ctx: FhirContext, request: dict[str, Any], principal: Principal, rtype: str, out_dir: Path,
                 state: dict[str, Any], checkpoint: Checkpoint, at_rest: AtRest | None,
                 transform: Transform | None) -> None:
    files: list[dict[str, Any]] = state["files"]
    sink: _Sink | None = None
    seal = at_rest is not None and at_rest.encrypt
    try:
        while True:
            with ctx.db.read() as conn:
                rows = [Stored(*r) for r in conn.execute(_batch_query(request, rtype, state["rid"]))]
            if not rows:
                return
            kept = [s.content for s in rows if s.content and ctx.guard.can_read(principal, s)]
            lines = [(transform(c) if transform else c) + b"\n" for c in kept]
            if lines:
                current = files[-1] if files and files[-1]["type"] == rtype else None
                if current is None or current["count"] >= LINES_PER_FILE:
                    if sink is not None:
                        sink.close()
                    part = sum(1 for f in files if f["type"] == rtype) + 1
                    current = {"type": rtype, "name": f"{rtype}.{part:03d}.ndjson", "count": 0, "bytes": 0,
                               "plain": 0, "sealed": seal}
                    files.append(current)
                    sink = None
                if sink is None:
                    path = out_dir / current["name"]
                    if current.get("sealed"):
                        assert at_rest is not None, "a sealed export file is resumed without its keys"
                        sink = _SealedSink(at_rest, path, current["bytes"])
                    else:
                        sink = _PlainSink(path)
                sink.write(b"".join(lines))
                current["count"] += len(lines)
                current["bytes"], current["plain"] = sink.commit()
            state["rid"] = rows[-1].rid
            checkpoint(state)
    finally:
        if sink is not None:
            sink.close()


def _batch_query(request: dict[str, Any], rtype: str, after_rid: int) -> Any:
    stmt = (
        select(resources.c.rid, resources.c.type, resources.c.id, resources.c.version, resources.c.last_updated,
               resources.c.deleted, resource_history.c.content)
        .select_from(current_join())
        .where(resources.c.type == rtype, resources.c.deleted.is_(False), resources.c.rid > after_rid)
        .order_by(resources.c.rid)
        .limit(BATCH)
    )
    if request.get("since") is not None:
        stmt = stmt.where(resources.c.last_updated > request["since"])
    if request["level"] != "system":
        members = select(compartments.c.rid).where(compartments.c.comp_type == "Patient",
                                                   compartments.c.type == rtype)
        patients = request.get("patients")
        if patients is not None:
            members = members.where(compartments.c.comp_id.in_(patients))
        stmt = stmt.where(resources.c.rid.in_(members))
    return stmt


def _restore(out_dir: Path, files: list[dict[str, Any]]) -> None:
    """Cut every file back to its checkpointed size and drop files started after the checkpoint."""
    _remove_unlisted(out_dir, [f["name"] for f in files])
    for f in files:
        path = out_dir / f["name"]
        if not path.exists():
            path.touch()
        with open(path, "r+b") as fh:
            fh.truncate(f["bytes"])


def _remove_unlisted(out_dir: Path, keep: list[str]) -> None:
    for p in out_dir.iterdir():
        if p.is_file() and p.name not in keep:
            p.unlink()


def _write_warnings(out_dir: Path, warnings: list[str]) -> list[dict[str, Any]]:
    if not warnings:
        return []
    name = "OperationOutcome.001.ndjson"
    lines = [orjson.dumps(outcome_message(w, code="informational", severity="warning")) + b"\n" for w in warnings]
    with open(out_dir / name, "wb") as fh:  # messages about the request, no patient data: plaintext
        fh.writelines(lines)
    return [{"type": "OperationOutcome", "name": name, "count": len(lines), "size": sum(map(len, lines))}]
