"""DICOM instances in S3 (``blob_store = "s3://..."``) against a real S3 protocol server (moto, loopback).

What a user relies on: STOW/QIDO/WADO/DELETE work unchanged with objects in a bucket, sealed when
encryption at rest is on; a missing bucket stops ``serve`` with one clear line; an object store
that goes away mid-run gives a DICOM failure status / HTTP 503 and never leaves an index row
without its object; key rotation re-wraps the objects in the bucket.
"""

from __future__ import annotations

import socket
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from _factory import instance
from _http import parts, stow, value
from pydicom.uid import generate_uid
from starlette.testclient import TestClient
from typer.testing import CliRunner

from medcloud.app import Services, build_services
from medcloud.config import Settings
from medcloud.errors import Busy
from medcloud.imaging.blobs import SealedBlobStore, blob_store_problems, raw_blob_store
from medcloud.imaging.dicomweb import build_archive
from medcloud.imaging.s3 import DELETE_BATCH, S3BlobStore, StorageUnavailable, make_client, parse_url
from medcloud.security.crypto import MAGIC

pytest.importorskip("moto")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _s3_settings(settings: Settings, endpoint: str, bucket: str, *, encrypt: bool) -> Settings:
    return settings.with_overrides(blob_store=f"s3://{bucket}/medcloud/dicom", s3_endpoint_url=endpoint,
                                   encrypt_at_rest=encrypt)


@pytest.fixture
def s3_store(s3_bucket: str, s3_endpoint: str) -> S3BlobStore:
    return S3BlobStore(s3_bucket, "medcloud/dicom", endpoint_url=s3_endpoint)


# -- the store itself -----------------------------------------------------------------------------------


@pytest.mark.parametrize(("url", "parsed"), [("s3://b", ("b", "")), ("s3://b/", ("b", "")),
                                             ("s3://b/x/y/", ("b", "x/y"))])
def test_s3_urls_name_a_bucket_and_a_prefix(url: str, parsed: tuple[str, str]) -> None:
    assert parse_url(url) == parsed


@pytest.mark.parametrize("bad", ["s3://", "s3:///prefix", "/var/dicom", "minio://b"])
def test_a_blob_store_setting_that_is_neither_local_nor_s3_is_refused(bad: str, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="blob_store"):
        Settings(data_dir=tmp_path, blob_store=bad)


def test_objects_live_under_the_prefix_and_stores_with_other_prefixes_do_not_see_them(
        s3_store: S3BlobStore, s3_bucket: str, s3_endpoint: str) -> None:
    other = S3BlobStore(s3_bucket, "site-b", endpoint_url=s3_endpoint)
    s3_store.put("1/2/3.dcm", b"a")
    other.put("1/2/3.dcm", b"b")
    raw = make_client(endpoint_url=s3_endpoint).list_objects_v2(Bucket=s3_bucket)
    assert sorted(o["Key"] for o in raw["Contents"]) == ["medcloud/dicom/1/2/3.dcm", "site-b/1/2/3.dcm"]
    other.delete_prefix("1")
    assert s3_store.read("1/2/3.dcm") == b"a" and list(other.keys()) == []


def test_delete_prefix_pages_through_more_than_one_delete_batch(s3_store: S3BlobStore) -> None:
    from concurrent.futures import ThreadPoolExecutor

    keys = [f"1.2/3.{i % 3}/4.{i}.dcm" for i in range(DELETE_BATCH + 150)]
    with ThreadPoolExecutor(8) as pool:  # one client shared by threads (the server's thread pool does this)
        list(pool.map(lambda k: s3_store.put(k, b"x"), keys))
    s3_store.put("1.20/3/4.dcm", b"keep")
    assert sum(1 for _ in s3_store.keys("1.2/")) == len(keys)
    s3_store.delete_prefix("1.2")
    assert list(s3_store.keys()) == ["1.20/3/4.dcm"]


