"""The lean acceptor's hand-written codecs against pynetdicom/pydicom's (dimse/command.py)."""

from __future__ import annotations

import io

import pytest
from hypothesis import given
from hypothesis import strategies as st
from pydicom.dataset import Dataset
from pydicom.filereader import read_dataset
from pydicom.uid import UID
from pynetdicom.dsutils import create_file_meta, encode, encode_file_meta

from medcloud.imaging.dimse import command
from medcloud.imaging.dimse.acceptor import p_data_tf

uids = st.lists(st.integers(0, 10**12), min_size=2, max_size=12).map(lambda xs: ".".join(map(str, xs))).filter(
    lambda u: len(u) <= 64)  # UI: 64 characters (PS3.5 Table 6.2-1)


@given(sop_class=uids, sop_instance=uids, syntax=st.sampled_from(["1.2.840.10008.1.2", "1.2.840.10008.1.2.1",
                                                                   "1.2.840.10008.1.2.4.50"]))
def test_file_meta_is_byte_identical_to_pynetdicoms(sop_class: str, sop_instance: str, syntax: str) -> None:
    expected = encode_file_meta(create_file_meta(sop_class_uid=UID(sop_class), sop_instance_uid=UID(sop_instance),
                                                 transfer_syntax=UID(syntax)))
    assert command.file_meta(sop_class, sop_instance, syntax) == expected


def _request(field: int, *, data: bool, instance: str = "1.2.3.4") -> bytes:
    cmd = Dataset()
    cmd.CommandGroupLength = 0
    cmd.AffectedSOPClassUID = "1.2.840.10008.5.1.4.1.1.2"
    cmd.CommandField = field
    cmd.MessageID = 513
    cmd.Priority = 0
    cmd.CommandDataSetType = 0x0000 if data else 0x0101
    cmd.AffectedSOPInstanceUID = instance
    raw = encode(cmd, True, True)
    assert raw is not None
    return raw


@given(instance=uids)
def test_store_request_decodes_and_its_response_reads_back(instance: str) -> None:
    rq = command.decode(_request(command.C_STORE_RQ, data=True, instance=instance))
    assert (rq.command_field, rq.message_id, rq.sop_instance_uid, rq.has_data) == (
        command.C_STORE_RQ, 513, instance, True)
    raw = command.response(rq, command.C_STORE_RSP, 0xA900, "missing StudyInstanceUID " + "x" * 80)
    rsp = read_dataset(io.BytesIO(raw), is_implicit_VR=True, is_little_endian=True)
    assert rsp.CommandGroupLength == len(raw) - 12
    assert (rsp.CommandField, rsp.MessageIDBeingRespondedTo, rsp.Status, rsp.CommandDataSetType) == (
        command.C_STORE_RSP, 513, 0xA900, 0x0101)
    assert rsp.AffectedSOPInstanceUID == instance
    assert len(rsp.ErrorComment) <= 64 and rsp.ErrorComment.startswith("missing StudyInstanceUID")


def test_echo_request_has_no_data_set() -> None:
    assert not command.decode(_request(command.C_ECHO_RQ, data=False)).has_data


@pytest.mark.parametrize("raw", [b"", b"\x00\x00\x00", _request(command.C_ECHO_RQ, data=False)[:-3],
                                 b"\x08\x00\x00\x00\x02\x00\x00\x00ab"])
def test_broken_command_sets_raise_value_error(raw: bytes) -> None:
    with pytest.raises(ValueError):
        command.decode(raw)


@given(payload=st.binary(min_size=0, max_size=3000), peer_max=st.sampled_from([0, 16, 100, 1024, 16384]))
def test_p_data_tf_fragments_within_the_peers_maximum(payload: bytes, peer_max: int) -> None:
    raw = p_data_tf(5, payload, peer_max, is_command=True)
    got, offset, controls = b"", 0, []
    while offset < len(raw):
        assert raw[offset] == 0x04
        length = int.from_bytes(raw[offset + 2:offset + 6], "big")
        if peer_max:
            assert length <= peer_max
        item = int.from_bytes(raw[offset + 6:offset + 10], "big")
        assert item == length - 4 and raw[offset + 10] == 5
        controls.append(raw[offset + 11])
        got += raw[offset + 12:offset + 6 + length]
        offset += 6 + length
    assert got == payload
    assert controls[-1] == 0x03 and all(c == 0x01 for c in controls[:-1])
