"""KEK rotation without downtime: new KEK version, re-wrap every blob's data key in place, retire the old.

    1. create KEK version n+1 (current from now on) and record the rotation in ``server_state``
    2. wait ``grace`` seconds: every process reloads its key ring within ``keys.CACHE_TTL``, so
       after the wait nobody wraps new blobs under an old KEK
    3. walk the blob roots; each file whose header names another KEK gets its 73-byte header
       re-written (``crypto.rewrap_file``); the payload is never touched. DICOM instances in S3
       (``blob_store = "s3://..."``) cannot be written in place: each such object is copied back
       with the new header, conditional on its ETag (``S3BlobStore.rewrite_head``)
    4. walk again until a pass finds nothing to do (catches blobs written during the first pass)
    5. retire every other KEK version (its wrapped key is erased) and clear the rotation record

Killed at any point, a re-run finds the rotation record and continues at step 2 with the same
target: files already re-wrapped are skipped, nothing is retired before a clean pass. Readers
meanwhile see the old or the new header (both KEKs stay active until step 5).
"""

from __future__ import annotations

import os
import socket
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from medcloud.config import Settings
from medcloud.errors import Conflict, MedcloudError
from medcloud.security.crypto import (
    HEADER_SIZE,
    DecryptionError,
    Keyring,
    is_encrypted,
    needs_rewrap,
    rewrap,
    rewrap_file,
)
from medcloud.security.keys import ACTIVE, CACHE_TTL, KeyStore

ROTATION = "keyring-rotation"
LEASE = "keyring-rotation-lease"
MAX_PASSES = 5


class ObjectStore(Protocol):
    """A blob store without files to ``pwrite`` (``imaging/s3.py``): rotation reads and rewrites heads."""

    def keys(self, prefix: str = "") -> Iterator[str]: ...
    def location(self, key: str) -> str: ...
    def read_head(self, key: str, size: int) -> bytes: ...
    def rewrite_head(self, key: str, size: int, change: Callable[[bytes], bytes | None]) -> bool: ...


Root = Path | ObjectStore


def blob_roots(settings: Settings) -> list[Path]:
    """The folders whose files are sealed with the key ring: DICOM instances and $export files."""
    return [settings.data_dir / "dicom", settings.data_dir / "exports"]


def blob_locations(settings: Settings) -> list[Root]:
    """``blob_roots``, with the configured DICOM object store in place of ``DATA_DIR/dicom`` (S3)."""
    if settings.blob_store == "local":
        return list(blob_roots(settings))
    from medcloud.imaging.blobs import raw_blob_store
    from medcloud.imaging.s3 import S3BlobStore

    store = raw_blob_store(settings)  # unsealed: rotation works on the stored bytes
    assert isinstance(store, S3BlobStore), store
    return [store, settings.data_dir / "exports"]


@dataclass
class RotationReport:
    target: int
    rewrapped: int = 0
    current: int = 0  # under the target KEK at the last pass (after its re-wraps)
    plaintext: int = 0  # written before encryption was on: nothing to re-wrap (last pass)
    failed: list[str] = field(default_factory=list)
    retired: list[int] = field(default_factory=list)
    passes: int = 0
    superseded: bool = False  # another rotation created a newer KEK meanwhile


def blob_files(roots: Sequence[Root]) -> Iterator[Path]:
    for root in roots:
        if isinstance(root, Path):
            for dirpath, _, names in os.walk(root):
                for name in sorted(names):
                    if not name.startswith("."):  # in-flight temporary files of ``put``
                        yield Path(dirpath) / name


@dataclass(frozen=True, slots=True)
class _Blob:
    """One sealed blob: a file, or a key of an object store."""

    root: Root
    key: str | Path

    def __str__(self) -> str:
        if isinstance(self.root, Path):
            return str(self.key)
        return self.root.location(str(self.key))

    def head(self) -> bytes:
        if isinstance(self.key, Path):
            with open(self.key, "rb") as f:
                return f.read(HEADER_SIZE)
        assert not isinstance(self.root, Path)
        return self.root.read_head(self.key, HEADER_SIZE)

    def rewrap(self, ring: Keyring) -> bool:
        if isinstance(self.key, Path):
            return rewrap_file(self.key, ring, ring)
        assert not isinstance(self.root, Path)
        return self.root.rewrite_head(self.key, HEADER_SIZE,
                                      lambda head: rewrap(head, ring, ring) if needs_rewrap(head, ring) else None)


