"""DIMSE command sets (PS3.7 §6.3, §9.3, Annex E): group 0000, always Implicit VR Little Endian.

Only what the lean acceptor (``acceptor.py``) reads and answers: C-STORE and C-ECHO requests in,
their responses out; and the File Meta it puts before a received data set. Hand-written because a command set is a handful of elements and pydicom's
generic reader/writer costs more per message than the rest of the C-ECHO path.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from pynetdicom import PYNETDICOM_IMPLEMENTATION_UID, PYNETDICOM_IMPLEMENTATION_VERSION

C_STORE_RQ, C_STORE_RSP = 0x0001, 0x8001
C_ECHO_RQ, C_ECHO_RSP = 0x0030, 0x8030
NO_DATA_SET = 0x0101  # (0000,0800) Command Data Set Type: no data set follows

_ELEMENT = struct.Struct("<HHI")  # group, element, value length (implicit VR)


@dataclass(frozen=True)
class Command:
    command_field: int
    message_id: int
    sop_class_uid: str
    sop_instance_uid: str
    has_data: bool


def decode(raw: bytes) -> Command:
    """The request fields of a command set; raises ValueError when it is truncated or incomplete."""
    values: dict[int, bytes] = {}
    offset = 0
    while offset < len(raw):
        if offset + _ELEMENT.size > len(raw):
            raise ValueError("truncated element header")
        group, element, length = _ELEMENT.unpack_from(raw, offset)
        offset += _ELEMENT.size
        if group != 0x0000 or length > len(raw) - offset:
            raise ValueError(f"bad element ({group:04X},{element:04X})")
        values[element] = raw[offset:offset + length]
        offset += length
    try:
        field = _us(values[0x0100])
        message_id = _us(values[0x0110])
        data_type = _us(values[0x0800])
    except KeyError as e:
        raise ValueError(f"missing (0000,{e.args[0]:04X})") from None
    return Command(field, message_id, _ui(values.get(0x0002, b"")), _ui(values.get(0x1000, b"")),
                   data_type != NO_DATA_SET)


def response(rq: Command, command_field: int, status: int, comment: str | None = None) -> bytes:
    """The encoded response to ``rq``: no data set, ``status`` and an Error Comment if given."""
    elements = [(0x0002, _uid(rq.sop_class_uid)), (0x0100, _u16(command_field)), (0x0120, _u16(rq.message_id)),
                (0x0800, _u16(NO_DATA_SET)), (0x0900, _u16(status))]
    if rq.sop_instance_uid:
        elements.append((0x1000, _uid(rq.sop_instance_uid)))
    if comment:
        text = comment[:64].encode("ascii", "replace")  # LO: 64 characters, default repertoire
        elements.append((0x0902, text + b" " * (len(text) % 2)))
    body = b"".join(_ELEMENT.pack(0, tag, len(value)) + value for tag, value in sorted(elements))
    return _ELEMENT.pack(0, 0x0000, 4) + struct.pack("<I", len(body)) + body


def _us(value: bytes) -> int:
    if len(value) != 2:
        raise ValueError("US value of the wrong length")
    return int.from_bytes(value, "little")


def _ui(value: bytes) -> str:
    return value.rstrip(b"\x00 ").decode("ascii", "replace")


def _u16(value: int) -> bytes:
    return struct.pack("<H", value)


def _uid(uid: str) -> bytes:
    raw = uid.encode("ascii")
    return raw + b"\x00" * (len(raw) % 2)


def file_meta(sop_class_uid: str, sop_instance_uid: str, transfer_syntax: str) -> bytes:
    """The File Meta Information (PS3.10 §7.1) of a received instance, encoded (Explicit VR LE).

    Byte for byte what pynetdicom's ``create_file_meta`` + ``encode_file_meta`` give (the pynetdicom
    path's ``event.encoded_dataset()``, including its implementation class UID and version name), at
    a tenth of the cost: pydicom validates and re-encodes every element.
    """
    body = b"".join((
        b"\x02\x00\x01\x00OB\x00\x00" + struct.pack("<I", 2) + b"\x00\x01",
        _short(0x0002, b"UI", _uid(sop_class_uid)),
        _short(0x0003, b"UI", _uid(sop_instance_uid)),
        _short(0x0010, b"UI", _uid(transfer_syntax)),
        _IMPLEMENTATION,
    ))
    return b"\x02\x00\x00\x00UL\x04\x00" + struct.pack("<I", len(body)) + body


def _short(element: int, vr: bytes, value: bytes) -> bytes:
    return struct.pack("<HH", 0x0002, element) + vr + struct.pack("<H", len(value)) + value


def _sh(text: str) -> bytes:
    raw = text.encode("ascii")
    return raw + b" " * (len(raw) % 2)


_IMPLEMENTATION = (_short(0x0012, b"UI", _uid(PYNETDICOM_IMPLEMENTATION_UID))
                   + _short(0x0013, b"SH", _sh(PYNETDICOM_IMPLEMENTATION_VERSION)))
