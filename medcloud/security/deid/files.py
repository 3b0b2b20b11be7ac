"""De-identify NDJSON files, Bundle files and single export lines with one ``DeidPolicy``.

Used by ``medcloud deid`` (files in, files out) and by Bulk ``$export?_deidentify=...`` (line by
line as the job writes). NDJSON is processed one line at a time, so memory stays constant; a
Bundle file is one JSON document and is read whole. Outputs are written to a temporary name and
renamed when complete, and a failed run removes what it wrote: never a partial output.
"""

from __future__ import annotations

import os
import re
import tempfile
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

import orjson

from medcloud.errors import Invalid
from medcloud.security.deid.fhir import DeidContext, deidentify
from medcloud.security.deid.policy import DeidPolicy

# Names accepted by ``$export?_deidentify=`` without a policy file ("true" = Safe Harbor).
BUILTIN = ("safe-harbor", "date-shift")
POLICY_NAME = re.compile(r"^[a-z0-9][a-z0-9_-]{0,63}$")
MAX_LINE = 64 * 1024 * 1024


def builtin_policy(name: str, key: bytes) -> DeidPolicy:
    """``safe-harbor`` (§164.514(b)(2)) or ``date-shift`` (Safe Harbor but dates shifted per patient)."""
    if name in ("true", "safe-harbor"):
        return DeidPolicy.safe_harbor(key)
    if name == "date-shift":
        return DeidPolicy.safe_harbor(key).with_actions(dates="shift")
    raise Invalid(f"unknown de-identification policy {name!r}")


def named_policy(name: str, key: bytes, policy_dir: Path) -> DeidPolicy:
    """A built-in policy, or ``policy_dir/<name>.toml`` / ``.json`` (placed there by the administrator)."""
    if name in ("true", *BUILTIN):
        return builtin_policy(name, key)
    if not POLICY_NAME.match(name):
        raise Invalid(f"_deidentify: {name!r} is not a policy name (true, {', '.join(BUILTIN)} or a file's name)")
    for suffix in (".toml", ".json"):
        path = policy_dir / f"{name}{suffix}"
        if path.is_file():
            return DeidPolicy.load(path, key=key)
    raise Invalid(f"_deidentify: no policy {name!r} (built in: {', '.join(BUILTIN)}; files: {policy_dir}/<name>.toml)")


def line_transform(policy: DeidPolicy, reference_year: int) -> Callable[[bytes], bytes]:
    """One resource's JSON -> its de-identified JSON (for the export job)."""
    context = DeidContext(reference_year=reference_year)

    def transform(raw: bytes) -> bytes:
        return orjson.dumps(deidentify(orjson.loads(raw), policy, context))

    return transform


@dataclass
class FileResult:
    source: Path
    target: Path
    resources: int


def expand(inputs: list[Path]) -> list[Path]:
    """Files named, and the ``*.ndjson`` / ``*.json`` files of folders named (sorted, not recursive)."""
    out: list[Path] = []
    for p in inputs:
        if p.is_dir():
            out.extend(sorted(x for x in p.iterdir() if x.is_file() and x.suffix in (".ndjson", ".json")))
        elif p.is_file():
            out.append(p)
        else:
            raise Invalid(f"{p}: no such file or directory")
    if not out:
        raise Invalid("no .ndjson or .json input files")
    return out


def deidentify_files(inputs: list[Path], out_dir: Path, policy: DeidPolicy, context: DeidContext,
                     *, on_file: Callable[[FileResult], None] | None = None) -> list[FileResult]:
    """De-identify every input into ``out_dir`` (same file names); all or nothing."""
    files = expand(inputs)
    names = [f.name for f in files]
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise Invalid(f"two inputs would write the same output file: {', '.join(dupes)}")
    out_dir.mkdir(parents=True, exist_ok=True)
    done: list[FileResult] = []
    try:
        for src in files:
            target = out_dir / src.name
            if target.resolve() == src.resolve():
                raise Invalid(f"{src}: the output would overwrite the input")
            n = _atomic_write(target, _ndjson(src, policy, context) if src.suffix == ".ndjson"
                              else _bundle(src, policy, context))
            done.append(FileResult(src, target, n))
            if on_file:
                on_file(done[-1])
    except BaseException:
        for r in done:
            r.target.unlink(missing_ok=True)
        raise
    return done


def _ndjson(src: Path, policy: DeidPolicy, context: DeidContext) -> Iterator[tuple[bytes, int]]:
    with open(src, "rb") as f:
        for number, line in enumerate(f, 1):
            if len(line) > MAX_LINE:
                raise Invalid(f"{src}:{number}: line longer than {MAX_LINE} bytes")
            if not line.strip():
                continue
            resource = _parse(line, f"{src}:{number}")
            yield orjson.dumps(deidentify(resource, policy, context)) + b"\n", 1


def _bundle(src: Path, policy: DeidPolicy, context: DeidContext) -> Iterator[tuple[bytes, int]]:
    resource = _parse(src.read_bytes(), str(src))
    out = deidentify(resource, policy, context)
    n = len(out.get("entry") or []) if out.get("resourceType") == "Bundle" else 1
    yield orjson.dumps(out, option=orjson.OPT_INDENT_2) + b"\n", n


def _parse(raw: bytes, where: str) -> dict[str, object]:
    try:
        value = orjson.loads(raw)
    except orjson.JSONDecodeError as e:
        raise Invalid(f"{where}: not JSON ({e})") from None
    if not isinstance(value, Mapping) or not isinstance(value.get("resourceType"), str):
        raise Invalid(f"{where}: not a FHIR resource (no resourceType)")
    return dict(value)


def _atomic_write(target: Path, pieces: Iterator[tuple[bytes, int]]) -> int:
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".part")
    count = 0
    try:
        with os.fdopen(fd, "wb") as f:
            for data, n in pieces:
                f.write(data)
                count += n
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return count
