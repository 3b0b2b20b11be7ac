"""Envelope encryption of blobs at rest: AES-256-GCM data keys wrapped by a master key.

Every blob gets its own random 256-bit data key; only the data key is encrypted ("wrapped") with
the master key, so rotating the master key re-wraps a 60-byte field per blob and never touches
the data (NIST SP 800-57 key hierarchy; the same scheme as cloud KMS "envelope encryption").

Layout (all integers big-endian)::

    magic "MCE1" | mode (1: one-shot, 2: stream, 3: records) | key id (8) | wrap nonce (12) | wrapped key (32 + 16 tag)
    mode 1:  nonce (12) | ciphertext + tag
    mode 2:  chunk size (4) | nonce prefix (7) | chunk_0 | ... | chunk_n   (each chunk = ciphertext + tag)
    mode 3:  record_0 | ... | record_n, record = length (4) | last (1) | nonce (12) | ciphertext + tag

The wrapped key is authenticated with the magic, mode and key id as associated data. The data's
associated data is the magic and mode (plus chunk size and nonce prefix for streams) but not the
key fields, which is what lets ``rewrap`` replace them. Streams follow the STREAM construction
(Hoang, Reyhanitabar, Rogaway, Vizár 2015): chunk i uses nonce ``prefix || i (4) || last (1)``,
so dropping, reordering or truncating chunks fails authentication, including a cut exactly at a
chunk boundary (the new last chunk was not sealed as last).

Mode 3 is for files that grow by appends and must be durable after each append (the Bulk
$export NDJSON files, checkpointed after every batch and resumed after a crash): each append is a
record sealed with a *random* nonce (never a counter: a resumed writer re-writes record i with
other data, and a repeated GCM nonce would leak both plaintexts), its index, length and "last"
flag are associated data, and the file ends with an empty "last" record that the next append
overwrites. Reordering, dropping or cutting records fails authentication.

The key id is the first 8 bytes of SHA-256 over the master key (a fingerprint, not the key).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import os
from collections.abc import Callable, Iterable, Iterator, Mapping
from pathlib import Path
from typing import BinaryIO

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from medcloud.errors import Invalid, MedcloudError

MAGIC = b"MCE1"
ONE_SHOT, STREAM, RECORDS = 1, 2, 3
KEY_SIZE = 32
KID_SIZE = 8
_WRAP_NONCE = 12
_WRAPPED = KEY_SIZE + 16
HEADER_SIZE = len(MAGIC) + 1 + KID_SIZE + _WRAP_NONCE + _WRAPPED  # 73
_STREAM_FIELDS = 4 + 7
DEFAULT_CHUNK = 64 * 1024
MAX_CHUNK = 16 * 1024 * 1024  # bounds what a forged header can make the reader allocate
_TAG = 16
ENV_VAR = "MEDCLOUD_MASTER_KEY"


class DecryptionError(MedcloudError):
    """A blob failed authentication (tampered, truncated, or not ours) or its key is unknown."""

    category = "fault"


def key_id(master_key: bytes) -> bytes:
    return hashlib.sha256(b"medcloud-kid\x00" + master_key).digest()[:KID_SIZE]


class Keyring:
    """Master keys by key id; ``current`` wraps new data keys, any listed key unwraps."""

    def __init__(self, keys: Iterable[bytes]):
        keys = list(keys)
        if not keys:
            raise Invalid("a keyring needs at least one master key")
        for k in keys:
            if len(k) != KEY_SIZE:
                raise Invalid(f"a master key is {KEY_SIZE} bytes, not {len(k)}")
        self._keys = {key_id(k): k for k in keys}
        self.current = key_id(keys[0])

    @classmethod
    def load(cls, *, key_file: Path | None = None, environ: Mapping[str, str] | None = None,
             previous: Iterable[bytes] = ()) -> Keyring:
        """The master key from ``key_file`` (32 raw bytes or base64 text), else ``MEDCLOUD_MASTER_KEY`` (base64)."""
        if key_file is not None:
            raw = Path(key_file).read_bytes()
            key = raw if len(raw) == KEY_SIZE else decode_key(raw.decode("ascii", "replace").strip())
        elif environ is not None and environ.get(ENV_VAR):
            key = decode_key(environ[ENV_VAR])
        else:
            raise Invalid(f"no master key: give a key file or set {ENV_VAR} (base64 of {KEY_SIZE} random bytes)")
        return cls([key, *previous])

    @staticmethod
    def generate() -> bytes:
        return os.urandom(KEY_SIZE)

    def ids(self) -> frozenset[bytes]:
        return frozenset(self._keys)

    def wrap(self, data_key: bytes, mode: int) -> bytes:
        """``key id | nonce | wrapped key`` under the current master key."""
        nonce = os.urandom(_WRAP_NONCE)
        aad = MAGIC + bytes([mode]) + self.current
        return self.current + nonce + AESGCM(self._keys[self.current]).encrypt(nonce, data_key, aad)

    def unwrap(self, fields: bytes, mode: int) -> bytes:
        kid, nonce, wrapped = fields[:KID_SIZE], fields[KID_SIZE:KID_SIZE + _WRAP_NONCE], fields[KID_SIZE + _WRAP_NONCE:]
        master = self._keys.get(kid)
        if master is None:
            raise DecryptionError(f"blob is wrapped by unknown master key {kid.hex()}")
        try:
            return AESGCM(master).decrypt(nonce, wrapped, MAGIC + bytes([mode]) + kid)
        except InvalidTag:
            raise DecryptionError("the wrapped data key failed authentication") from None


def decode_key(text: str) -> bytes:
    try:
        key = base64.b64decode(text.strip() + "=" * (-len(text.strip()) % 4), altchars=b"-_", validate=False)
    except (binascii.Error, ValueError):
        raise Invalid(f"{ENV_VAR} is not base64") from None
    if len(key) != KEY_SIZE:
        raise Invalid(f"the master key must decode to {KEY_SIZE} bytes, not {len(key)}")
    return key


# ---------------------------------------------------------------- one-shot


def encrypt(plaintext: bytes, keyring: Keyring) -> bytes:
    """Encrypt a whole blob in memory (use ``encrypt_stream`` for large files)."""
    data_key = AESGCM.generate_key(bit_length=256)
    nonce = os.urandom(12)
    prefix = MAGIC + bytes([ONE_SHOT])
    return prefix + keyring.wrap(data_key, ONE_SHOT) + nonce + AESGCM(data_key).encrypt(nonce, plaintext, prefix)


def decrypt(blob: bytes, keyring: Keyring) -> bytes:
    """Decrypt and authenticate; raises ``DecryptionError`` on any change to the blob."""
    _check_header(blob, ONE_SHOT)
    data_key = keyring.unwrap(blob[5:HEADER_SIZE], ONE_SHOT)
    nonce, body = blob[HEADER_SIZE:HEADER_SIZE + 12], blob[HEADER_SIZE + 12:]
    if len(nonce) != 12 or len(body) < _TAG:
        raise DecryptionError("blob is truncated")
    try:
        return AESGCM(data_key).decrypt(nonce, body, blob[:5])
    except InvalidTag:
        raise DecryptionError("blob failed authentication") from None


def _check_header(blob: bytes, mode: int) -> None:
    if len(blob) < HEADER_SIZE or blob[:4] != MAGIC:
        raise DecryptionError("not a medcloud encrypted blob")
    if blob[4] != mode:
        raise DecryptionError(f"blob mode {blob[4]} where {mode} was expected")


def is_encrypted(head: bytes) -> bool:
    """Whether a file's first bytes carry our header (files written before encryption do not)."""
    return head[:4] == MAGIC and len(head) >= 5 and head[4] in (ONE_SHOT, STREAM, RECORDS)


