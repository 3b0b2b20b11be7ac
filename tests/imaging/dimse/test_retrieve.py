"""C-MOVE and C-GET from our SCP (dcmtk movescu/getscu, storescp as the destination) and our SCU."""

from __future__ import annotations

import io
from pathlib import Path

import _factory
import numpy as np
import pydicom
import pytest
from _peers import DEST_AET, SCU_AET, free_port, jpeg_instance, read_dir, run, write
from pydicom.uid import generate_uid
from typer.testing import CliRunner

from medcloud.cli import app
from medcloud.config import RemoteAE
from medcloud.imaging.archive import Archive
from medcloud.imaging.dimse import scu
from medcloud.imaging.dimse.scp import DimseServer

pytestmark = pytest.mark.usefixtures("dcmtk")


def _peer(scp: DimseServer) -> list[str]:
    return ["-aet", SCU_AET, "-aec", "MEDCLOUD", "127.0.0.1", str(scp.port)]


def _study(archive: Archive, n: int = 3, *, jpeg: bool = False) -> tuple[str, list[bytes]]:
    study, first, rest = generate_uid(), generate_uid(), generate_uid()
    items = [_factory.instance(study=study, series=first if i == 0 else rest, instance_number=i + 1,
                               rows=16, columns=16, patient_id="PID-M") for i in range(n)]
    if jpeg:
        items.append(jpeg_instance(study=study, patient_id="PID-M"))
    assert all(r.stored for r in archive.store_many(items))
    return study, items


def test_movescu_study_to_storescp_decompresses_for_it(scp: DimseServer, archive: Archive,
                                                      storescp: Path) -> None:
    study, items = _study(archive, jpeg=True)
    r = run("movescu", "-S", "-v", "-aem", DEST_AET, *_peer(scp), "-k", "QueryRetrieveLevel=STUDY",
            "-k", f"StudyInstanceUID={study}")
    assert r.returncode == 0, r.stdout + r.stderr
    got = {ds.SOPInstanceUID: ds for ds in read_dir(storescp)}
    sent = {pydicom.dcmread(io.BytesIO(d)).SOPInstanceUID: pydicom.dcmread(io.BytesIO(d)) for d in items}
    assert set(got) == set(sent)
    # storescp accepts only uncompressed syntaxes: the JPEG instance arrives decoded, same image size
    jpeg_uid = next(u for u, ds in sent.items() if ds.file_meta.TransferSyntaxUID.is_compressed)
    assert not got[jpeg_uid].file_meta.TransferSyntaxUID.is_compressed
    assert got[jpeg_uid].pixel_array.shape == (64, 64)
    ct_uid = next(u for u in sent if u != jpeg_uid)
    assert np.array_equal(got[ct_uid].pixel_array, sent[ct_uid].pixel_array)


def test_move_series_image_levels_and_unknown_destination(scp: DimseServer, archive: Archive,
                                                          storescp: Path) -> None:
    study, items = _study(archive, 3)
    dss = [pydicom.dcmread(io.BytesIO(d)) for d in items]
    one = dss[1]
    r = run("movescu", "-P", "-aem", DEST_AET, *_peer(scp), "-k", "QueryRetrieveLevel=IMAGE",
            "-k", "PatientID=PID-M", "-k", f"StudyInstanceUID={study}",
            "-k", f"SeriesInstanceUID={one.SeriesInstanceUID}", "-k", f"SOPInstanceUID={one.SOPInstanceUID}")
    assert r.returncode == 0, r.stdout + r.stderr
    assert [ds.SOPInstanceUID for ds in read_dir(storescp)] == [one.SOPInstanceUID]
    # our SCU: a series (2 instances share it) and the sub-operation counts
    peer = RemoteAE(title="MEDCLOUD", host="127.0.0.1", port=scp.port)
    res = scu.move(SCU_AET, peer, DEST_AET, "study",
                   scu.identifier("SERIES", [f"StudyInstanceUID={study}",
                                             f"SeriesInstanceUID={dss[2].SeriesInstanceUID}"]))
    assert (res.status, res.completed, res.failed) == (0, 2, 0)
    unknown = scu.move(SCU_AET, peer, "NOWHERE", "study",
                       scu.identifier("STUDY", [f"StudyInstanceUID={study}"]))
    assert unknown.status == 0xA801
    cli = CliRunner().invoke(app, ["dicom", "move", "--host", "127.0.0.1", "--port", str(scp.port),
                                   "--aet", "MEDCLOUD", "--calling-aet", SCU_AET, "--dest", "NOWHERE",
                                   "-k", f"StudyInstanceUID={study}"])
    assert cli.exit_code == 1 and "0xA801" in cli.output
    missing_key = scu.move(SCU_AET, peer, DEST_AET, "study", scu.identifier("SERIES", []))
    assert missing_key.status == 0xA900


