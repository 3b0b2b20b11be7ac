"""The lean C-STORE/C-ECHO acceptor (dimse/acceptor.py) in front of pynetdicom: dcmtk, pynetdicom
and raw sockets as peers."""

from __future__ import annotations

import io
import socket
import struct
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import _factory
import numpy as np
import pydicom
import pytest
from _peers import SCU_AET, free_port, jpeg_instance, run, write
from pydicom.dataset import Dataset
from pydicom.filereader import read_dataset
from pynetdicom import AE, association, build_context, pdu
from pynetdicom.dsutils import encode
from pynetdicom.pdu_primitives import A_ASSOCIATE, MaximumLengthNotification

from medcloud.app import Services
from medcloud.config import Settings
from medcloud.imaging import qido
from medcloud.imaging.archive import Archive
from medcloud.imaging.dicomweb import build_archive
from medcloud.imaging.dimse import acceptor, command
from medcloud.imaging.dimse.acceptor import StoreFunction
from medcloud.imaging.dimse.scp import DimseServer, StudyRootQueryRetrieveInformationModelFind

pytestmark = pytest.mark.usefixtures("dcmtk")
CT = "1.2.840.10008.5.1.4.1.1.2"


def _peer(scp: DimseServer) -> list[str]:
    return ["-aet", SCU_AET, "-aec", "MEDCLOUD", "127.0.0.1", str(scp.port)]


def _count(archive: Archive) -> int:
    rows, _ = qido.search(archive.db, qido.QidoQuery(level="instance"))
    return len(rows)


def _lean(scp: DimseServer) -> acceptor.StoreAcceptor:
    assert scp.acceptor is not None
    return scp.acceptor


# -- raw-socket peer -----------------------------------------------------------------------------

def _associate(port: int, calling: str = SCU_AET) -> socket.socket:
    """A raw association proposing CT Image Storage (context 1, Explicit VR LE); returns the socket."""
    rq = A_ASSOCIATE()
    rq.application_context_name = "1.2.840.10008.3.1.1.1"
    rq.calling_ae_title, rq.called_ae_title = calling, "MEDCLOUD"
    max_length = MaximumLengthNotification()
    max_length.maximum_length_received = 16384
    rq.user_information = [max_length]
    cx = build_context(CT, [pydicom.uid.ExplicitVRLittleEndian])
    cx.context_id = 1
    rq.presentation_context_definition_list = [cx]
    sock = socket.create_connection(("127.0.0.1", port), timeout=10)
    sock.sendall(pdu.A_ASSOCIATE_RQ(rq).encode())
    kind, _ = _read_pdu(sock)
    assert kind == 0x02  # A-ASSOCIATE-AC
    return sock


def _read_pdu(sock: socket.socket) -> tuple[int, bytes]:
    head = _read_exactly(sock, 6)
    if not head:
        return 0, b""  # closed
    kind, length = struct.unpack(">BxI", head)
    return kind, _read_exactly(sock, length)


def _read_exactly(sock: socket.socket, n: int) -> bytes:
    out = b""
    while len(out) < n:
        chunk = sock.recv(n - len(out))
        if not chunk:
            return out
        out += chunk
    return out


def _store_rq(ds: Dataset) -> bytes:
    cmd = Dataset()
    cmd.CommandGroupLength = 0
    cmd.AffectedSOPClassUID = ds.SOPClassUID
    cmd.CommandField = command.C_STORE_RQ
    cmd.MessageID = 7
    cmd.Priority = 0
    cmd.CommandDataSetType = 0x0000
    cmd.AffectedSOPInstanceUID = ds.SOPInstanceUID
    raw = encode(cmd, True, True)
    assert raw is not None
    return raw


def _p_data(context_id: int, control: int, data: bytes) -> bytes:
    return struct.pack(">BxIIBB", 0x04, len(data) + 6, len(data) + 2, context_id, control) + data


# -- dcmtk and pynetdicom peers ------------------------------------------------------------------