def header_key_id(head: bytes) -> bytes:
    return head[5:5 + KID_SIZE]


# ---------------------------------------------------------------- streaming


def encrypt_stream(src: BinaryIO, dst: BinaryIO, keyring: Keyring, *, chunk_size: int = DEFAULT_CHUNK) -> int:
    """Encrypt ``src`` to ``dst`` chunk by chunk (memory stays O(chunk_size)); returns bytes written."""
    if not 1 <= chunk_size <= MAX_CHUNK:
        raise Invalid("chunk size out of range")
    data_key = AESGCM.generate_key(bit_length=256)
    aead = AESGCM(data_key)
    nonce_prefix = os.urandom(7)
    head = MAGIC + bytes([STREAM])
    aad = head + chunk_size.to_bytes(4, "big") + nonce_prefix
    written = dst.write(head + keyring.wrap(data_key, STREAM) + chunk_size.to_bytes(4, "big") + nonce_prefix)
    i = 0
    chunk = read_full(src, chunk_size)
    while True:
        following = read_full(src, chunk_size) if len(chunk) == chunk_size else b""
        last = not following
        written += dst.write(aead.encrypt(_chunk_nonce(nonce_prefix, i, last), chunk, aad))
        if last:
            return written
        chunk, i = following, i + 1


def decrypt_stream(src: BinaryIO, dst: BinaryIO, keyring: Keyring) -> int:
    """Decrypt ``src`` to ``dst``; raises ``DecryptionError`` on tampering or truncation.

    Chunks are written as each authenticates, so on an error ``dst`` holds a prefix: callers
    write to a temporary file and discard it on error.
    """
    return sum(dst.write(plain) for plain in iter_decrypt_stream(src, keyring))


