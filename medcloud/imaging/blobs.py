"""Where DICOM instance files live: a small blob-store protocol and its local filesystem implementation.

Keys are UID-addressed: ``<StudyInstanceUID>/<SeriesInstanceUID>/<SOPInstanceUID>.dcm``. We chose
UIDs over content hashes because every DICOM operation addresses instances by UID (WADO-RS,
C-MOVE, DELETE of a study or series), a duplicate SOP Instance UID must *replace* the file under the
overwrite policy (a content hash would leave the old blob behind and need reference counting), and
a study or series delete becomes one prefix delete, which S3 (``ListObjectsV2`` + ``DeleteObjects``)
does as cheaply as a directory. UIDs are validated (digits and dots, PS3.5 §9.1) before they become
a key, so a key can never escape the store's root.

``S3BlobStore`` (``imaging/s3.py``) provides the same methods over S3-compatible object storage:
``put`` is one PutObject (atomic by S3's semantics), ``open`` a streaming GetObject body.
``open_blob_store`` builds whichever ``Settings.blob_store`` names, so the DICOMweb edge, the DIMSE
SCP and key rotation all see the same objects.

``put`` is two steps any caller may also take apart: ``stage`` (write + fsync a temp file next to
the key, invisible to readers) and ``publish`` (rename it into place). The group committer stages
in the request threads and publishes in its writer, so the writer does no data fsyncs; S3 has no
cheaper first step and stages nothing.

``SealedBlobStore`` wraps any store with encryption at rest (``security/at_rest.py``): objects are
sealed before ``put`` and decrypted chunk by chunk on the way out, so a WADO-RS retrieve still
streams and the stored ``size`` (plaintext) stays the right Content-Length.
"""

from __future__ import annotations

import os
import re
import shutil
import tempfile
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO, Protocol

if TYPE_CHECKING:
    from medcloud.config import Settings
    from medcloud.security.at_rest import AtRest

_UID = re.compile(r"^[0-9]+(\.[0-9]+)*$")
CHUNK = 256 * 1024


def valid_uid(uid: str) -> bool:
    """A UID per PS3.5 §9.1: digits and dots, at most 64 characters (leading zeros tolerated)."""
    return 0 < len(uid) <= 64 and _UID.match(uid) is not None


def instance_key(study: str, series: str, sop: str) -> str:
    for uid in (study, series, sop):
        if not valid_uid(uid):
            raise ValueError(f"not a valid DICOM UID: {uid!r}")
    return f"{study}/{series}/{sop}.dcm"


@dataclass(frozen=True, slots=True)
class Staged:
    """An object written by ``stage`` and not yet visible: its key and the store's handle (a temp path)."""

    key: str
    token: str


class BlobStore(Protocol):
    def put(self, key: str, data: bytes, *, sync_dir: bool = True) -> None:
        """Store ``data`` under ``key`` atomically (readers see the old or the new object, never part).

        ``sync_dir=False`` defers making the new name durable to ``sync`` (one call per batch).
        """

    def sync(self, keys: list[str]) -> None:
        """Make earlier ``put(..., sync_dir=False)`` or ``publish`` of ``keys`` durable (no-op where puts
        already are)."""

    def stage(self, key: str, data: bytes) -> Staged | None:
        """Write ``data`` durably for ``key`` where no reader sees it yet; None where the store has no
        cheaper step than ``put`` (S3: one PutObject). ``publish`` or ``unstage`` it afterwards."""

    def publish(self, staged: Staged) -> None:
        """Make a staged object visible under its key atomically (replacing any object there)."""

    def unstage(self, staged: Staged) -> None:
        """Drop a staged object that will not be published (absent is not an error)."""

    def open(self, key: str) -> BinaryIO:
        """A readable binary stream; raises FileNotFoundError when the key is absent."""

    def read(self, key: str) -> bytes: ...

    def iter_chunks(self, key: str, size: int = CHUNK) -> Iterator[bytes]:
        """The object in chunks of at most ``size`` bytes (for streaming responses)."""

    def delete(self, key: str) -> None:
        """Remove one object; absent keys are not an error."""

    def delete_prefix(self, prefix: str) -> None:
        """Remove every object whose key starts with ``prefix/`` (a study or a series)."""

    def exists(self, key: str) -> bool: ...

    def keys(self, prefix: str = "") -> Iterator[str]:
        """Every stored key starting with ``prefix`` (key rotation walks them; order unspecified)."""

    def sweep_staged(self, older_than: float) -> int:
        """Remove staged objects a killed process left unpublished, older than ``older_than``
        seconds; returns how many (0 where the store never stages)."""

    def modified(self, key: str) -> float:
        """When the object was last written (seconds since the epoch); FileNotFoundError if absent."""