def test_storescu_many_files_small_pdus_and_jpeg_over_one_association(scp: DimseServer, archive: Archive,
                                                                     tmp_path: Path) -> None:
    study = pydicom.uid.generate_uid()
    small = [_factory.instance(study=study, instance_number=i + 1, rows=16, columns=16) for i in range(20)]
    big = _factory.instance(study=study, rows=512, columns=512, instance_number=99)  # 512 KB: >100 PDUs of 4 KB
    files = write(tmp_path / "in", [*small, big, jpeg_instance(study=study)])
    r = run("storescu", "-xy", "--max-send-pdu", "4096", "-v", *_peer(scp), *map(str, files), timeout=60)
    assert r.returncode == 0, r.stdout + r.stderr
    assert r.stdout.count("Sending Store Request") + r.stderr.count("Sending Store Request") == 22
    assert _lean(scp).served == 1  # one association, on the lean path
    refs = {x.sop_uid: x for x in archive.instances(study)}
    assert len(refs) == 22
    sent = pydicom.dcmread(io.BytesIO(big))
    stored = pydicom.dcmread(io.BytesIO(archive.blobs.read(refs[sent.SOPInstanceUID].blob_key)))
    assert np.array_equal(stored.pixel_array, sent.pixel_array)
    jpeg = pydicom.dcmread(io.BytesIO(files[-1].read_bytes()))
    assert refs[jpeg.SOPInstanceUID].transfer_syntax_uid == pydicom.uid.JPEGBaseline8Bit


def test_concurrent_storescu_associations(scp: DimseServer, archive: Archive, tmp_path: Path) -> None:
    datas = [_factory.instance(rows=16, columns=16) for _ in range(12)]
    files = write(tmp_path / "in", datas)
    procs = [subprocess.Popen(["storescu", *_peer(scp), *map(str, files[k::4])], stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT) for k in range(4)]
    outs = [p.communicate(timeout=60)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0, 0, 0], outs
    assert _count(archive) == 12
    assert _lean(scp).served == 4


def test_echoscu_on_the_lean_path_and_unknown_caller_rejected(scp: DimseServer) -> None:
    assert run("echoscu", *_peer(scp)).returncode == 0
    assert _lean(scp).served == 1
    ae = AE("STRANGER")
    ae.add_requested_context("1.2.840.10008.1.1")
    assoc = ae.associate("127.0.0.1", scp.port, ae_title="MEDCLOUD")
    assert assoc.is_rejected
    rj = assoc.acceptor.primitive
    assert rj is not None
    assert (rj.result, rj.result_source, rj.diagnostic) == (0x01, 0x01, 0x03)  # permanent, user, calling AE


def test_pynetdicom_duplicate_and_corrupt_get_a_status_each_and_the_association_stays_up(
        scp: DimseServer, archive: Archive, monkeypatch: pytest.MonkeyPatch) -> None:
    first, corrupt = (pydicom.dcmread(io.BytesIO(_factory.instance(rows=8, columns=8))) for _ in range(2))
    ae = AE(ae_title=SCU_AET)
    assoc = ae.associate("127.0.0.1", scp.port, ae_title="MEDCLOUD",
                         contexts=[build_context(first.SOPClassUID), build_context("1.2.840.10008.1.1")])
    assert assoc.is_established
    try:
        assert assoc.send_c_store(first).Status == 0x0000
        dup = assoc.send_c_store(first)
        assert dup.Status == 0x0111  # Duplicate SOP Instance (PS3.7 C.4)
        real_encode = association.encode
        monkeypatch.setattr(association, "encode", lambda *a, **k: (real_encode(*a, **k) or b"")[:-50])
        bad = assoc.send_c_store(corrupt)
        assert bad.Status in (0xC000, 0xA900)
        monkeypatch.setattr(association, "encode", real_encode)
        assert assoc.send_c_store(corrupt).Status == 0x0000
        assert assoc.send_c_echo().Status == 0x0000
    finally:
        assoc.release()
    assert _count(archive) == 2