def iter_decrypt_stream(src: BinaryIO, keyring: Keyring, *, header: bytes | None = None,
                        data_key: bytes | None = None) -> Iterator[bytes]:
    """The plaintext of a mode 2 stream, one authenticated chunk at a time.

    The header is checked before the first chunk is read, so a wrong key fails at the first
    ``next``. A caller that already read the header (to retry a header read racing a key
    rotation) passes it with the data key it unwrapped.
    """
    if header is None:
        header = read_full(src, HEADER_SIZE + _STREAM_FIELDS)
    _check_header(header, STREAM)
    if data_key is None:
        data_key = keyring.unwrap(header[5:HEADER_SIZE], STREAM)
    fields = header[HEADER_SIZE:]
    if len(fields) != _STREAM_FIELDS:
        raise DecryptionError("stream header is truncated")
    chunk_size, nonce_prefix = int.from_bytes(fields[:4], "big"), fields[4:]
    if not 1 <= chunk_size <= MAX_CHUNK:
        raise DecryptionError("stream header names an impossible chunk size")
    aad = header[:5] + fields
    aead = AESGCM(data_key)
    size = chunk_size + _TAG
    i = 0
    chunk = read_full(src, size)
    while True:
        following = read_full(src, size) if len(chunk) == size else b""
        last = not following
        if len(chunk) < _TAG:
            raise DecryptionError("stream is truncated")
        try:
            plain = aead.decrypt(_chunk_nonce(nonce_prefix, i, last), chunk, aad)
        except InvalidTag:
            raise DecryptionError(f"stream chunk {i} failed authentication (tampered or truncated)") from None
        yield plain
        if last:
            return
        chunk, i = following, i + 1


STREAM_HEADER_SIZE = HEADER_SIZE + _STREAM_FIELDS


def _chunk_nonce(prefix: bytes, i: int, last: bool) -> bytes:
    if i >= 2**32:
        raise Invalid("stream too long for its chunk size")
    return prefix + i.to_bytes(4, "big") + (b"\x01" if last else b"\x00")


def read_full(src: BinaryIO, n: int) -> bytes:
    parts, got = [], 0
    while got < n:
        b = src.read(n - got)
        if not b:
            break
        parts.append(b)
        got += len(b)
    return b"".join(parts)


# ---------------------------------------------------------------- rotation


def rewrap(blob: bytes, old: Keyring, new: Keyring) -> bytes:
    """The same blob with its data key re-wrapped under ``new.current``; the data is not re-encrypted.

    Works on a one-shot blob or on a stream's first ``HEADER_SIZE`` bytes (the rest is unchanged,
    so a file can be rewritten in place: see ``rewrap_file``).
    """
    if len(blob) < HEADER_SIZE or not is_encrypted(blob):
        raise DecryptionError("not a medcloud encrypted blob")
    mode = blob[4]
    data_key = old.unwrap(blob[5:HEADER_SIZE], mode)
    return blob[:5] + new.wrap(data_key, mode) + blob[HEADER_SIZE:]


def rewrap_file(path: Path, old: Keyring, new: Keyring, *, fsync: Callable[[int], None] = os.fsync) -> bool:
    """Re-wrap an encrypted file's data key in place: one 73-byte ``pwrite`` at offset 0.

    One write system call inside the first disk sector: a crash leaves the old or the new
    header, never a mix (sector writes are atomic on the disks and file systems we target).
    A concurrent reader may in theory copy a page while the write is under way; the header is
    authenticated, so such a read fails unwrapping and the reader reads the header again
    (``security/at_rest.py``). Returns False when the file is already wrapped by ``new.current``.
    """
    fd = os.open(path, os.O_RDWR)
    try:
        header = os.pread(fd, HEADER_SIZE, 0)
        if not needs_rewrap(header, new):
            return False
        replaced = rewrap(header, old, new)
        if os.pwrite(fd, replaced, 0) != HEADER_SIZE:
            raise OSError(f"short header write on {path}")
        fsync(fd)
        return True
    finally:
        os.close(fd)


def needs_rewrap(blob_head: bytes, keyring: Keyring) -> bool:
    """Whether a blob (or its first HEADER_SIZE bytes) is wrapped by another key than ``keyring.current``."""
    return blob_head[5:5 + KID_SIZE] != keyring.current


# ---------------------------------------------------------------- appendable records (mode 3)

_REC_HEAD = 4 + 1 + 12
END_RECORD_SIZE = _REC_HEAD + _TAG
MAX_RECORD = 1024 * 1024


def _record_aad(index: int, last: bool, length: int) -> bytes:
    return MAGIC + bytes([RECORDS]) + index.to_bytes(8, "big") + (b"\x01" if last else b"\x00") + length.to_bytes(4, "big")


