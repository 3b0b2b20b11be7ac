"""Envelope encryption of blobs at rest: AES-256-GCM data keys wrapped by a master key.

Every blob gets its own random 256-bit data key; only the data key is encrypted ("wrapped") with
the master key, so rotating the master key re-wraps a 60-byte field per blob and never touches
the data (NIST SP 800-57 key hierarchy; the same scheme as cloud KMS "envelope encryption").

Layout (all integers big-endian)::

    magic "MCE1" | mode (1: one-shot, 2: stream) | key id (8) | wrap nonce (12) | wrapped key (32 + 16 tag)
    mode 1:  nonce (12) | ciphertext + tag
    mode 2:  chunk size (4) | nonce prefix (7) | chunk_0 | ... | chunk_n   (each chunk = ciphertext + tag)

The wrapped key is authenticated with the magic, mode and key id as associated data. The data's
associated data is the magic and mode (plus chunk size and nonce prefix for streams) but not the
key fields, which is what lets ``rewrap`` replace them. Streams follow the STREAM construction
(Hoang, Reyhanitabar, Rogaway, Vizár 2015): chunk i uses nonce ``prefix || i (4) || last (1)``,
so dropping, reordering or truncating chunks fails authentication, including a cut exactly at a
chunk boundary (the new last chunk was not sealed as last).

The key id is the first 8 bytes of SHA-256 over the master key (a fingerprint, not the key).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import os
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import BinaryIO

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from medcloud.errors import Invalid, MedcloudError

MAGIC = b"MCE1"
ONE_SHOT, STREAM = 1, 2
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
    chunk = _read_full(src, chunk_size)
    while True:
        following = _read_full(src, chunk_size) if len(chunk) == chunk_size else b""
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
    header = _read_full(src, HEADER_SIZE + _STREAM_FIELDS)
    _check_header(header, STREAM)
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
    out, i = 0, 0
    chunk = _read_full(src, size)
    while True:
        following = _read_full(src, size) if len(chunk) == size else b""
        last = not following
        if len(chunk) < _TAG:
            raise DecryptionError("stream is truncated")
        try:
            plain = aead.decrypt(_chunk_nonce(nonce_prefix, i, last), chunk, aad)
        except InvalidTag:
            raise DecryptionError(f"stream chunk {i} failed authentication (tampered or truncated)") from None
        out += dst.write(plain)
        if last:
            return out
        chunk, i = following, i + 1


def _chunk_nonce(prefix: bytes, i: int, last: bool) -> bytes:
    if i >= 2**32:
        raise Invalid("stream too long for its chunk size")
    return prefix + i.to_bytes(4, "big") + (b"\x01" if last else b"\x00")


def _read_full(src: BinaryIO, n: int) -> bytes:
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
    if len(blob) < HEADER_SIZE or blob[:4] != MAGIC or blob[4] not in (ONE_SHOT, STREAM):
        raise DecryptionError("not a medcloud encrypted blob")
    mode = blob[4]
    data_key = old.unwrap(blob[5:HEADER_SIZE], mode)
    return blob[:5] + new.wrap(data_key, mode) + blob[HEADER_SIZE:]


def rewrap_file(path: Path, old: Keyring, new: Keyring, *, fsync: Callable[[int], None] = os.fsync) -> None:
    """Re-wrap an encrypted file's data key in place: one 73-byte write at offset 0.

    A header write within the first disk sector is atomic on the file systems we target; where
    that is not trusted, copy to a temporary file, ``rewrap`` its header and rename instead.
    """
    with open(path, "r+b") as f:
        header = _read_full(f, HEADER_SIZE)
        replaced = rewrap(header, old, new)
        f.seek(0)
        f.write(replaced)
        f.flush()
        fsync(f.fileno())


def needs_rewrap(blob_head: bytes, keyring: Keyring) -> bool:
    """Whether a blob (or its first HEADER_SIZE bytes) is wrapped by another key than ``keyring.current``."""
    return blob_head[5:5 + KID_SIZE] != keyring.current