def test_find_association_is_answered_by_pynetdicom(scp: DimseServer, archive: Archive) -> None:
    ds = pydicom.dcmread(io.BytesIO(_factory.instance(rows=8, columns=8, patient_id="PID-FIND")))
    ae = AE(ae_title=SCU_AET)
    ae.add_requested_context(ds.SOPClassUID)
    assoc = ae.associate("127.0.0.1", scp.port, ae_title="MEDCLOUD")
    assert assoc.send_c_store(ds).Status == 0
    assoc.release()
    ae = AE(ae_title=SCU_AET)
    ae.add_requested_context(StudyRootQueryRetrieveInformationModelFind)
    assoc = ae.associate("127.0.0.1", scp.port, ae_title="MEDCLOUD")
    assert assoc.is_established
    query = Dataset()
    query.QueryRetrieveLevel = "STUDY"
    query.PatientID = "PID-FIND"
    query.StudyInstanceUID = ""
    try:
        found = [ident for status, ident in assoc.send_c_find(query, StudyRootQueryRetrieveInformationModelFind)
                 if status and status.Status == 0xFF00]
    finally:
        assoc.release()
    assert [f.StudyInstanceUID for f in found if f is not None] == [ds.StudyInstanceUID]
    assert (_lean(scp).served, _lean(scp).handed_off) == (1, 1)
    # the unknown caller is still refused on the pynetdicom path
    stranger = AE("STRANGER")
    stranger.add_requested_context(StudyRootQueryRetrieveInformationModelFind)
    assert stranger.associate("127.0.0.1", scp.port, ae_title="MEDCLOUD").is_rejected


# -- protocol errors -----------------------------------------------------------------------------

def test_disconnect_mid_data_set_stores_nothing_and_the_server_keeps_serving(scp: DimseServer, archive: Archive,
                                                                              tmp_path: Path) -> None:
    data = _factory.instance(rows=64, columns=64)
    ds = pydicom.dcmread(io.BytesIO(data))
    body = encode(ds, False, True)
    assert body is not None
    sock = _associate(scp.port)
    sock.sendall(_p_data(1, 0x03, _store_rq(ds)) + _p_data(1, 0x00, body[:4000]))
    sock.close()  # gone before the last fragment
    time.sleep(0.3)
    assert _count(archive) == 0
    (f,) = write(tmp_path / "in", [data])
    assert run("storescu", *_peer(scp), str(f)).returncode == 0
    assert _count(archive) == 1


def test_raw_store_in_fragments_gets_its_response(scp: DimseServer, archive: Archive) -> None:
    ds = pydicom.dcmread(io.BytesIO(_factory.instance(rows=32, columns=32)))
    body = encode(ds, False, True)
    assert body is not None
    cmd = _store_rq(ds)
    sock = _associate(scp.port)
    # command in two fragments, data set in three, two PDVs in one PDU
    sock.sendall(_p_data(1, 0x01, cmd[:20]) + _p_data(1, 0x03, cmd[20:]))
    both = _p_data(1, 0x00, body[:100])[6:] + _p_data(1, 0x00, body[100:1000])[6:]
    sock.sendall(struct.pack(">BxI", 0x04, len(both)) + both + _p_data(1, 0x02, body[1000:]))
    kind, rsp = _read_pdu(sock)
    assert kind == 0x04 and rsp[5] == 0x03  # one PDV: command, last fragment
    status = read_dataset(io.BytesIO(rsp[6:]), is_implicit_VR=True, is_little_endian=True)
    assert status.CommandGroupLength == len(rsp) - 6 - 12
    assert (status.CommandField, status.Status, status.MessageIDBeingRespondedTo) == (command.C_STORE_RSP, 0, 7)
    assert (status.AffectedSOPClassUID, status.AffectedSOPInstanceUID) == (ds.SOPClassUID, ds.SOPInstanceUID)
    sock.sendall(bytes([0x05, 0, 0, 0, 0, 4, 0, 0, 0, 0]))  # A-RELEASE-RQ
    assert _read_pdu(sock)[0] == 0x06
    sock.close()
    assert _count(archive) == 1


