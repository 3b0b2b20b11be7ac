"""Encryption at rest for the files medcloud keeps under DATA_DIR: DICOM instances and $export NDJSON.

``AtRest`` is built once per process (``app.build_services``) from the settings and the database's
key ring (``security/keys.py``). Writers seal with the current KEK when ``Settings.encrypt_at_rest``
is on; readers look at the first bytes and decrypt what carries our header, so files written
before encryption was switched on (or with it off) stay readable after an upgrade.

Reads stream: a DICOM instance is decrypted one 64 KiB chunk at a time as it is sent, an export
file one record at a time. A reader that fails to unwrap a header reads it again with a fresh key
ring before giving up: the header may have been re-wrapped by ``medcloud keys rotate`` between the
key ring load and the read, or (in theory) read while its 73-byte rewrite was being copied.
"""

from __future__ import annotations

import io
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import BinaryIO, cast

from medcloud.config import Settings
from medcloud.security.crypto import (
    HEADER_SIZE,
    RECORDS,
    STREAM,
    STREAM_HEADER_SIZE,
    DecryptionError,
    Keyring,
    RecordWriter,
    encrypt_stream,
    is_encrypted,
    iter_decrypt_stream,
    iter_records,
    read_full,
)
from medcloud.security.keys import KeyStore
from medcloud.storage.sql.database import Database

READ_CHUNK = 256 * 1024
_ATTEMPTS = 4


def master_key_file(settings: Settings) -> Path:
    return settings.master_key_file or settings.data_dir / "master.key"


class AtRest:
    """Seal and open files with the database's key ring; ``encrypt=False`` writes plaintext (reads still decrypt)."""

    def __init__(self, keys: KeyStore, *, encrypt: bool = True):
        self.keys = keys
        self.encrypt = encrypt

    @classmethod
    def open(cls, settings: Settings, db: Database, environ: Mapping[str, str] | None = None) -> AtRest:
        """Raises ``keys.MasterKeyError`` (a clear startup error) when the master key is missing or wrong."""
        return cls(KeyStore.open(db, master_key_file(settings), environ), encrypt=settings.encrypt_at_rest)

    def keyring(self) -> Keyring:
        return self.keys.keyring()

    # ------------------------------------------------------------ writing

    def seal_bytes(self, data: bytes) -> bytes:
        """``data`` as a mode 2 stream (or unchanged with encryption off), for a blob store ``put``."""
        if not self.encrypt:
            return data
        out = io.BytesIO()
        encrypt_stream(io.BytesIO(data), out, self.keyring())
        return out.getvalue()

    def new_records(self, path: Path) -> RecordWriter:
        return RecordWriter.create(path, self.keyring())

    def resume_records(self, path: Path, size: int) -> RecordWriter:
        return RecordWriter.resume(path, self._ring_for(path), size)

    # ------------------------------------------------------------ reading

    def _ring_for(self, path: Path) -> Keyring:
        """A key ring that knows ``path``'s key id (reloaded once if it does not)."""
        with open(path, "rb") as f:
            head = f.read(HEADER_SIZE)
        ring = self.keyring()
        if is_encrypted(head) and head[5:13] not in ring.ids():
            ring = self.keys.keyring(refresh=True)
        return ring

    def _open_header(self, f: BinaryIO) -> tuple[bytes, bytes] | None:
        """(header, data key) of an encrypted file, or None for a plaintext one; leaves ``f`` after the header.

        A header that fails to unwrap is read again (seekable files) with a fresh key ring.
        """
        head = _head(f)
        if not is_encrypted(head):
            return None
        attempts = _ATTEMPTS if f.seekable() else 1
        for attempt in range(attempts):
            mode = head[4]
            header = head[:STREAM_HEADER_SIZE] if mode == STREAM else head[:HEADER_SIZE]
            try:
                ring = self.keys.keyring(refresh=attempt > 0)
                data_key = ring.unwrap(header[5:HEADER_SIZE], mode)
                if f.seekable():
                    f.seek(len(header))
                return header, data_key
            except DecryptionError:
                if attempt == attempts - 1:
                    raise
                time.sleep(0.005 * (attempt + 1))
                head = _head(f)
        raise AssertionError("unreachable")

    def iter_plain(self, f: BinaryIO, size: int = READ_CHUNK) -> Iterator[bytes]:
        """The plaintext of an open file in pieces of at most ``size`` bytes; closes ``f`` at the end."""
        with f:
            if not f.seekable():  # a network body (S3 later): keep the bytes the header probe reads
                f = cast(BinaryIO, _Replay(f))
            opened = self._open_header(f)
            if opened is None:
                f.seek(0)
                while chunk := f.read(size):
                    yield chunk
                return
            header, data_key = opened
            if header[4] == STREAM:
                pieces = iter_decrypt_stream(f, self.keyring(), header=header, data_key=data_key)
            elif header[4] == RECORDS:
                pieces = iter_records(f, self.keyring(), header=header, data_key=data_key)
            else:
                raise DecryptionError(f"mode {header[4]} files are not stored by medcloud")
            for piece in pieces:
                for start in range(0, len(piece), size):
                    yield piece[start:start + size]

    def open_plain(self, f: BinaryIO) -> BinaryIO:
        """A readable stream of the plaintext of ``f`` (which it takes over)."""
        return io.BufferedReader(_IterReader(self.iter_plain(f)), READ_CHUNK)

    def iter_file(self, path: Path, size: int = READ_CHUNK) -> Iterator[bytes]:
        return self.iter_plain(open(path, "rb"), size)  # noqa: SIM115 - closed by the generator


class _Replay(io.RawIOBase):
    """A forward-only stream whose first bytes can be read again (``seek(n)`` within them)."""

    def __init__(self, inner: BinaryIO):
        self._inner = inner
        self._start = b""
        self._pos = 0
        self._done = False

    def seekable(self) -> bool:
        return not self._done

    def seek(self, pos: int, whence: int = 0) -> int:
        if whence != 0 or pos > len(self._start) or self._done:
            raise io.UnsupportedOperation("only within the first bytes")
        self._pos = pos
        return pos

    def read(self, n: int = -1) -> bytes:
        if self._pos < len(self._start):
            part = self._start[self._pos:] if n < 0 else self._start[self._pos:self._pos + n]
            self._pos += len(part)
            return part
        data = self._inner.read(n)
        if self._pos < STREAM_HEADER_SIZE:  # still probing the header: remember
            self._start += data
            self._pos += len(data)
        else:
            self._done = True
        return data

    def readable(self) -> bool:
        return True

    def close(self) -> None:
        self._inner.close()
        super().close()


def _head(f: BinaryIO) -> bytes:
    """The first bytes of a file, enough for any header (re-read from offset 0 when seekable)."""
    if f.seekable():
        f.seek(0)
    return read_full(f, STREAM_HEADER_SIZE)


class _IterReader(io.RawIOBase):
    def __init__(self, pieces: Iterator[bytes]):
        self._pieces = pieces
        self._buf = b""

    def readable(self) -> bool:
        return True

    def readinto(self, b: memoryview) -> int:  # type: ignore[override]
        while not self._buf:
            nxt = next(self._pieces, None)
            if nxt is None:
                return 0
            self._buf = nxt
        n = min(len(b), len(self._buf))
        b[:n] = self._buf[:n]
        self._buf = self._buf[n:]
        return n

    def close(self) -> None:
        close = getattr(self._pieces, "close", None)
        if close is not None:
            close()
        super().close()