class LocalBlobStore:
    """Files under ``root``; each put is temp file + fsync + rename (+ directory fsync)."""

    def __init__(self, root: Path, *, fsync: bool = True):
        self.root = root
        self.fsync = fsync
        root.mkdir(parents=True, exist_ok=True)

    def _path(self, key: str) -> Path:
        if key.startswith("/") or ".." in key.split("/"):
            raise ValueError(f"invalid blob key {key!r}")
        return self.root / key

    def put(self, key: str, data: bytes, *, sync_dir: bool = True) -> None:
        staged = self.stage(key, data)
        try:
            self.publish(staged)
        except BaseException:
            with _quiet():
                os.unlink(staged.token)
            raise
        if self.fsync and sync_dir:
            _fsync_dir(self._path(key).parent)

    def stage(self, key: str, data: bytes) -> Staged:
        """A fsynced temp file next to the key's path (the same directory, so ``publish`` is a rename)."""
        path = self._path(key)
        for attempt in range(3):  # a concurrent delete may remove the emptied series directory meanwhile
            path.parent.mkdir(parents=True, exist_ok=True)
            try:
                fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-", suffix=".part")
                break
            except FileNotFoundError:
                if attempt == 2:
                    raise
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(data)
                if self.fsync:
                    f.flush()
                    os.fsync(f.fileno())
        except BaseException:
            with _quiet():
                os.unlink(tmp)
            self._prune(path.parent)
            raise
        return Staged(key, tmp)

    def publish(self, staged: Staged) -> None:
        os.replace(staged.token, self._path(staged.key))

    def unstage(self, staged: Staged) -> None:
        with _quiet():
            os.unlink(staged.token)
        self._prune(self._path(staged.key).parent)

    def sync(self, keys: list[str]) -> None:
        # Side by side: ext4 (jbd2) folds concurrent fsyncs into one journal commit, so 20 series
        # directories cost about one fsync instead of 20 in a row (the writer waits for this).
        if self.fsync:
            parents = sorted({self._path(k).parent for k in keys})
            if len(parents) < 2:
                for parent in parents:
                    _fsync_dir(parent)
            else:
                list(_FSYNC_POOL.map(_fsync_dir, parents))

    def open(self, key: str) -> BinaryIO:
        return open(self._path(key), "rb")

    def read(self, key: str) -> bytes:
        with self.open(key) as f:
            return f.read()

    def iter_chunks(self, key: str, size: int = CHUNK) -> Iterator[bytes]:
        with self.open(key) as f:
            while chunk := f.read(size):
                yield chunk

    def delete(self, key: str) -> None:
        path = self._path(key)
        with _quiet():
            path.unlink()
        self._prune(path.parent)

    def _prune(self, series_dir: Path) -> None:
        """Leave no empty series/study directories behind."""
        for parent in (series_dir, series_dir.parent):
            if parent == self.root:
                break
            try:
                parent.rmdir()
            except OSError:
                break

    def delete_prefix(self, prefix: str) -> None:
        path = self._path(prefix.strip("/"))
        shutil.rmtree(path, ignore_errors=True)
        parent = path.parent
        if parent != self.root:
            with _quiet():
                parent.rmdir()

    def exists(self, key: str) -> bool:
        return self._path(key).is_file()

    def modified(self, key: str) -> float:
        return self._path(key).stat().st_mtime

    def keys(self, prefix: str = "") -> Iterator[str]:
        for dirpath, dirs, names in os.walk(self.root):
            dirs.sort()
            rel = Path(dirpath).relative_to(self.root)
            for name in sorted(names):
                if name.startswith("."):  # in-flight temporary files of ``put``
                    continue
                key = (rel / name).as_posix()
                if key.startswith(prefix):
                    yield key


    def sweep_staged(self, older_than: float) -> int:
        """``.tmp-*.part`` files of ``stage``/``put`` older than ``older_than`` s: a process killed
        between staging and publishing (or during a put) leaves them; nothing ever reads them."""
        cutoff = time.time() - older_than
        removed = 0
        for dirpath, _dirs, names in os.walk(self.root):
            for name in names:
                if not (name.startswith(".tmp-") and name.endswith(".part")):
                    continue
                path = Path(dirpath) / name
                with _quiet():
                    if path.stat().st_mtime < cutoff:
                        path.unlink()
                        removed += 1
                        self._prune(path.parent)
        return removed


