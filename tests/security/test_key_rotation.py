"""``medcloud keys rotate``: online, header-only, resumable; on SQLite and PostgreSQL."""

from __future__ import annotations

import base64
import os
import random
import threading
from pathlib import Path

import pytest
from typer.testing import CliRunner

from medcloud.cli import app
from medcloud.security.at_rest import AtRest
from medcloud.security.crypto import HEADER_SIZE, MAGIC
from medcloud.security.keys import ACTIVE, RETIRED, KeyStore
from medcloud.security.rotation import ROTATION, blob_roots, census, rotate


def _root_key(settings) -> bytes:
    return base64.b64decode((settings.data_dir / "master.key").read_text().strip())


def _other_process(services, settings, ttl: float = 0.05) -> AtRest:
    """What another medcloud process on the same database sees: its own key store and cache."""
    return AtRest(KeyStore(services.db, _root_key(settings), ttl=ttl))


def _fill(services, n: int) -> dict[str, bytes]:
    blobs = services.imaging.blobs
    expected = {}
    for i in range(n):
        key = f"1.2.{i}/3.4/5.{i}.dcm"
        expected[key] = os.urandom(random.Random(i).randint(0, 200_000)) + f"Patient^{i}".encode()
        blobs.put(key, expected[key])
    return expected


def _kids(settings) -> set[bytes]:
    out = set()
    for root in blob_roots(settings):
        for p in root.rglob("*"):
            head = p.read_bytes()[:HEADER_SIZE] if p.is_file() else b""
            if head[:4] == MAGIC:
                out.add(head[5:13])
    return out


def test_rotation_rewraps_every_header_while_reads_run(services, settings):
    expected = _fill(services, 60)
    export = settings.data_dir / "exports" / "job1" / "Patient.001.ndjson"
    export.parent.mkdir(parents=True)
    writer = services.fhir.at_rest.new_records(export)
    writer.write(b'{"resourceType":"Patient","id":"a"}\n')
    writer.seal()
    old = services.fhir.at_rest.keys.versions()[0]
    payload_before = {k: (settings.data_dir / "dicom" / k).read_bytes()[HEADER_SIZE:] for k in expected}

    reader = _other_process(services, settings)
    from medcloud.imaging.blobs import LocalBlobStore, SealedBlobStore

    store = SealedBlobStore(LocalBlobStore(settings.data_dir / "dicom"), reader)
    stop, errors, reads = threading.Event(), [], [0]

    def read_loop(seed: int) -> None:
        rnd = random.Random(seed)
        keys = sorted(expected)
        while not stop.is_set():
            k = rnd.choice(keys)
            try:
                assert store.read(k) == expected[k]
                reads[0] += 1
            except Exception as e:  # noqa: BLE001 - collected and asserted below
                errors.append(f"{k}: {e!r}")

    threads = [threading.Thread(target=read_loop, args=(s,)) for s in range(3)]
    for t in threads:
        t.start()
    try:
        rotator = KeyStore(services.db, _root_key(settings))
        report = rotate(rotator, blob_roots(settings), grace=0.2)
        writer.write(b'{"resourceType":"Patient","id":"b"}\n')  # the export keeps appending after the rotation
        writer.seal()
    finally:
        stop.set()
        for t in threads:
            t.join()
        writer.close()
    assert errors == [] and reads[0] > 0
    assert report.rewrapped == 61 and report.failed == [] and report.retired == [old.version]
    new = [v for v in rotator.versions() if v.status == ACTIVE]
    assert [v.version for v in new] == [2] and rotator.versions()[0].status == RETIRED
    assert _kids(settings) == {new[0].kid}
    # only the headers changed: the ciphertext after them is byte for byte the same
    assert all((settings.data_dir / "dicom" / k).read_bytes()[HEADER_SIZE:] == v for k, v in payload_before.items())
    # the server's own cached key ring (which still had KEK 1 current) reads and writes on
    for k, v in expected.items():
        assert services.imaging.blobs.read(k) == v
    assert b"".join(services.fhir.at_rest.iter_file(export)).count(b"\n") == 2
    assert rotator.get_state(ROTATION) is None


def test_a_rotation_killed_half_way_completes_when_run_again(services, settings):
    expected = _fill(services, 30)
    keys = KeyStore(services.db, _root_key(settings))
    seen = [0]

    class Killed(Exception):
        pass

    def die_after_ten(path: Path, rewrapped: bool) -> None:
        seen[0] += rewrapped
        if seen[0] == 10:
            raise Killed

    with pytest.raises(Killed):
        rotate(keys, blob_roots(settings), grace=0, on_file=die_after_ten)
    assert keys.get_state(ROTATION) is not None
    assert [v.status for v in keys.versions()] == [ACTIVE, ACTIVE]  # nothing retired yet
    assert len(_kids(settings)) == 2  # a mix of old and new headers...
    reader = _other_process(services, settings)
    from medcloud.imaging.blobs import LocalBlobStore, SealedBlobStore

    store = SealedBlobStore(LocalBlobStore(settings.data_dir / "dicom"), reader)
    assert all(store.read(k) == v for k, v in expected.items())  # ...all readable

    report = rotate(KeyStore(services.db, _root_key(settings)), blob_roots(settings), grace=0)
    assert report.rewrapped == 20 and report.current == 30 and report.retired == [1]
    assert [v.status for v in keys.versions()] == [RETIRED, ACTIVE]  # resumed: no third version
    assert len(_kids(settings)) == 1
    assert all(store.read(k) == v for k, v in expected.items())


