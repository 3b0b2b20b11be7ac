"""C-ECHO, association control and C-STORE against our SCP, with dcmtk echoscu/storescu as peers."""

from __future__ import annotations

import io
from pathlib import Path

import _factory
import numpy as np
import pydicom
import pytest
from _peers import SCU_AET, free_port, jpeg_instance, run, write
from pydicom.dataset import Dataset
from pynetdicom import AE, association, build_context

from medcloud.imaging import qido
from medcloud.imaging.archive import Archive
from medcloud.imaging.blobs import instance_key
from medcloud.imaging.dimse.scp import DimseServer

pytestmark = pytest.mark.usefixtures("dcmtk")


def _peer(scp: DimseServer) -> list[str]:
    return ["-aet", SCU_AET, "-aec", "MEDCLOUD", "127.0.0.1", str(scp.port)]


def _count(archive: Archive) -> int:
    rows, _ = qido.search(archive.db, qido.QidoQuery(level="instance"))
    return len(rows)


def test_echo_known_caller_and_unknown_caller_rejected(scp: DimseServer, archive: Archive) -> None:
    ok = run("echoscu", *_peer(scp))
    assert ok.returncode == 0, ok.stderr
    bad = run("echoscu", "-aet", "STRANGER", "-aec", "MEDCLOUD", "127.0.0.1", str(scp.port))
    assert bad.returncode != 0
    assert "Association Rejected" in bad.stdout + bad.stderr
    assert "Calling AE Title Not Recognized" in bad.stdout + bad.stderr


def test_no_remotes_configured_refuses_everyone(archive: Archive, settings) -> None:  # type: ignore[no-untyped-def]
    server = DimseServer(archive, settings, host="127.0.0.1", port=free_port())
    server.start()
    try:
        bad = run("echoscu", "-aet", SCU_AET, "127.0.0.1", str(server.port))
        assert bad.returncode != 0 and "Association Rejected" in bad.stdout + bad.stderr
    finally:
        server.stop()
    allow = DimseServer(archive, settings.with_overrides(dicom_allow_unknown=True), host="127.0.0.1",
                        port=free_port())
    allow.start()
    try:
        assert run("echoscu", "-aet", "ANYONE", "127.0.0.1", str(allow.port)).returncode == 0
    finally:
        allow.stop()


def test_storescu_ct_multiframe_jpeg_then_qido(scp: DimseServer, archive: Archive, tmp_path: Path) -> None:
    study = pydicom.uid.generate_uid()
    series = pydicom.uid.generate_uid()
    ct = [_factory.instance(study=study, series=series, instance_number=i + 1, rows=64, columns=64,
                            patient_id="PID-S") for i in range(3)]
    multi = _factory.instance(study=study, series=pydicom.uid.generate_uid(), rows=32, columns=32, frames=5,
                              modality="MR", series_number=2, patient_id="PID-S")
    jpeg = jpeg_instance(study=study, patient_id="PID-S")
    files = write(tmp_path / "in", [*ct, multi, jpeg])
    r = run("storescu", "-xy", "-R", *_peer(scp), *map(str, files))  # -xy: offer JPEG Baseline
    assert r.returncode == 0, r.stdout + r.stderr
    refs = archive.instances(study)
    assert len(refs) == 5
    by_sop = {x.sop_uid: x for x in refs}
    jpeg_ds = pydicom.dcmread(io.BytesIO(jpeg))
    assert by_sop[jpeg_ds.SOPInstanceUID].transfer_syntax_uid == pydicom.uid.JPEGBaseline8Bit
    multi_ds = pydicom.dcmread(io.BytesIO(multi))
    assert by_sop[multi_ds.SOPInstanceUID].number_of_frames == 5
    # the stored data set is the one sent: same pixels, same UIDs, a File Meta naming the syntax used
    stored = pydicom.dcmread(io.BytesIO(archive.blobs.read(by_sop[multi_ds.SOPInstanceUID].blob_key)))
    assert np.array_equal(stored.pixel_array, multi_ds.pixel_array)
    assert stored.file_meta.MediaStorageSOPInstanceUID == multi_ds.SOPInstanceUID
    stored_jpeg = pydicom.dcmread(io.BytesIO(archive.blobs.read(by_sop[jpeg_ds.SOPInstanceUID].blob_key)))
    assert stored_jpeg.PixelData == jpeg_ds.PixelData  # compressed bytes as received, not re-encoded
    rows, _ = qido.search(archive.db, qido.parse_query("study", [("PatientID", "PID-S")]))
    assert len(rows) == 1 and rows[0]["00201208"]["Value"] == [5]
    assert sorted(rows[0]["00080061"]["Value"]) == ["CT", "MR", "OT"]


