"""Encryption at rest wired in: DICOM blobs and $export files are ciphertext on disk, clear to authorised clients.

Every test runs on SQLite and PostgreSQL (the key ring lives in the database).
"""

from __future__ import annotations

import base64
import io
import os
import stat
import sys
import time
from pathlib import Path

import orjson
import pydicom
import pytest

from medcloud.app import build_services
from medcloud.config import Settings
from medcloud.imaging.blobs import LocalBlobStore, SealedBlobStore
from medcloud.security.at_rest import AtRest
from medcloud.security.crypto import MAGIC, DecryptionError
from medcloud.security.keys import MasterKeyError

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "imaging"))
from _factory import instance  # noqa: E402
from _http import parts, stow  # noqa: E402

NAME = "Zebediah^Quuxley"
MULTI_DICOM = 'multipart/related; type="application/dicom"; transfer-syntax=*'


def _files(root: Path) -> list[Path]:
    return [p for p in root.rglob("*") if p.is_file()]


def test_master_key_file_is_created_0600_at_first_start(services, settings):
    key_file = settings.data_dir / "master.key"
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
    assert len(base64.b64decode(key_file.read_text().strip())) == 32
    assert len(services.fhir.at_rest.keys.versions()) == 1


def test_dicom_blob_on_disk_has_no_plaintext_and_reads_back(services, settings):
    data = instance(patient_name=NAME, rows=64, columns=64, frames=40)  # > one 64 KiB stream chunk
    result = services.imaging.store(data)
    assert result.stored, result.reason
    (blob,) = _files(settings.data_dir / "dicom")
    on_disk = blob.read_bytes()
    assert on_disk[:4] == MAGIC and b"Zebediah" not in on_disk and b"Quuxley" not in on_disk
    assert result.study_uid is not None
    ref = services.imaging.instances(result.study_uid)[0]
    assert services.imaging.blobs.read(ref.blob_key) == data
    chunks = list(services.imaging.blobs.iter_chunks(ref.blob_key, 10_000))
    assert len(chunks) > 1 and max(map(len, chunks)) <= 10_000 and b"".join(chunks) == data
    with services.imaging.blobs.open(ref.blob_key) as f:
        assert f.read(132)[128:] == b"DICM" and f.read() == data[132:]


def test_wado_retrieve_frames_and_rendered_are_served_in_clear(client, settings):
    data = instance(patient_name=NAME, rows=16, columns=16, frames=2)
    assert stow(client, [data]).status_code == 200
    ds = pydicom.dcmread(io.BytesIO(data))
    st, se, sop = ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID
    base = f"/dicomweb/studies/{st}/series/{se}/instances/{sop}"
    r = client.get(base, headers={"Accept": MULTI_DICOM})
    assert r.status_code == 200 and parts(r) == [data]
    assert client.get(f"{base}/frames/2", headers={"Accept": "multipart/related; type=application/octet-stream"}
                      ).status_code == 200
    assert client.get(f"{base}/rendered", headers={"Accept": "image/png"}).content[:4] == b"\x89PNG"
    assert client.get(f"{base}/metadata").json()[0]["00100010"]["Value"][0]["Alphabetic"] == NAME
    assert all(b"Zebediah" not in p.read_bytes() for p in _files(settings.data_dir / "dicom"))


