"""Blobs staged in the request thread (``Archive.stage``, group_commit.py): whatever fails, nothing is
left half-stored: no index row without its file, no file of a refused instance, no temp file."""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path

import pytest
from _factory import instance
from pydicom.uid import generate_uid

from medcloud.imaging import archive as archive_module
from medcloud.imaging import status
from medcloud.imaging.archive import Archive
from medcloud.imaging.group_commit import GroupCommit


def _root(archive: Archive) -> Path:
    root = getattr(archive.blobs, "root", None)
    assert root is not None, "these tests need the local blob store"
    return Path(root)


def _files(archive: Archive) -> list[str]:
    root = _root(archive)
    return sorted(p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file())


def _key(study: str, series: str, sop: str) -> str:
    return f"{study}/{series}/{sop}.dcm"


def test_fsync_failing_in_the_request_thread_fails_that_instance_alone(
        archive: Archive, monkeypatch: pytest.MonkeyPatch) -> None:
    st, good_series, bad_series = generate_uid(), generate_uid(), generate_uid()
    sops = [generate_uid() for _ in range(3)]
    datas = [instance(study=st, series=good_series, sop=sops[0]),
             instance(study=st, series=bad_series, sop=sops[1]),
             instance(study=st, series=good_series, sop=sops[2])]
    real_fsync = os.fsync

    def failing_fsync(fd: int) -> None:
        if bad_series in os.readlink(f"/proc/self/fd/{fd}"):
            raise OSError(5, "Input/output error")
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", failing_fsync)
    results = GroupCommit.for_archive(archive).store_many(datas)

    assert [r.stored for r in results] == [True, False, True]
    assert results[1].status == status.PROCESSING_FAILURE and results[1].sop_instance_uid == sops[1]
    assert sorted(r.sop_uid for r in archive.instances(st)) == sorted([sops[0], sops[2]])
    assert _files(archive) == sorted(_key(st, good_series, s) for s in (sops[0], sops[2]))
    assert not (_root(archive) / st / bad_series).exists()


def test_a_failing_index_write_removes_published_and_staged_blobs(
        archive: Archive, monkeypatch: pytest.MonkeyPatch) -> None:
    st = generate_uid()
    datas = [instance(study=st) for _ in range(3)]

    def broken_recount(*a: object, **kw: object) -> None:
        raise RuntimeError("the database went away")

    monkeypatch.setattr(archive_module, "_recount", broken_recount)
    results = GroupCommit.for_archive(archive).store_many(datas)

    assert [r.status for r in results] == [status.OUT_OF_RESOURCES] * 3
    assert archive.study_summary(st) is None
    assert _files(archive) == []  # neither the renamed files nor any ".tmp-" file


@pytest.mark.parametrize("policy", ["reject", "overwrite"])
def test_a_duplicate_through_the_writer_keeps_or_replaces_the_file_and_leaves_no_temp(
        archive: Archive, policy: str) -> None:
    archive.config = dataclasses.replace(archive.config, duplicates=policy)  # type: ignore[arg-type]
    st, se, sop = generate_uid(), generate_uid(), generate_uid()
    first = instance(study=st, series=se, sop=sop, study_description="first")
    second = instance(study=st, series=se, sop=sop, study_description="second")
    writer = GroupCommit.for_archive(archive)
    assert writer.store(first).stored
    again = writer.store(second)

    if policy == "reject":
        assert again.status == status.DUPLICATE_SOP_INSTANCE
    else:
        assert again.stored and again.warnings[0][0] == status.COERCION_OF_DATA_ELEMENTS
    refs = archive.instances(st)
    assert len(refs) == 1
    assert archive.blobs.read(refs[0].blob_key) == (first if policy == "reject" else second)
    assert _files(archive) == [_key(st, se, sop)]


def test_staged_blobs_are_invisible_until_commit_publishes_them(archive: Archive) -> None:
    st = generate_uid()
    ok = instance(study=st)
    prepared = archive.stage([archive.prepare(ok), archive.prepare(b"not dicom")])
    assert prepared[0].staged is not None and prepared[1].staged is None
    assert any(name.rsplit("/", 1)[-1].startswith(".tmp-") for name in _files(archive))  # written, not visible
    assert not archive.blobs.exists(prepared[0].staged.key)
    results = archive.commit(prepared)
    assert results[0].stored and results[1].status == status.CANNOT_UNDERSTAND
    assert archive.blobs.read(prepared[0].staged.key) == ok
    assert _files(archive) == [prepared[0].staged.key]