class SealedBlobStore:
    """Envelope-encrypts objects of ``inner`` (``put`` seals, reads decrypt; plaintext objects still read)."""

    def __init__(self, inner: BlobStore, at_rest: AtRest):
        self.inner = inner
        self.at_rest = at_rest
        self.root: Path | None = getattr(inner, "root", None)  # where the files are (rotation, tests)

    def put(self, key: str, data: bytes, *, sync_dir: bool = True) -> None:
        self.inner.put(key, self.at_rest.seal_bytes(data), sync_dir=sync_dir)

    def sync(self, keys: list[str]) -> None:
        self.inner.sync(keys)

    def stage(self, key: str, data: bytes) -> Staged | None:
        return self.inner.stage(key, self.at_rest.seal_bytes(data))

    def publish(self, staged: Staged) -> None:
        self.inner.publish(staged)

    def unstage(self, staged: Staged) -> None:
        self.inner.unstage(staged)

    def open(self, key: str) -> BinaryIO:
        return self.at_rest.open_plain(self.inner.open(key))

    def read(self, key: str) -> bytes:
        return b"".join(self.iter_chunks(key))

    def iter_chunks(self, key: str, size: int = CHUNK) -> Iterator[bytes]:
        return self.at_rest.iter_plain(self.inner.open(key), size)

    def delete(self, key: str) -> None:
        self.inner.delete(key)

    def delete_prefix(self, prefix: str) -> None:
        self.inner.delete_prefix(prefix)

    def exists(self, key: str) -> bool:
        return self.inner.exists(key)

    def keys(self, prefix: str = "") -> Iterator[str]:
        return self.inner.keys(prefix)

    def sweep_staged(self, older_than: float) -> int:
        return self.inner.sweep_staged(older_than)

    def modified(self, key: str) -> float:
        return self.inner.modified(key)


def raw_blob_store(settings: Settings) -> BlobStore:
    """The configured store without encryption: ``DATA_DIR/dicom``, or the ``s3://`` bucket/prefix."""
    if settings.blob_store == "local":
        return LocalBlobStore(settings.data_dir / "dicom")
    from medcloud.imaging.s3 import S3BlobStore

    return S3BlobStore.from_url(settings.blob_store, endpoint_url=settings.s3_endpoint_url or None,
                                region=settings.s3_region or None)


def open_blob_store(settings: Settings, at_rest: AtRest | None) -> BlobStore:
    """The DICOM blob store every component uses: ``raw_blob_store``, sealed when ``at_rest`` is given."""
    store = raw_blob_store(settings)
    return SealedBlobStore(store, at_rest) if at_rest is not None else store


def blob_store_problems(settings: Settings) -> list[str]:
    """Why ``serve`` cannot use the configured blob store (missing bucket, bad credentials, no endpoint)."""
    if settings.blob_store == "local":
        return []
    from medcloud.errors import MedcloudError
    from medcloud.imaging.s3 import S3BlobStore

    try:
        store = raw_blob_store(settings)
        assert isinstance(store, S3BlobStore)
        store.check()
    except MedcloudError as e:
        return [f"blob_store {settings.blob_store}: {e.message}"]
    except Exception as e:  # noqa: BLE001 - e.g. a malformed endpoint URL
        return [f"blob_store {settings.blob_store}: {type(e).__name__}: {e}"]
    return []


_FSYNC_POOL = ThreadPoolExecutor(max_workers=8, thread_name_prefix="blob-fsync")


class _quiet:
    def __enter__(self) -> None:
        return None

    def __exit__(self, exc_type: object, exc: object, tb: object) -> bool:
        return isinstance(exc, OSError)


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
