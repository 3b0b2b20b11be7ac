"""Envelope encryption: round trips, any tampering refused, truncation detected, key rotation."""

from __future__ import annotations

import base64
import io
import os

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from medcloud.errors import Invalid
from medcloud.security.crypto import (
    HEADER_SIZE,
    DecryptionError,
    Keyring,
    decrypt,
    decrypt_stream,
    encrypt,
    encrypt_stream,
    needs_rewrap,
    rewrap,
    rewrap_file,
)

K1, K2 = bytes(range(32)), bytes(range(32, 64))


@pytest.fixture
def ring():
    return Keyring([K1])


def _stream(data: bytes, ring: Keyring, chunk: int) -> bytes:
    out = io.BytesIO()
    encrypt_stream(io.BytesIO(data), out, ring, chunk_size=chunk)
    return out.getvalue()


def _unstream(blob: bytes, ring: Keyring) -> bytes:
    out = io.BytesIO()
    decrypt_stream(io.BytesIO(blob), out, ring)
    return out.getvalue()


@pytest.mark.parametrize("size", [0, 1, 15, 16, 1000, 100_000])
def test_one_shot_round_trip(ring, size):
    data = os.urandom(size)
    blob = encrypt(data, ring)
    assert decrypt(blob, ring) == data
    assert size < 16 or data not in blob  # (a byte or two turns up in any random string)
    assert encrypt(data, ring) != blob  # fresh data key and nonce every time


@pytest.mark.parametrize(("size", "chunk"), [(0, 16), (1, 16), (16, 16), (32, 16), (33, 16), (1000, 64), (200_000, 65536)])
def test_stream_round_trip_including_exact_chunk_multiples(ring, size, chunk):
    data = os.urandom(size)
    assert _unstream(_stream(data, ring, chunk), ring) == data


def test_flipping_any_byte_of_a_blob_is_refused(ring):
    blob = encrypt(b"patient data " * 5, ring)
    for i in range(len(blob)):
        bad = bytearray(blob)
        bad[i] ^= 0x01
        with pytest.raises(DecryptionError):
            decrypt(bytes(bad), ring)


def test_flipping_any_byte_of_a_stream_is_refused(ring):
    blob = _stream(os.urandom(100), ring, 32)
    for i in range(len(blob)):
        bad = bytearray(blob)
        bad[i] ^= 0x80
        with pytest.raises(DecryptionError):
            _unstream(bytes(bad), ring)


def test_truncating_a_stream_anywhere_is_detected_including_at_chunk_boundaries(ring):
    chunk = 32
    blob = _stream(os.urandom(5 * chunk), ring, chunk)
    header = HEADER_SIZE + 11
    boundaries = {header + k * (chunk + 16) for k in range(1, 5)}
    for cut in range(len(blob)):
        with pytest.raises(DecryptionError):
            _unstream(blob[:cut], ring)
    assert boundaries  # the loop above included every boundary cut


def test_reordered_or_duplicated_stream_chunks_are_refused(ring):
    chunk = 32
    blob = _stream(os.urandom(3 * chunk + 5), ring, chunk)
    h, n = HEADER_SIZE + 11, chunk + 16
    c = [blob[h + i * n: h + (i + 1) * n] for i in range(4)]
    with pytest.raises(DecryptionError):
        _unstream(blob[:h] + c[1] + c[0] + c[2] + c[3], ring)
    with pytest.raises(DecryptionError):
        _unstream(blob[:h] + c[0] + c[0] + c[1] + c[2] + c[3], ring)
    with pytest.raises(DecryptionError):
        _unstream(blob + c[3], ring)  # appended data after the final chunk


def test_truncated_one_shot_blob_is_refused(ring):
    blob = encrypt(b"x" * 100, ring)
    for cut in (0, 3, HEADER_SIZE - 1, HEADER_SIZE + 5, len(blob) - 1):
        with pytest.raises(DecryptionError):
            decrypt(blob[:cut], ring)


def test_wrong_or_unknown_master_key_is_refused():
    blob = encrypt(b"secret", Keyring([K1]))
    with pytest.raises(DecryptionError, match="unknown master key"):
        decrypt(blob, Keyring([K2]))


def test_rotation_rewraps_only_the_data_key(ring):
    data = os.urandom(1000)
    blob = encrypt(data, ring)
    rotated_ring = Keyring([K2, K1])  # new current key, old one still readable during rotation
    assert needs_rewrap(blob, rotated_ring)
    new_blob = rewrap(blob, ring, Keyring([K2]))
    assert new_blob[HEADER_SIZE:] == blob[HEADER_SIZE:]  # ciphertext untouched
    assert new_blob[:HEADER_SIZE] != blob[:HEADER_SIZE]
    assert not needs_rewrap(new_blob, rotated_ring)
    assert decrypt(new_blob, Keyring([K2])) == data
    with pytest.raises(DecryptionError):
        decrypt(new_blob, ring)  # the old key alone can no longer open it
    assert decrypt(blob, rotated_ring) == data  # not yet re-wrapped blobs still open


def test_rotating_a_stream_file_in_place(tmp_path, ring):
    data = os.urandom(70_000)
    path = tmp_path / "blob.enc"
    path.write_bytes(_stream(data, ring, 16_384))
    before = path.read_bytes()
    rewrap_file(path, ring, Keyring([K2]))
    after = path.read_bytes()
    assert after[HEADER_SIZE:] == before[HEADER_SIZE:]
    assert _unstream(after, Keyring([K2])) == data


def test_a_header_from_another_blob_does_not_open_this_one(ring):
    a, b = encrypt(b"a" * 50, ring), encrypt(b"b" * 50, ring)
    with pytest.raises(DecryptionError):
        decrypt(b[:HEADER_SIZE] + a[HEADER_SIZE:], ring)


def test_keyring_loads_from_env_base64_or_key_file(tmp_path):
    env = {"MEDCLOUD_MASTER_KEY": base64.b64encode(K1).decode()}
    assert Keyring.load(environ=env).current == Keyring([K1]).current
    assert Keyring.load(environ={"MEDCLOUD_MASTER_KEY": base64.urlsafe_b64encode(K1).decode().rstrip("=")}).current \
        == Keyring([K1]).current
    raw = tmp_path / "raw.key"
    raw.write_bytes(K2)
    assert Keyring.load(key_file=raw).current == Keyring([K2]).current
    text = tmp_path / "b64.key"
    text.write_text(base64.b64encode(K2).decode() + "\n")
    assert Keyring.load(key_file=text).current == Keyring([K2]).current
    for bad in ({}, {"MEDCLOUD_MASTER_KEY": "c2hvcnQ="}, {"MEDCLOUD_MASTER_KEY": "!!!"}):
        with pytest.raises(Invalid):
            Keyring.load(environ=bad)


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=300), st.integers(min_value=1, max_value=64))
def test_stream_round_trip_property(data, chunk):
    ring = Keyring([K1])
    assert _unstream(_stream(data, ring, chunk), ring) == data


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=200))
def test_decrypt_of_garbage_raises_only_decryption_error(garbage):
    ring = Keyring([K1])
    with pytest.raises(DecryptionError):
        decrypt(garbage, ring)
    with pytest.raises(DecryptionError):
        _unstream(garbage, ring)