def test_storescu_implicit_vr_is_stored_as_received(scp: DimseServer, archive: Archive, tmp_path: Path) -> None:
    data = _factory.instance(rows=16, columns=16)
    (f,) = write(tmp_path / "in", [data])
    r = run("storescu", "-xi", *_peer(scp), str(f))  # propose Implicit VR Little Endian only
    assert r.returncode == 0, r.stdout + r.stderr
    ds = pydicom.dcmread(io.BytesIO(data))
    (ref,) = archive.instances(ds.StudyInstanceUID)
    assert ref.transfer_syntax_uid == pydicom.uid.ImplicitVRLittleEndian
    stored = pydicom.dcmread(io.BytesIO(archive.blobs.read(ref.blob_key)))
    assert np.array_equal(stored.pixel_array, ds.pixel_array)


def _store_raw(scp: DimseServer, ds: Dataset) -> Dataset:
    ae = AE(ae_title=SCU_AET)
    assoc = ae.associate("127.0.0.1", scp.port, contexts=[build_context(ds.SOPClassUID)], ae_title="MEDCLOUD")
    assert assoc.is_established
    try:
        return assoc.send_c_store(ds)
    finally:
        assoc.release()


def test_invalid_dataset_fails_and_stores_nothing(scp: DimseServer, archive: Archive) -> None:
    ds = pydicom.dcmread(io.BytesIO(_factory.instance(rows=8, columns=8)))
    del ds.StudyInstanceUID
    rsp = _store_raw(scp, ds)
    assert rsp.Status == 0xA900
    assert "StudyInstanceUID" in str(rsp.get("ErrorComment", ""))
    assert _count(archive) == 0


def test_corrupt_bytes_on_the_wire_fail_with_c000(scp: DimseServer, archive: Archive,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    ds = pydicom.dcmread(io.BytesIO(_factory.instance(rows=8, columns=8)))
    real_encode = association.encode

    def truncated(*args, **kwargs):  # type: ignore[no-untyped-def]
        data = real_encode(*args, **kwargs)
        return data[: len(data) - 50]  # cut inside Pixel Data: an element shorter than its length

    monkeypatch.setattr(association, "encode", truncated)
    rsp = _store_raw(scp, ds)
    assert rsp.Status in (0xC000, 0xA900)
    assert _count(archive) == 0
    assert not archive.blobs.exists(instance_key(ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID))
    monkeypatch.setattr(association, "encode", real_encode)
    assert _store_raw(scp, ds).Status == 0x0000  # the server keeps serving; the intact one is stored
    assert _count(archive) == 1


def test_duplicate_is_refused_per_policy(scp: DimseServer, archive: Archive, tmp_path: Path) -> None:
    (f,) = write(tmp_path / "in", [_factory.instance(rows=8, columns=8)])
    assert run("storescu", *_peer(scp), str(f)).returncode == 0
    again = run("storescu", "-v", *_peer(scp), str(f))
    assert again.returncode != 0
    assert "0x111" in again.stdout + again.stderr  # Duplicate SOP Instance (PS3.7 C.4)
    assert _count(archive) == 1