def test_a_tampered_blob_is_a_clear_error_not_garbage(client, services, settings):
    data = instance(patient_name=NAME)
    assert stow(client, [data]).status_code == 200
    (blob,) = _files(settings.data_dir / "dicom")
    raw = bytearray(blob.read_bytes())
    raw[len(raw) // 2] ^= 0x01
    blob.write_bytes(bytes(raw))
    ref = services.imaging.instances(str(pydicom.dcmread(io.BytesIO(data)).StudyInstanceUID))[0]
    with pytest.raises(DecryptionError, match="failed authentication"):
        services.imaging.blobs.read(ref.blob_key)
    r = client.get(f"/dicomweb/studies/{ref.blob_key.split('/')[0]}/series/{ref.blob_key.split('/')[1]}/instances/"
                   f"{ref.blob_key.split('/')[2][:-4]}/rendered", headers={"Accept": "image/png"})
    assert r.status_code == 500 and b"PNG" not in r.content
    raw[:4] = b"MCE1"
    raw[5] ^= 0xFF  # the key id: no such KEK
    blob.write_bytes(bytes(raw))
    with pytest.raises(DecryptionError, match="unknown master key"):
        services.imaging.blobs.read(ref.blob_key)


def test_plaintext_blobs_from_before_encryption_stay_readable(services, settings):
    store = services.imaging.blobs
    assert isinstance(store, SealedBlobStore)
    data = instance(patient_name=NAME)
    LocalBlobStore(settings.data_dir / "dicom").put("1.2/3.4/5.6.dcm", data)  # as an older medcloud wrote it
    assert store.read("1.2/3.4/5.6.dcm") == data
    assert b"".join(store.iter_chunks("1.2/3.4/5.6.dcm", 100)) == data


def test_encryption_switched_off_writes_plaintext_and_still_reads_sealed_blobs(services, settings):
    sealed = services.imaging.blobs
    sealed.put("1.2/3.4/5.7.dcm", b"sealed " + NAME.encode())
    off = SealedBlobStore(LocalBlobStore(settings.data_dir / "dicom"), AtRest(services.fhir.at_rest.keys, encrypt=False))
    off.put("1.2/3.4/5.8.dcm", b"plain " + NAME.encode())
    assert (settings.data_dir / "dicom/1.2/3.4/5.8.dcm").read_bytes() == b"plain " + NAME.encode()
    assert off.read("1.2/3.4/5.7.dcm") == b"sealed " + NAME.encode()


def test_missing_or_wrong_master_key_is_a_clear_startup_error(services, settings, monkeypatch):
    key_file = settings.data_dir / "master.key"
    key_file.rename(settings.data_dir / "elsewhere.key")
    with pytest.raises(MasterKeyError, match="no master key"):
        build_services(settings)
    assert not key_file.exists()  # not silently replaced by a new key that opens nothing
    monkeypatch.setenv("MEDCLOUD_MASTER_KEY", base64.b64encode(os.urandom(32)).decode())
    with pytest.raises(MasterKeyError, match="not the one that wrapped"):
        build_services(settings)
    monkeypatch.setenv("MEDCLOUD_MASTER_KEY", "not base64 at all!")
    with pytest.raises(MasterKeyError, match="MEDCLOUD_MASTER_KEY"):
        build_services(settings)
    monkeypatch.setenv("MEDCLOUD_MASTER_KEY", (settings.data_dir / "elsewhere.key").read_text().strip())
    build_services(settings).close()  # the right key from the environment opens it


def test_serve_refuses_to_start_with_a_wrong_key(services, settings, monkeypatch):
    from typer.testing import CliRunner

    from medcloud.cli import app

    monkeypatch.setenv("MEDCLOUD_MASTER_KEY", base64.b64encode(os.urandom(32)).decode())
    r = CliRunner().invoke(app, ["serve", "--data-dir", str(settings.data_dir), "--db", settings.db_url, "--no-auth"])
    assert r.exit_code == 1
    assert "not the one that wrapped" in r.output.replace("\n", "")


# ---------------------------------------------------------------- $export files

ASYNC = {"Prefer": "respond-async", "Accept": "application/fhir+json"}


def _export(client, query: str = "") -> tuple[str, dict]:
    r = client.get(f"/fhir/$export{query}", headers=ASYNC)
    assert r.status_code == 202, r.text
    status = r.headers["content-location"].replace("http://testserver", "")
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        r = client.get(status)
        if r.status_code != 202:
            assert r.status_code == 200, r.text
            return status.split("_jobId=")[1], r.json()
        time.sleep(0.05)
    raise AssertionError("export did not finish")


def test_export_files_are_encrypted_on_disk_and_downloaded_in_clear(client, settings):
    for i in range(30):
        r = client.put(f"/fhir/Patient/p{i}", json={"resourceType": "Patient", "id": f"p{i}",
                                                   "name": [{"family": "Quuxley", "given": [f"Zebediah{i}"]}]})
        assert r.status_code == 201
    job, manifest = _export(client, "?_type=Patient")
    (item,) = manifest["output"]
    (path,) = _files(settings.data_dir / "exports" / job)
    assert path.read_bytes()[:4] == MAGIC and b"Quuxley" not in path.read_bytes()
    url = item["url"].replace("http://testserver", "")
    r = client.get(url, headers={"Accept": "application/fhir+ndjson"})
    assert r.status_code == 200
    assert int(r.headers["content-length"]) == len(r.content)
    lines = [orjson.loads(x) for x in r.content.splitlines()]
    assert sorted(x["id"] for x in lines) == sorted(f"p{i}" for i in range(30))
    assert client.head(url).headers["content-length"] == str(len(r.content))
    # a range request is answered with the whole file (allowed), never with a wrong slice
    ranged = client.get(url, headers={"Range": "bytes=0-9"})
    assert ranged.status_code == 200 and ranged.content == r.content


def test_a_tampered_export_file_is_an_error_response(client, settings):
    assert client.put("/fhir/Patient/x", json={"resourceType": "Patient", "id": "x"}).status_code == 201
    job, manifest = _export(client, "?_type=Patient")
    (path,) = _files(settings.data_dir / "exports" / job)
    raw = bytearray(path.read_bytes())
    raw[80] ^= 0x01  # inside the first record
    path.write_bytes(bytes(raw))
    r = client.get(manifest["output"][0]["url"].replace("http://testserver", ""))
    assert r.status_code == 500 and "authentication" in r.text


def test_export_by_the_cli_into_a_user_folder_stays_plaintext(services, settings, tmp_path):
    from typer.testing import CliRunner

    from medcloud.cli import app

    out = tmp_path / "out"
    services.close()
    svc = build_services(settings)
    try:
        from medcloud.fhir.exchange import FhirRequest
        from medcloud.fhir.router import dispatch

        with svc.db.write() as conn:
            dispatch(svc.fhir, conn, FhirRequest("PUT", "Patient/cli", body={"resourceType": "Patient", "id": "cli"},
                                                 in_bundle=True))
    finally:
        svc.close()
    r = CliRunner().invoke(app, ["export", "--out", str(out), "--data-dir", str(settings.data_dir),
                                 "--db", settings.db_url])
    assert r.exit_code == 0, r.output
    assert orjson.loads((out / "Patient.001.ndjson").read_bytes())["id"] == "cli"


def test_settings_default_to_encryption_on():
    assert Settings().encrypt_at_rest is True


def test_an_encrypted_export_killed_mid_batch_resumes_without_duplicates(services, tmp_path, monkeypatch):
    from medcloud.fhir.exchange import SYSTEM, FhirRequest
    from medcloud.fhir.operations import _export_run
    from medcloud.fhir.router import dispatch

    ctx = services.fhir
    with services.db.write() as conn:
        for i in range(12):
            dispatch(ctx, conn, FhirRequest("PUT", f"Patient/k{i}", body={"resourceType": "Patient", "id": f"k{i}"},
                                            in_bundle=True))
    monkeypatch.setattr(_export_run, "BATCH", 2)
    request = {"level": "system", "types": ["Patient"], "since": None, "patients": None,
               "principal": _export_run.principal_to_json(SYSTEM), "warnings": []}
    saved: list[dict] = []

    class Killed(Exception):
        pass

    real_seal = _export_run._SealedSink.commit

    def dying_commit(self):
        if len(saved) == 3:  # the batch's records are written, its seal never happens
            raise Killed
        return real_seal(self)

    monkeypatch.setattr(_export_run._SealedSink, "commit", dying_commit)
    out = tmp_path / "out"
    with pytest.raises(Killed):
        _export_run.run_export(ctx, request, out, None, lambda s: saved.append(orjson.loads(orjson.dumps(s))),
                               at_rest=ctx.at_rest)
    monkeypatch.setattr(_export_run._SealedSink, "commit", real_seal)
    result = _export_run.run_export(ctx, request, out, saved[-1], lambda s: None, at_rest=ctx.at_rest)
    (f,) = result["output"]
    plain = b"".join(ctx.at_rest.iter_file(out / f["name"]))
    assert f["size"] == len(plain) and f["count"] == 12
    assert sorted(orjson.loads(x)["id"] for x in plain.splitlines()) == sorted(f"k{i}" for i in range(12))


class _Forward(io.RawIOBase):
    """A network-like body: readable once, front to back, not seekable."""

    def __init__(self, data: bytes):
        self._f = io.BytesIO(data)

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return False

    def readinto(self, b) -> int:  # type: ignore[no-untyped-def]
        chunk = self._f.read(min(len(b), 1000))  # short reads, as sockets give
        b[:len(chunk)] = chunk
        return len(chunk)


def test_non_seekable_bodies_are_read_in_clear(services, tmp_path):
    at_rest = services.fhir.at_rest
    data = os.urandom(200_000)
    sealed = at_rest.seal_bytes(data)
    assert b"".join(at_rest.iter_plain(_Forward(sealed), 5000)) == data  # type: ignore[arg-type]
    assert b"".join(at_rest.iter_plain(_Forward(b"plain DICOM" * 1000), 77)) == b"plain DICOM" * 1000  # type: ignore[arg-type]
    w = at_rest.new_records(tmp_path / "r")
    w.write(b"line\n" * 1000)
    w.seal()
    w.close()
    assert b"".join(at_rest.iter_plain(_Forward((tmp_path / "r").read_bytes()))) == b"line\n" * 1000  # type: ignore[arg-type]


def test_with_encryption_off_export_files_are_plaintext_and_still_served(services, tmp_path):
    from medcloud.fhir.exchange import SYSTEM, FhirRequest
    from medcloud.fhir.operations import _export_run
    from medcloud.fhir.router import dispatch

    ctx = services.fhir
    with services.db.write() as conn:
        dispatch(ctx, conn, FhirRequest("PUT", "Patient/off", body={"resourceType": "Patient", "id": "off"},
                                        in_bundle=True))
    request = {"level": "system", "types": ["Patient"], "since": None, "patients": None,
               "principal": _export_run.principal_to_json(SYSTEM), "warnings": []}
    off = AtRest(ctx.at_rest.keys, encrypt=False)
    result = _export_run.run_export(ctx, request, tmp_path, None, lambda s: None, at_rest=off)
    (f,) = result["output"]
    raw = (tmp_path / f["name"]).read_bytes()
    assert orjson.loads(raw)["id"] == "off" and f["size"] == len(raw)
    assert b"".join(ctx.at_rest.iter_file(tmp_path / f["name"])) == raw


def test_an_instance_received_by_dimse_c_store_is_encrypted_on_disk(services, settings):
    import socket

    from pynetdicom import AE
    from pynetdicom.sop_class import CTImageStorage

    scp = pytest.importorskip("medcloud.imaging.dimse.scp")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = scp.DimseServer(services.imaging, settings.with_overrides(dicom_allow_unknown=True),
                             host="127.0.0.1", port=port)
    server.start()
    try:
        data = instance(patient_name=NAME)
        ds = pydicom.dcmread(io.BytesIO(data))
        ae = AE(ae_title="TESTSCU")
        ae.add_requested_context(CTImageStorage, ds.file_meta.TransferSyntaxUID)
        assoc = ae.associate("127.0.0.1", port, ae_title="MEDCLOUD")
        assert assoc.is_established
        status = assoc.send_c_store(ds)
        assoc.release()
        assert status.Status == 0x0000
    finally:
        server.stop()
    (blob,) = _files(settings.data_dir / "dicom")
    assert blob.read_bytes()[:4] == MAGIC and b"Zebediah" not in blob.read_bytes()
    ref = services.imaging.instances(str(ds.StudyInstanceUID))[0]
    assert pydicom.dcmread(io.BytesIO(services.imaging.blobs.read(ref.blob_key))).PatientName == NAME