def _blobs(roots: Sequence[Root]) -> Iterator[_Blob]:
    for root in roots:
        if isinstance(root, Path):
            yield from (_Blob(root, path) for path in blob_files([root]))
        else:
            yield from (_Blob(root, key) for key in root.keys(""))


def rotate(keys: KeyStore, roots: Sequence[Root], *, grace: float = CACHE_TTL + 1.0, lease_seconds: float = 30.0,
           sleep: Callable[[float], None] = time.sleep, on_file: Callable[[Path | str, bool], None] | None = None,
           on_wait: Callable[[str], None] | None = None) -> RotationReport:
    """Run (or resume) a rotation; see the module docstring. ``on_file(path, rewrapped)`` reports progress.

    One rotation at a time: a lease row in ``server_state`` (renewed while the files are walked)
    keeps a second ``keys rotate`` waiting; the lease of a killed run expires after ``lease_seconds``.
    """
    owner = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
    deadline = time.monotonic() + lease_seconds + min(5.0, lease_seconds)
    while (held := keys.lease(LEASE, owner, lease_seconds)) is not None:
        if time.monotonic() > deadline:
            raise Conflict(f"another key rotation is running ({held.get('owner')}); try again later")
        if on_wait is not None:
            on_wait(f"waiting for the rotation lease held by {held.get('owner')}")
        sleep(1.0)
    renewed = [time.monotonic()]

    def progress(path: Path | str, done: bool) -> None:
        if time.monotonic() - renewed[0] > lease_seconds / 3:
            if keys.lease(LEASE, owner, lease_seconds) is not None:
                raise Conflict("the rotation lease was taken over by another run; stopping")
            renewed[0] = time.monotonic()
        if on_file is not None:
            on_file(path, done)

    try:
        return _rotate(keys, roots, grace, sleep, progress)
    finally:
        keys.release(LEASE, owner)


def _rotate(keys: KeyStore, roots: Sequence[Root], grace: float, sleep: Callable[[float], None],
            on_file: Callable[[Path | str, bool], None]) -> RotationReport:
    state = keys.get_state(ROTATION)
    if state is None:
        version = keys.create_version()
        state = {"target": version.version, "started": keys.clock()}
        keys.put_state(ROTATION, state)
    wait = float(state["started"]) + grace - keys.clock()  # type: ignore[arg-type]
    if wait > 0:
        sleep(wait)
    ring = keys.keyring(refresh=True)
    current = next(v for v in reversed(keys.versions()) if v.status == ACTIVE)
    report = RotationReport(target=current.version)
    while report.passes < MAX_PASSES:
        report.passes += 1
        report.current = report.plaintext = 0
        changed, report.failed = _pass(ring, roots, report, on_file)
        if not changed:
            break
    if report.failed or changed:
        return report  # the old KEKs stay; a re-run continues
    active = [v.version for v in keys.versions() if v.status == ACTIVE]
    if max(active) != current.version:
        report.superseded = True  # a newer KEK appeared (first start of a replica?): retire nothing
        return report
    old = [v for v in active if v < current.version]
    keys.retire(old)
    report.retired = old
    keys.put_state(ROTATION, None)
    return report


def _pass(ring: Keyring, roots: Sequence[Root], report: RotationReport,
          on_file: Callable[[Path | str, bool], None] | None) -> tuple[int, list[str]]:
    changed, failed = 0, []
    for blob in _blobs(roots):
        try:
            done = blob.rewrap(ring)
        except FileNotFoundError:
            continue  # deleted meanwhile
        except DecryptionError as e:
            if _is_plaintext(blob):
                report.plaintext += 1
            else:
                failed.append(f"{blob}: {e}")
            continue
        changed += done
        report.rewrapped += done
        report.current += 1
        if on_file is not None:
            on_file(blob.key if isinstance(blob.key, Path) else str(blob), done)
    return changed, failed


def _is_plaintext(blob: _Blob) -> bool:
    try:
        return not is_encrypted(blob.head())
    except (OSError, MedcloudError):
        return False


def census(roots: Sequence[Root]) -> Counter[str]:
    """Files per key id (hex), plus ``"plaintext"``: what ``medcloud keys status`` shows."""
    counts: Counter[str] = Counter()
    for blob in _blobs(roots):
        try:
            head = blob.head()
        except OSError:
            continue
        counts[head[5:13].hex() if is_encrypted(head) else "plaintext"] += 1
    return counts
