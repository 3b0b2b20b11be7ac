"""The local blob store: atomic UID-addressed files, streaming, deletes that leave no empty folders."""

from __future__ import annotations

from pathlib import Path

import pytest

from medcloud.imaging.blobs import LocalBlobStore, instance_key, valid_uid


def test_put_then_open_returns_the_same_bytes(tmp_path: Path) -> None:
    store = LocalBlobStore(tmp_path / "dicom")
    key = instance_key("1.2", "1.2.3", "1.2.3.4")
    store.put(key, b"abc" * 100_000)
    assert store.exists(key)
    assert store.read(key) == b"abc" * 100_000
    assert b"".join(store.iter_chunks(key, 1000)) == b"abc" * 100_000
    assert (tmp_path / "dicom" / "1.2" / "1.2.3" / "1.2.3.4.dcm").is_file()


def test_put_overwrites_atomically_and_leaves_no_temp_files(tmp_path: Path) -> None:
    store = LocalBlobStore(tmp_path)
    key = instance_key("1", "2", "3")
    store.put(key, b"old")
    store.put(key, b"new")
    assert store.read(key) == b"new"
    assert [p.name for p in (tmp_path / "1" / "2").iterdir()] == ["3.dcm"]


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


def test_delete_removes_the_file_and_empty_folders(tmp_path: Path) -> None:
    store = LocalBlobStore(tmp_path)
    key = instance_key("1", "2", "3")
    store.put(key, b"x")
    store.delete(key)
    store.delete(key)  # absent is fine
    assert not (tmp_path / "1").exists()


def test_delete_prefix_removes_a_whole_study(tmp_path: Path) -> None:
    store = LocalBlobStore(tmp_path)
    for sop in ("3", "4"):
        store.put(instance_key("1", "2", sop), b"x")
    store.put(instance_key("9", "2", "5"), b"y")
    store.delete_prefix("1")
    assert not (tmp_path / "1").exists()
    assert store.exists(instance_key("9", "2", "5"))


@pytest.mark.parametrize("uid", ["", "../etc", "1.2/3", "1..2", "a.b", "1" * 65, "1.2."])
def test_invalid_uids_never_become_keys(uid: str) -> None:
    assert not valid_uid(uid)
    with pytest.raises(ValueError):
        instance_key(uid, "1", "2")


def test_open_of_a_missing_key_raises_file_not_found(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        LocalBlobStore(tmp_path).open("1/2/3.dcm")
    with pytest.raises(ValueError):
        LocalBlobStore(tmp_path).open("../x")