def test_a_large_object_streams_in_chunks(s3_store: S3BlobStore) -> None:
    data = bytes(range(256)) * (12 * 1024 * 1024 // 256)  # 12 MiB
    s3_store.put("1/2/3.dcm", data)
    sizes = [len(c) for c in s3_store.iter_chunks("1/2/3.dcm", 1024 * 1024)]
    assert sizes == [1024 * 1024] * 12
    with s3_store.open("1/2/3.dcm") as f:  # a partial read and close: no need to fetch the rest
        assert f.read(5) == data[:5]


def test_iter_chunks_asks_s3_when_called_not_when_first_iterated(s3_store: S3BlobStore) -> None:
    # WADO-RS relies on this: the 200 is sent only after the first object answered.
    with pytest.raises(FileNotFoundError):
        s3_store.iter_chunks("9/9/9.dcm")


def test_an_unreachable_endpoint_is_storage_unavailable_within_seconds(s3_bucket: str) -> None:
    import time

    dead = S3BlobStore(s3_bucket, client=make_client(endpoint_url=f"http://127.0.0.1:{_free_port()}",
                                                     connect_timeout=0.5, read_timeout=1, max_attempts=2))
    t0 = time.monotonic()
    for call in (lambda: dead.put("1/2/3.dcm", b"x"), lambda: dead.read("1/2/3.dcm"),
                 lambda: dead.exists("1/2/3.dcm"), lambda: dead.delete_prefix("1"), dead.check):
        with pytest.raises(StorageUnavailable, match="unreachable") as e:
            call()
        assert isinstance(e.value, Busy)  # -> 503 / Out of Resources at the edges
    assert time.monotonic() - t0 < 15


def test_a_missing_bucket_is_named_in_the_error(s3_endpoint: str) -> None:
    store = S3BlobStore("no-such-bucket-here", endpoint_url=s3_endpoint)
    with pytest.raises(StorageUnavailable, match="bucket 'no-such-bucket-here' does not exist"):
        store.check()
    with pytest.raises(StorageUnavailable, match="does not exist"):
        store.put("1/2/3.dcm", b"x")


def test_rewrite_head_replaces_only_the_head_and_never_clobbers_a_newer_object(s3_store: S3BlobStore) -> None:
    s3_store.put("1/2/3.dcm", b"HEAD" + b"payload" * 1000)
    assert s3_store.read_head("1/2/3.dcm", 4) == b"HEAD"
    assert s3_store.rewrite_head("1/2/3.dcm", 4, lambda h: None) is False
    assert s3_store.rewrite_head("1/2/3.dcm", 4, lambda h: h.lower()) is True
    assert s3_store.read("1/2/3.dcm") == b"head" + b"payload" * 1000

    def replaced_meanwhile(head: bytes) -> bytes:
        s3_store.put("1/2/3.dcm", b"NEWER OBJECT")  # a STOW of the same SOP Instance during the copy
        return b"XXXX"

    assert s3_store.rewrite_head("1/2/3.dcm", 4, replaced_meanwhile) is False
    assert s3_store.read("1/2/3.dcm") == b"NEWER OBJECT"


# -- startup ------------------------------------------------------------------------------------------------


def test_serve_refuses_to_start_when_the_bucket_is_missing(tmp_path: Path, s3_endpoint: str,
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    from medcloud.cli import app

    monkeypatch.setenv("MEDCLOUD_BLOB_STORE", "s3://missing-bucket/dicom")
    monkeypatch.setenv("MEDCLOUD_S3_ENDPOINT_URL", s3_endpoint)
    r = CliRunner().invoke(app, ["serve", "--data-dir", str(tmp_path), "--port", str(_free_port()),
                                 "--dicom-port", "0"])
    assert r.exit_code == 2, r.output
    assert "cannot start" in r.output and "'missing-bucket' does not exist" in r.output
    assert "Traceback" not in r.output


def test_startup_check_reports_an_unreachable_endpoint_and_passes_a_good_bucket(
        tmp_path: Path, s3_endpoint: str, s3_bucket: str) -> None:
    dead = Settings(data_dir=tmp_path, blob_store=f"s3://{s3_bucket}", s3_endpoint_url=f"http://127.0.0.1:{_free_port()}")
    [problem] = blob_store_problems(dead)
    assert problem.startswith(f"blob_store s3://{s3_bucket}: object storage unreachable")
    good = Settings(data_dir=tmp_path, blob_store=f"s3://{s3_bucket}/x", s3_endpoint_url=s3_endpoint)
    assert blob_store_problems(good) == []
    assert blob_store_problems(Settings(data_dir=tmp_path)) == []


# -- through the DICOMweb edge ------------------------------------------------------------------------------


@pytest.fixture(params=[True, False], ids=["sealed", "plain"])
def s3_services(request: pytest.FixtureRequest, settings: Settings, s3_endpoint: str,
                s3_bucket: str) -> Iterator[Services]:
    svc = build_services(_s3_settings(settings, s3_endpoint, s3_bucket, encrypt=request.param))
    yield svc
    svc.close()


def _client(services: Services) -> TestClient:
    from medcloud.app import create_app

    return TestClient(create_app(services.settings, services), base_url="http://testserver")


def test_stow_qido_wado_delete_keep_instances_in_the_bucket(s3_services: Services, s3_endpoint: str,
                                                           s3_bucket: str) -> None:
    settings = s3_services.settings
    raw = raw_blob_store(settings)
    assert isinstance(raw, S3BlobStore) and isinstance(s3_services.imaging.blobs, SealedBlobStore)  # type: ignore[union-attr]
    st = generate_uid()
    data = [instance(study=st), instance(study=st)]
    with _client(s3_services) as c:
        r = stow(c, data)
        assert r.status_code == 200, r.text
        keys = sorted(raw.keys())
        assert len(keys) == 2 and all(k.startswith(f"{st}/") for k in keys)
        assert not (settings.data_dir / "dicom").exists()  # nothing on the local disk
        heads = {raw.read(k)[:4] for k in keys}
        assert heads == ({MAGIC} if settings.encrypt_at_rest else {b"\0\0\0\0"})  # Part-10 preamble

        found = c.get("/dicomweb/instances", params={"StudyInstanceUID": st})
        assert found.status_code == 200 and len(found.json()) == 2
        r = c.get(f"/dicomweb/studies/{st}", headers={"Accept": 'multipart/related; type="application/dicom"'})
        assert r.status_code == 200
        assert sorted(parts(r)) == sorted(data)
        sop = value(found.json()[0], "00080018")
        series = value(found.json()[0], "0020000E")
        frame = c.get(f"/dicomweb/studies/{st}/series/{series}/instances/{sop}/frames/1",
                      headers={"Accept": 'multipart/related; type="application/octet-stream"'})
        assert frame.status_code == 200

        assert c.delete(f"/dicomweb/studies/{st}").status_code in (200, 204)
        assert list(raw.keys()) == []
        assert c.get(f"/dicomweb/studies/{st}").status_code == 404


def test_the_object_store_going_away_gives_clean_statuses_and_no_orphan_rows(
        settings: Settings, s3_endpoint: str, s3_bucket: str) -> None:
    from moto.server import ThreadedMotoServer

    port = _free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    endpoint = f"http://127.0.0.1:{port}"
    bucket = f"flaky-{uuid.uuid4().hex[:8]}"  # moto's servers in one process share their buckets
    make_client(endpoint_url=endpoint).create_bucket(Bucket=bucket)
    svc = build_services(_s3_settings(settings, endpoint, bucket, encrypt=True))
    try:
        archive = svc.imaging
        assert archive is not None
        raw = archive.blobs.inner  # type: ignore[attr-defined]
        raw.client = make_client(endpoint_url=endpoint, connect_timeout=0.5, read_timeout=2, max_attempts=2)
        st = generate_uid()
        kept = instance(study=st)
        with _client(svc) as c:
            assert stow(c, [kept]).status_code == 200
            server.stop()  # the endpoint is down from here on

            r = stow(c, [instance(study=st), instance(study=generate_uid())])
            assert r.status_code == 409, r.text
            failed = r.json()["00081198"]["Value"]
            assert [value(f, "00081197") for f in failed] == [0xA700, 0xA700]  # Out of Resources
            assert "object storage unreachable" in r.text
            found = c.get("/dicomweb/instances")  # the index is in the database: QIDO still answers
            assert found.status_code == 200 and len(found.json()) == 1  # no row for the failed instances

            r = c.get(f"/dicomweb/studies/{st}", headers={"Accept": 'multipart/related; type="application/dicom"'})
            assert r.status_code == 503, r.text
            assert r.json()["category"] == "busy" and "object storage unreachable" in r.json()["message"]
            sop, series = value(found.json()[0], "00080018"), value(found.json()[0], "0020000E")
            r = c.get(f"/dicomweb/studies/{st}/series/{series}/instances/{sop}/frames/1",
                      headers={"Accept": 'multipart/related; type="application/octet-stream"'})
            assert r.status_code == 503
    finally:
        svc.close()
        server.stop()


def test_c_store_to_the_scp_with_the_bucket_down_is_out_of_resources(settings: Settings, s3_endpoint: str) -> None:
    from io import BytesIO

    import pydicom
    from moto.server import ThreadedMotoServer
    from pynetdicom import AE, build_context

    from medcloud.config import RemoteAE
    from medcloud.imaging.dimse.scp import DimseServer

    port = _free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    endpoint = f"http://127.0.0.1:{port}"
    bucket = f"pacs-{uuid.uuid4().hex[:8]}"  # moto's servers in one process share their buckets
    make_client(endpoint_url=endpoint).create_bucket(Bucket=bucket)
    dimse_settings = _s3_settings(settings, endpoint, bucket, encrypt=True).with_overrides(
        dicom_remotes=[RemoteAE(title="S3SCU", host="127.0.0.1", port=_free_port())])
    svc = build_services(dimse_settings)
    scp = None
    try:
        assert svc.imaging is not None
        svc.imaging.blobs.inner.client = make_client(  # type: ignore[attr-defined]
            endpoint_url=endpoint, connect_timeout=0.5, read_timeout=2, max_attempts=2)
        scp = DimseServer(svc.imaging, dimse_settings, host="127.0.0.1", port=_free_port())
        scp.start()

        def c_store(data: bytes) -> int:
            ds = pydicom.dcmread(BytesIO(data))
            assoc = AE(ae_title="S3SCU").associate("127.0.0.1", scp.port, contexts=[build_context(ds.SOPClassUID)],
                                                   ae_title="MEDCLOUD")
            assert assoc.is_established
            try:
                return int(assoc.send_c_store(ds).Status)
            finally:
                assoc.release()

        assert c_store(instance()) == 0x0000
        assert len(list(raw_blob_store(dimse_settings).keys())) == 1
        server.stop()
        assert c_store(instance()) == 0xA700  # Out of Resources: the SCU may retry later
        assert len(_index_rows(svc)) == 1  # no index row for the instance whose object was not written
    finally:
        if scp is not None:
            scp.stop()
        svc.close()
        server.stop()


def _index_rows(svc: Services) -> list[object]:
    from sqlalchemy import select

    from medcloud.storage.imaging_schema import dicom_instances

    with svc.db.read() as conn:
        return list(conn.execute(select(dicom_instances.c.sop_uid)).all())


# -- key rotation over the bucket ---------------------------------------------------------------------------


def test_key_rotation_rewraps_the_objects_in_the_bucket(settings: Settings, s3_endpoint: str, s3_bucket: str,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    from medcloud.security.at_rest import master_key_file
    from medcloud.security.keys import KeyStore
    from medcloud.security.rotation import blob_locations, census, rotate

    s3_settings = _s3_settings(settings, s3_endpoint, s3_bucket, encrypt=True)
    svc = build_services(s3_settings)
    try:
        assert svc.imaging is not None
        blobs = svc.imaging.blobs
        expected = {f"1.2.{i}/3.4/5.{i}.dcm": bytes([i]) * (1000 + i * 7919) for i in range(12)}
        for k, v in expected.items():
            blobs.put(k, v)
        raw = raw_blob_store(s3_settings)
        raw.put("8.8/8.8/8.8.dcm", b"\0" * 128 + b"DICM legacy plaintext")
        old = svc.fhir.at_rest.keys.versions()[0].kid.hex()
        assert census(blob_locations(s3_settings)) == {old: 12, "plaintext": 1}

        keys = KeyStore.open(svc.db, master_key_file(s3_settings))
        seen: list[str] = []
        report = rotate(keys, blob_locations(s3_settings), grace=0,
                        on_file=lambda where, done: seen.append(str(where)))
        assert report.rewrapped == 12 and report.plaintext == 1 and report.retired == [1] and not report.failed
        assert f"s3://{s3_bucket}/medcloud/dicom/1.2.0/3.4/5.0.dcm" in seen
        new = keys.versions()[-1].kid.hex()
        assert census(blob_locations(s3_settings)) == {new: 12, "plaintext": 1}
        fresh = build_archive(s3_settings, svc.db, svc.fhir).blobs  # the retired KEK is gone from the ring
        svc.fhir.at_rest.keys.keyring(refresh=True)
        assert all(fresh.read(k) == v for k, v in expected.items())

        from medcloud.cli import app  # `medcloud keys status` counts the bucket's objects too

        monkeypatch.setenv("MEDCLOUD_BLOB_STORE", s3_settings.blob_store)
        monkeypatch.setenv("MEDCLOUD_S3_ENDPOINT_URL", s3_endpoint)
        r = CliRunner().invoke(app, ["keys", "status", "--data-dir", str(settings.data_dir), "--db", settings.db_url])
        assert r.exit_code == 0, r.output
        assert "files 12" in r.output and "plaintext files (written before encryption): 1" in r.output
    finally:
        svc.close()


def test_missing_credentials_are_named_at_startup(tmp_path: Path, s3_endpoint: str, s3_bucket: str,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")  # no instance-role probe
    [problem] = blob_store_problems(Settings(data_dir=tmp_path, blob_store=f"s3://{s3_bucket}",
                                             s3_endpoint_url=s3_endpoint))
    assert "no credentials" in problem and "AWS_ACCESS_KEY_ID" in problem


def test_modified_time_for_fsck_and_nothing_staged_to_sweep(s3_store: S3BlobStore) -> None:
    import time

    s3_store.put("1.2/1.2.3/1.2.3.4.dcm", b"x")
    assert abs(s3_store.modified("1.2/1.2.3/1.2.3.4.dcm") - time.time()) < 120
    with pytest.raises(FileNotFoundError):
        s3_store.modified("1.2/1.2.3/absent.dcm")
    assert s3_store.sweep_staged(older_than=0) == 0