def _seal_record(aead: AESGCM, index: int, data: bytes, last: bool) -> bytes:
    nonce = os.urandom(12)
    head = len(data).to_bytes(4, "big") + (b"\x01" if last else b"\x00") + nonce
    return head + aead.encrypt(nonce, data, _record_aad(index, last, len(data)))


class RecordWriter:
    """Appends records to a mode 3 file; ``seal()`` makes everything written so far durable and readable.

    After ``seal()`` the file ends with the empty last record, so a crash leaves a complete file
    of the sealed size; ``resume(path, keyring, size)`` cuts a file back to a sealed size and
    continues after it. Memory stays O(one record).
    """

    def __init__(self, fd: int, aead: AESGCM, index: int, pos: int, plain_size: int):
        self._fd, self._aead, self._index, self._pos = fd, aead, index, pos
        self.plain_size = plain_size

    @classmethod
    def create(cls, path: Path, keyring: Keyring) -> RecordWriter:
        data_key = AESGCM.generate_key(bit_length=256)
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o600)
        header = MAGIC + bytes([RECORDS]) + keyring.wrap(data_key, RECORDS)
        os.pwrite(fd, header, 0)
        w = cls(fd, AESGCM(data_key), 0, HEADER_SIZE, 0)
        w.seal()
        return w

    @classmethod
    def resume(cls, path: Path, keyring: Keyring, size: int) -> RecordWriter:
        """Reopen a file sealed at ``size`` bytes and seal it again there.

        An append after that seal (unsealed when the writer died) overwrote the end record and
        wrote past it; the records before the end record were never touched. So the file is cut
        to ``size`` minus the end record, those records are counted (lengths only: readers
        authenticate them), and a fresh end record is written.
        """
        fd = os.open(path, os.O_RDWR)
        try:
            body_end = size - END_RECORD_SIZE
            header = os.pread(fd, HEADER_SIZE, 0)
            _check_header(header, RECORDS)
            if body_end < HEADER_SIZE:
                raise DecryptionError("record file is shorter than its checkpoint")
            aead = AESGCM(keyring.unwrap(header[5:HEADER_SIZE], RECORDS))
            os.ftruncate(fd, body_end)
            index, pos, plain = 0, HEADER_SIZE, 0
            while pos < body_end:
                head = os.pread(fd, _REC_HEAD, pos)
                length = int.from_bytes(head[:4], "big") if len(head) == _REC_HEAD else -1
                if length < 0 or length > MAX_RECORD or head[4] != 0:
                    raise DecryptionError(f"record {index} has a corrupt header")
                index, pos, plain = index + 1, pos + _REC_HEAD + length + _TAG, plain + length
            if pos != body_end:
                raise DecryptionError("the checkpointed size does not end at a record boundary")
            w = cls(fd, aead, index, pos, plain)
            w.seal()
            return w
        except BaseException:
            os.close(fd)
            raise

    def write(self, data: bytes) -> None:
        for start in range(0, len(data), MAX_RECORD):
            rec = _seal_record(self._aead, self._index, data[start:start + MAX_RECORD], False)
            os.pwrite(self._fd, rec, self._pos)
            self._index += 1
            self._pos += len(rec)
            self.plain_size += min(MAX_RECORD, len(data) - start)

    def seal(self) -> int:
        """Write the end record and fsync; returns the file's size (what a checkpoint records)."""
        end = _seal_record(self._aead, self._index, b"", True)
        os.pwrite(self._fd, end, self._pos)
        size = self._pos + len(end)
        os.ftruncate(self._fd, size)
        os.fsync(self._fd)
        return size

    def close(self) -> None:
        os.close(self._fd)


def iter_records(src: BinaryIO, keyring: Keyring, *, header: bytes | None = None,
                 data_key: bytes | None = None) -> Iterator[bytes]:
    """The plaintext of a mode 3 file, record by record; ``DecryptionError`` on any change."""
    if header is None:
        header = read_full(src, HEADER_SIZE)
    _check_header(header, RECORDS)
    aead = AESGCM(data_key if data_key is not None else keyring.unwrap(header[5:HEADER_SIZE], RECORDS))
    index = 0
    while True:
        head = read_full(src, _REC_HEAD)
        if len(head) < _REC_HEAD:
            raise DecryptionError("record file is truncated")
        length, last = int.from_bytes(head[:4], "big"), head[4] == 1
        if length > MAX_RECORD or head[4] > 1:
            raise DecryptionError(f"record {index} has a corrupt header")
        body = read_full(src, length + _TAG)
        try:
            plain = aead.decrypt(head[5:], body, _record_aad(index, last, length))
        except InvalidTag:
            raise DecryptionError(f"record {index} failed authentication (tampered or truncated)") from None
        if last:
            if src.read(1):
                raise DecryptionError("data after the end record")
            return
        yield plain
        index += 1