@pytest.mark.parametrize("junk", [b"GET / HTTP/1.1\r\nHost: x\r\n\r\n", b"\x01\x00\x00\x00\x00\x10" + b"\xff" * 16,
                                  b"\x04\x00\x00\x00\x00\x08\x00\x00\x00\x04\x01\x03xx"])
def test_garbage_gets_an_abort_and_the_listener_survives(scp: DimseServer, junk: bytes) -> None:
    sock = socket.create_connection(("127.0.0.1", scp.port), timeout=10)
    sock.sendall(junk)
    sock.shutdown(socket.SHUT_WR)
    kind, body = _read_pdu(sock)
    assert kind == 0x07 and body[2] == 0x02  # A-ABORT from the service provider
    sock.close()
    assert run("echoscu", *_peer(scp)).returncode == 0


def test_pdv_for_a_context_not_accepted_aborts(scp: DimseServer) -> None:
    sock = _associate(scp.port)
    sock.sendall(_p_data(3, 0x03, b"\x00" * 8))
    assert _read_pdu(sock)[0] == 0x07
    sock.close()


def test_idle_association_and_silent_connection_time_out(scp: DimseServer, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(acceptor, "NETWORK_TIMEOUT", 0.5)
    monkeypatch.setattr(acceptor, "ARTIM_SECONDS", 0.5)
    sock = _associate(scp.port)
    t0 = time.monotonic()
    assert _read_pdu(sock)[0] == 0x07  # A-ABORT after the network timeout
    assert _read_pdu(sock)[0] == 0  # then closed (ARTIM bounds the wait for our close)
    assert time.monotonic() - t0 < 5
    sock.close()
    silent = socket.create_connection(("127.0.0.1", scp.port), timeout=10)
    assert silent.recv(10) == b""  # no A-ASSOCIATE-RQ within ARTIM: closed
    silent.close()


# -- same bytes as pynetdicom --------------------------------------------------------------------

@pytest.fixture
def two_scps(services: Services, dimse_settings: Settings) -> Iterator[dict[bool, tuple[DimseServer, list[bytes]]]]:
    """Two SCPs on one archive (duplicates overwrite), lean and pure pynetdicom, each recording the
    Part-10 bytes it stores."""
    settings = dimse_settings.with_overrides(dicom_duplicates="overwrite")
    archive = build_archive(settings, services.db, services.fhir)
    out: dict[bool, tuple[DimseServer, list[bytes]]] = {}
    for fast in (True, False):
        server = DimseServer(archive, settings.with_overrides(dicom_fast_store=fast), host="127.0.0.1",
                             port=free_port())
        seen: list[bytes] = []
        real = server.c_store

        def record(data: bytes, calling: str, sop: str, real: StoreFunction = real,
                   seen: list[bytes] = seen) -> tuple[int, str | None]:
            seen.append(data)
            return real(data, calling, sop)

        server.c_store = record  # type: ignore[method-assign,assignment]
        server.start()
        out[fast] = (server, seen)
    yield out
    for server, _ in out.values():
        server.stop()


def test_part10_bytes_are_identical_on_both_paths(two_scps: dict[bool, tuple[DimseServer, list[bytes]]],
                                                  archive: Archive, tmp_path: Path) -> None:
    datas = [_factory.instance(rows=64, columns=64), jpeg_instance()]
    for fast, (server, _) in two_scps.items():
        files = write(tmp_path / str(fast), datas)
        r = run("storescu", "-xy", *_peer(server), *map(str, files))
        assert r.returncode == 0, r.stdout + r.stderr
    (lean_server, lean), (pyn_server, pyn) = two_scps[True], two_scps[False]
    assert lean_server.acceptor is not None and lean_server.acceptor.served == 1
    assert pyn_server.acceptor is None
    assert len(lean) == len(pyn) == 2
    assert lean == pyn  # preamble, File Meta and data set: byte for byte
    assert _count(archive) == 2
