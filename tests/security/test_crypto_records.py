"""Mode 3 (appendable records, for checkpointed export files): round trip, resume, tamper detection, rewrap."""

from __future__ import annotations

import io
import os
from pathlib import Path

import pytest

from medcloud.security.crypto import (
    END_RECORD_SIZE,
    HEADER_SIZE,
    MAX_RECORD,
    DecryptionError,
    Keyring,
    RecordWriter,
    iter_records,
    rewrap_file,
)

K1, K2 = bytes(range(32)), bytes(range(32, 64))


def _read(path: Path, ring: Keyring) -> bytes:
    with open(path, "rb") as f:
        return b"".join(iter_records(f, ring))


def test_appends_sealed_after_each_batch_read_back(tmp_path):
    ring = Keyring([K1])
    path = tmp_path / "f"
    w = RecordWriter.create(path, ring)
    assert _read(path, ring) == b""
    w.write(b"one\n")
    w.seal()
    assert _read(path, ring) == b"one\n"  # readable after every seal
    big = os.urandom(MAX_RECORD + 10)
    w.write(big)
    size = w.seal()
    w.close()
    assert path.stat().st_size == size and w.plain_size == 4 + len(big)
    assert _read(path, ring) == b"one\n" + big


def test_resume_cuts_an_unsealed_append_and_continues(tmp_path):
    ring = Keyring([K1])
    path = tmp_path / "f"
    w = RecordWriter.create(path, ring)
    w.write(b"batch 1\n")
    sealed = w.seal()
    w.write(b"batch 2, never sealed: the process died\n")
    w.close()
    w = RecordWriter.resume(path, ring, sealed)
    assert w.plain_size == 8
    w.write(b"batch 2 again\n")
    w.seal()
    w.close()
    assert _read(path, ring) == b"batch 1\nbatch 2 again\n"


def test_any_change_is_detected(tmp_path):
    ring = Keyring([K1])
    path = tmp_path / "f"
    w = RecordWriter.create(path, ring)
    for i in range(3):
        w.write(f"record {i}\n".encode())
    w.seal()
    w.close()
    good = path.read_bytes()
    rec = (len(good) - HEADER_SIZE - END_RECORD_SIZE) // 3
    cases = {
        "flipped bit": good[:HEADER_SIZE + 20] + bytes([good[HEADER_SIZE + 20] ^ 1]) + good[HEADER_SIZE + 21:],
        "cut at a record boundary": good[:HEADER_SIZE + 2 * rec],
        "end record dropped": good[:-END_RECORD_SIZE],
        "records swapped": good[:HEADER_SIZE] + good[HEADER_SIZE + rec:HEADER_SIZE + 2 * rec]
        + good[HEADER_SIZE:HEADER_SIZE + rec] + good[HEADER_SIZE + 2 * rec:],
        "data after the end": good + b"x",
    }
    for name, blob in cases.items():
        with pytest.raises(DecryptionError):
            b"".join(iter_records(io.BytesIO(blob), ring))
            pytest.fail(name)
    with pytest.raises(DecryptionError):
        b"".join(iter_records(io.BytesIO(good), Keyring([K2])))


def test_rewrap_replaces_only_the_header(tmp_path):
    old, new = Keyring([K1]), Keyring([K2, K1])
    path = tmp_path / "f"
    w = RecordWriter.create(path, old)
    w.write(b"payload\n")
    w.seal()
    w.close()
    before = path.read_bytes()
    assert rewrap_file(path, new, new) is True
    assert rewrap_file(path, new, new) is False  # already current
    after = path.read_bytes()
    assert after[HEADER_SIZE:] == before[HEADER_SIZE:] and after[:HEADER_SIZE] != before[:HEADER_SIZE]
    assert _read(path, Keyring([K2])) == b"payload\n"