def test_the_old_kek_is_kept_while_a_blob_cannot_be_rewrapped(services, settings):
    _fill(services, 3)
    bad = settings.data_dir / "dicom" / "9.9" / "9.9" / "9.9.dcm"
    bad.parent.mkdir(parents=True)
    bad.write_bytes(MAGIC + b"\x02" + b"\xee" * 8 + os.urandom(200))  # a header naming no known KEK
    plain = settings.data_dir / "dicom" / "8.8" / "8.8" / "8.8.dcm"
    plain.parent.mkdir(parents=True)
    plain.write_bytes(b"\0" * 128 + b"DICM legacy plaintext")
    argv = ["keys", "rotate", "--grace", "0", "--data-dir", str(settings.data_dir), "--db", settings.db_url]
    r = CliRunner().invoke(app, argv)
    assert r.exit_code == 1, r.output
    assert "could not be re-wrapped" in r.output and "9.9.dcm" in r.output
    keys = KeyStore(services.db, _root_key(settings))
    assert [v.status for v in keys.versions()] == [ACTIVE, ACTIVE]
    status = CliRunner().invoke(app, ["keys", "status", "--data-dir", str(settings.data_dir), "--db", settings.db_url])
    assert status.exit_code == 0 and "unfinished" in status.output and "plaintext files (written before encryption): 1" \
        in status.output
    bad.unlink()
    r = CliRunner().invoke(app, argv)
    assert r.exit_code == 0, r.output
    assert "retired KEK version(s) 1" in r.output
    counts = census(blob_roots(settings))
    current = keys.versions()[-1].kid.hex()
    assert counts == {current: 3, "plaintext": 1}
    status = CliRunner().invoke(app, ["keys", "status", "--data-dir", str(settings.data_dir), "--db", settings.db_url])
    assert "current" in status.output and "retired" in status.output and "unfinished" not in status.output


def test_a_new_kek_made_by_another_process_is_picked_up_for_reading(services, settings):
    other = _other_process(services, settings, ttl=3600)  # would not reload on its own for an hour
    other.keyring()
    services.fhir.at_rest.keys.create_version()
    services.fhir.at_rest.keys.keyring(refresh=True)
    services.imaging.blobs.put("1.1/2.2/3.3.dcm", b"written under KEK 2")
    from medcloud.imaging.blobs import LocalBlobStore, SealedBlobStore

    store = SealedBlobStore(LocalBlobStore(settings.data_dir / "dicom"), other)
    assert store.read("1.1/2.2/3.3.dcm") == b"written under KEK 2"


def test_named_secrets_are_stable_and_stored_wrapped(services):
    from sqlalchemy import select

    from medcloud.storage.schema import server_state

    keys = services.fhir.at_rest.keys
    a = keys.secret("deid-pseudonym-key")
    assert a == keys.secret("deid-pseudonym-key") and len(a) == 32
    with services.db.read() as conn:
        stored = conn.execute(select(server_state.c.value).where(server_state.c.key == "secret:deid-pseudonym-key")
                              ).scalar_one()
    assert a not in stored and base64.b64encode(a) not in stored


def test_one_rotation_at_a_time_and_a_dead_runs_lease_expires(services, settings):
    from medcloud.errors import Conflict
    from medcloud.security.rotation import LEASE

    expected = _fill(services, 5)
    keys = KeyStore(services.db, _root_key(settings))
    assert keys.lease(LEASE, "other-host:123", 60) is None  # a live rotation elsewhere
    with pytest.raises(Conflict, match="another key rotation is running"):
        rotate(keys, blob_roots(settings), grace=0, lease_seconds=0.3)
    assert [v.status for v in keys.versions()] == [ACTIVE]  # it did not start
    keys.release(LEASE, "other-host:123")
    assert keys.lease(LEASE, "killed-host:9", 0.5) is None  # a run killed with its lease held
    waits: list[str] = []
    report = rotate(keys, blob_roots(settings), grace=0, lease_seconds=0.5, on_wait=waits.append)
    assert waits and "killed-host:9" in waits[0]
    assert report.retired == [1] and report.rewrapped == 5
    assert keys.get_state(LEASE) is None  # released
    reader = _other_process(services, settings)
    from medcloud.imaging.blobs import LocalBlobStore, SealedBlobStore

    store = SealedBlobStore(LocalBlobStore(settings.data_dir / "dicom"), reader)
    assert all(store.read(k) == v for k, v in expected.items())


def test_wado_downloads_from_a_running_server_all_succeed_during_a_rotation(services, settings, live_server):
    import sys

    import httpx

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "imaging"))
    from _factory import instance
    from _http import parts

    base = live_server.removesuffix("/fhir") + "/dicomweb"
    stored = []
    for i in range(12):
        data = instance(patient_name=f"Rotate^Me{i}", rows=64, columns=64, frames=20)
        r = services.imaging.store(data)
        assert r.stored
        stored.append((f"{base}/studies/{r.study_uid}/series/{r.series_uid}/instances/{r.sop_instance_uid}", data))
    stop, errors, ok = threading.Event(), [], [0]

    def download(seed: int) -> None:
        rnd = random.Random(seed)
        with httpx.Client(timeout=30) as c:
            while not stop.is_set():
                url, data = rnd.choice(stored)
                r = c.get(url, headers={"Accept": 'multipart/related; type="application/dicom"; transfer-syntax=*'})
                if r.status_code != 200 or parts(r) != [data]:
                    errors.append(f"{r.status_code} {url}")
                else:
                    ok[0] += 1

    threads = [threading.Thread(target=download, args=(s,)) for s in range(3)]
    for t in threads:
        t.start()
    try:
        report = rotate(KeyStore(services.db, _root_key(settings)), blob_roots(settings), grace=0.3)
    finally:
        stop.set()
        for t in threads:
            t.join()
    assert errors == [] and ok[0] > 0
    assert report.rewrapped == 12 and report.retired == [1]
