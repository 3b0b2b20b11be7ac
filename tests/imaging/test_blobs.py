"""The blob-store contract, on local files and on S3 (a real moto S3 server): atomic UID-addressed
objects, streaming, deletes of one key or a whole study; plus what only the local store has (files
on disk, temp files, empty folders)."""

from __future__ import annotations

from pathlib import Path

import pytest

from medcloud.imaging.blobs import BlobStore, LocalBlobStore, instance_key, valid_uid


@pytest.fixture(params=["local", "s3"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> BlobStore:
    if request.param == "local":
        return LocalBlobStore(tmp_path / "dicom")
    from medcloud.imaging.s3 import S3BlobStore

    return S3BlobStore(request.getfixturevalue("s3_bucket"), "site-a/dicom",
                       endpoint_url=request.getfixturevalue("s3_endpoint"))


# -- the contract (every BlobStore) ---------------------------------------------------------------


def test_put_then_open_returns_the_same_bytes(store: BlobStore) -> None:
    key = instance_key("1.2", "1.2.3", "1.2.3.4")
    store.put(key, b"abc" * 100_000)
    assert store.exists(key)
    assert store.read(key) == b"abc" * 100_000
    chunks = list(store.iter_chunks(key, 1000))
    assert b"".join(chunks) == b"abc" * 100_000 and max(map(len, chunks)) == 1000
    with store.open(key) as f:
        assert f.read(3) == b"abc" and len(f.read()) == 299_997


def test_put_overwrites(store: BlobStore) -> None:
    key = instance_key("1", "2", "3")
    store.put(key, b"old")
    store.put(key, b"new", sync_dir=False)
    store.sync([key])
    assert store.read(key) == b"new"
    assert list(store.keys()) == [key]


def test_delete_is_idempotent(store: BlobStore) -> None:
    key = instance_key("1", "2", "3")
    store.put(key, b"x")
    store.delete(key)
    store.delete(key)  # absent is fine
    assert not store.exists(key)
    assert list(store.keys()) == []


def test_delete_prefix_removes_a_whole_study_and_nothing_else(store: BlobStore) -> None:
    for sop in ("3", "4"):
        store.put(instance_key("1", "2", sop), b"x")
    store.put(instance_key("1", "5", "6"), b"x")
    store.put(instance_key("11", "2", "5"), b"y")  # "1" is a string prefix of "11": must survive
    store.delete_prefix("1")
    assert sorted(store.keys()) == ["11/2/5.dcm"]
    store.put(instance_key("1", "2", "3"), b"x")
    store.put(instance_key("1", "7", "3"), b"x")
    store.delete_prefix("1/2")  # a series
    assert sorted(store.keys()) == ["1/7/3.dcm", "11/2/5.dcm"]
    assert sorted(store.keys("11/")) == ["11/2/5.dcm"]


def test_open_of_a_missing_key_raises_file_not_found(store: BlobStore) -> None:
    with pytest.raises(FileNotFoundError):
        store.open("1/2/3.dcm")
    with pytest.raises(FileNotFoundError):
        store.read("1/2/3.dcm")
    assert not store.exists("1/2/3.dcm")
    with pytest.raises(ValueError):
        store.open("../x")
    with pytest.raises(ValueError):
        store.put("/etc/x", b"")


def test_empty_objects_round_trip(store: BlobStore) -> None:
    store.put("1/2/3.dcm", b"")
    assert store.exists("1/2/3.dcm") and store.read("1/2/3.dcm") == b""
    assert list(store.iter_chunks("1/2/3.dcm")) == []


# -- local files only ---------------------------------------------------------------------------------


def test_local_files_are_uid_addressed_and_leave_no_temp_files(tmp_path: Path) -> None:
    store = LocalBlobStore(tmp_path)
    key = instance_key("1.2", "1.2.3", "1.2.3.4")
    store.put(key, b"old")
    store.put(key, b"new")
    assert (tmp_path / "1.2" / "1.2.3" / "1.2.3.4.dcm").read_bytes() == b"new"
    assert [p.name for p in (tmp_path / "1.2" / "1.2.3").iterdir()] == ["1.2.3.4.dcm"]


def test_failed_write_leaves_neither_temp_file_nor_object(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    store = LocalBlobStore(tmp_path)
    key = instance_key("1", "2", "3")

    def boom(*a: object) -> None:
        raise OSError("disk full")

    monkeypatch.setattr("os.replace", boom)
    with pytest.raises(OSError):
        store.put(key, b"data")
    assert not store.exists(key)
    assert list((tmp_path / "1" / "2").iterdir()) == []
    assert list(store.keys()) == []  # a leftover ".tmp-" file would never be listed anyway


def test_local_deletes_leave_no_empty_folders(tmp_path: Path) -> None:
    store = LocalBlobStore(tmp_path)
    store.put(instance_key("1", "2", "3"), b"x")
    store.delete(instance_key("1", "2", "3"))
    assert not (tmp_path / "1").exists()
    store.put(instance_key("1", "2", "3"), b"x")
    store.delete_prefix("1")
    assert not (tmp_path / "1").exists()


@pytest.mark.parametrize("uid", ["", "../etc", "1.2/3", "1..2", "a.b", "1" * 65, "1.2."])
def test_invalid_uids_never_become_keys(uid: str) -> None:
    assert not valid_uid(uid)
    with pytest.raises(ValueError):
        instance_key(uid, "1", "2")


def test_staged_files_a_killed_process_left_are_swept_when_old(tmp_path: Path) -> None:
    """A process killed between ``stage`` and ``publish`` leaves a ``.tmp-*.part`` file that nothing
    reads; the sweep removes it once old (never one still in flight) and the emptied folders."""
    import os
    import time

    store = LocalBlobStore(tmp_path)
    key = instance_key("1.2.3", "1.2.3.4", "1.2.3.4.5")
    store.put(key, b"kept")
    orphan = store.stage(instance_key("1.2.3", "1.2.3.9", "1.2.3.9.1"), b"left behind")
    in_flight = store.stage(instance_key("1.2.3", "1.2.3.4", "1.2.3.4.6"), b"being stored")
    assert orphan is not None and in_flight is not None
    old = time.time() - 7200
    os.utime(orphan.token, (old, old))
    assert store.sweep_staged(older_than=3600) == 1
    assert not Path(orphan.token).exists() and not (tmp_path / "1.2.3" / "1.2.3.9").exists()
    assert Path(in_flight.token).exists() and store.read(key) == b"kept"
    store.publish(in_flight)  # the in-flight one still publishes
    assert store.read(instance_key("1.2.3", "1.2.3.4", "1.2.3.4.6")) == b"being stored"
    assert store.sweep_staged(older_than=3600) == 0


def test_the_app_worker_sweeps_old_staged_files_in_the_background(services) -> None:  # type: ignore[no-untyped-def]
    import os
    import time

    assert services.imaging is not None
    staged = services.imaging.blobs.stage(instance_key("1.2.3", "1.2.3.4", "1.2.3.4.5"), b"orphan")
    assert staged is not None
    old = time.time() - 7200
    os.utime(staged.token, (old, old))
    worker = services.job_worker()
    for hook in worker.idle_hooks:
        hook()
    deadline = time.monotonic() + 10
    while Path(staged.token).exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not Path(staged.token).exists()