def test_getscu_study_and_image(scp: DimseServer, archive: Archive, tmp_path: Path) -> None:
    study, items = _study(archive, 2, jpeg=True)
    out = tmp_path / "get"
    out.mkdir()
    r = run("getscu", "-S", "-od", str(out), *_peer(scp), "-k", "QueryRetrieveLevel=STUDY",
            "-k", f"StudyInstanceUID={study}")
    assert r.returncode == 0, r.stdout + r.stderr
    got = {ds.SOPInstanceUID: ds for ds in read_dir(out)}
    sent = [pydicom.dcmread(io.BytesIO(d)) for d in items]
    assert set(got) == {ds.SOPInstanceUID for ds in sent}
    for ds in sent:
        assert np.array_equal(got[ds.SOPInstanceUID].pixel_array, ds.pixel_array) or \
            ds.file_meta.TransferSyntaxUID.is_compressed


def test_our_scu_send_to_storescp_and_errors(archive: Archive, storescp: Path, dest_port: int,
                                             scp: DimseServer, tmp_path: Path) -> None:
    files = write(tmp_path / "out", [_factory.instance(rows=16, columns=16) for _ in range(3)])
    (tmp_path / "out" / "notes.txt").write_text("not dicom")
    dest = RemoteAE(title=DEST_AET, host="127.0.0.1", port=dest_port)
    results = scu.send(SCU_AET, dest, scu.dicom_files([tmp_path / "out"]))
    assert [r.ok for r in results] == [True, True, True, False]
    assert "not a readable DICOM" in results[3].message
    assert {ds.SOPInstanceUID for ds in read_dir(storescp)} == {r.sop_uid for r in results[:3]}
    assert scu.echo(SCU_AET, dest) == 0
    # CLI: a non-DICOM file makes the exit code 1, with a per-file summary
    r = CliRunner().invoke(app, ["dicom", "send", "--host", "127.0.0.1", "--port", str(dest_port), "--aet",
                                 DEST_AET, "--calling-aet", SCU_AET, str(tmp_path / "out")])
    assert r.exit_code == 1 and "3 stored" in r.stdout and "1 failed" in r.stdout
    # connection refused -> 3; association rejected (unknown calling AE at our SCP) -> 4
    closed = free_port()
    r = CliRunner().invoke(app, ["dicom", "echo", "--host", "127.0.0.1", "--port", str(closed)])
    assert r.exit_code == 3 and "cannot connect" in r.output
    r = CliRunner().invoke(app, ["dicom", "send", "--host", "127.0.0.1", "--port", str(scp.port), "--aet", "MEDCLOUD",
                                 "--calling-aet", "INTRUDER", str(files[0])])
    assert r.exit_code == 4 and "calling AE title INTRUDER not recognised" in r.output
    with pytest.raises(scu.DimseError):
        scu.echo("INTRUDER", RemoteAE(title="MEDCLOUD", host="127.0.0.1", port=scp.port))
