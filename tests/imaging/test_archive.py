"""The archive domain on SQLite and PostgreSQL: store, policy, bad input, nothing half-stored, delete."""

from __future__ import annotations

import dataclasses

import pytest
from _factory import TEST_FILES, instance
from pydicom.uid import generate_uid

from medcloud.errors import NotFound
from medcloud.imaging import qido, status
from medcloud.imaging.archive import Archive, ArchiveConfig


def _study_row(archive: Archive, uid: str) -> dict:
    s = archive.study_summary(uid)
    assert s is not None
    return s


def test_store_indexes_patient_study_series_and_instance(archive: Archive) -> None:
    st, se1, se2 = generate_uid(), generate_uid(), generate_uid()
    results = archive.store_many([
        instance(study=st, series=se1, instance_number=1),
        instance(study=st, series=se1, instance_number=2),
        instance(study=st, series=se2, modality="MR", series_number=2),
    ])
    assert [r.status for r in results] == [0, 0, 0]
    s = _study_row(archive, st)
    assert (s["num_series"], s["num_instances"], s["modalities"]) == (2, 3, "CT\\MR")
    assert (s["patient_id"], s["patient_name"], s["patient_birth_date"], s["patient_sex"]) == \
        ("PID-1", "Doe^Jane", "19800102", "F")
    assert (s["study_date"], s["study_time"], s["accession_number"]) == ("20240115", "101500.000000", "ACC-1")
    assert [x["num_instances"] for x in s["series"]] == [2, 1]
    for r in results:
        assert archive.blobs.exists(f"{st}/{r.series_uid}/{r.sop_instance_uid}.dcm")


def test_duplicate_is_rejected_by_default_and_nothing_changes(archive: Archive) -> None:
    data = instance(study_description="first")
    assert archive.store(data).stored
    again = archive.store(instance(sop=_sop(data), study=_study(data), series=_series(data),
                                   study_description="second"))
    assert again.status == status.DUPLICATE_SOP_INSTANCE
    assert "duplicate" in (again.reason or "")
    assert _study_row(archive, _study(data))["study_description"] == "first"
    assert archive.blobs.read(archive.instances(_study(data))[0].blob_key) == data


def test_duplicate_overwrites_with_a_warning_when_configured(archive: Archive) -> None:
    archive.config = dataclasses.replace(archive.config, duplicates="overwrite")
    data = instance(study_description="first")
    archive.store(data)
    newer = instance(sop=_sop(data), study=_study(data), series=_series(data), study_description="second")
    r = archive.store(newer)
    assert r.stored and r.warnings[0][0] == status.COERCION_OF_DATA_ELEMENTS
    refs = archive.instances(_study(data))
    assert len(refs) == 1
    assert archive.blobs.read(refs[0].blob_key) == newer
    assert _study_row(archive, _study(data))["num_instances"] == 1


def test_overwrite_into_another_series_moves_the_instance(archive: Archive) -> None:
    archive.config = ArchiveConfig(duplicates="overwrite")
    data = instance()
    archive.store(data)
    moved = instance(sop=_sop(data), study=_study(data))  # new series UID
    assert archive.store(moved).stored
    s = _study_row(archive, _study(data))
    assert s["num_series"] == 1 and s["series"][0]["series_uid"] != _series(data)
    assert not archive.blobs.exists(f"{_study(data)}/{_series(data)}/{_sop(data)}.dcm")


@pytest.mark.parametrize(("data", "expected"), [
    (b"not dicom at all" * 20, status.CANNOT_UNDERSTAND),
    (b"", status.CANNOT_UNDERSTAND),
    (instance()[:-40], status.CANNOT_UNDERSTAND),  # cut inside Pixel Data
    (instance()[:400], status.CANNOT_UNDERSTAND),
    (instance(drop=("StudyInstanceUID",)), status.DATASET_DOES_NOT_MATCH_SOP_CLASS),
    (instance(drop=("SeriesInstanceUID",)), status.DATASET_DOES_NOT_MATCH_SOP_CLASS),
    (instance(drop=("SOPInstanceUID",)), status.DATASET_DOES_NOT_MATCH_SOP_CLASS),
    (instance(study="1.2.abc"), status.DATASET_DOES_NOT_MATCH_SOP_CLASS),
], ids=["text", "empty", "truncated-pixels", "truncated-header", "no-study", "no-series", "no-sop", "bad-uid"])
def test_bad_input_fails_per_instance_and_stores_nothing(archive: Archive, data: bytes, expected: int) -> None:
    r = archive.store(data)
    assert r.status == expected, r.reason
    assert r.reason
    assert qido.search(archive.db, qido.QidoQuery("instance"))[0] == []
    assert not any(archive.blobs.root.rglob("*.dcm"))  # type: ignore[attr-defined]


def test_instance_over_the_size_limit_is_out_of_resources(archive: Archive) -> None:
    archive.config = ArchiveConfig(max_instance_bytes=1000)
    r = archive.store(instance(rows=64, columns=64))
    assert r.status == status.OUT_OF_RESOURCES


def test_non_storage_sop_class_is_not_supported(archive: Archive) -> None:
    import io

    import pydicom

    ds = pydicom.dcmread(io.BytesIO(instance()))
    ds.SOPClassUID = "1.2.840.10008.1.1"  # Verification
    ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    assert archive.store(buf.getvalue()).status == status.SOP_CLASS_NOT_SUPPORTED


def test_study_in_the_request_path_rejects_other_studies(archive: Archive) -> None:
    r = archive.store(instance(), study_uid="1.2.3")
    assert r.status == status.DATASET_DOES_NOT_MATCH_SOP_CLASS


def test_index_failure_removes_that_instance_blob_and_keeps_the_others(archive: Archive,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    st = generate_uid()
    bad = instance(study=st)
    real = archive._index

    def flaky(conn, p, key, size, old_pk, **kw):  # type: ignore[no-untyped-def]
        if p.sop_uid == _sop(bad):
            raise RuntimeError("index write failed")
        return real(conn, p, key, size, old_pk, **kw)

    monkeypatch.setattr(archive, "_index", flaky)
    good = instance(study=st)
    results = archive.store_many([good, bad])
    assert results[0].stored
    assert results[1].status == status.PROCESSING_FAILURE
    assert not archive.blobs.exists(f"{st}/{_series(bad)}/{_sop(bad)}.dcm")
    assert [r.sop_uid for r in archive.instances(st)] == [_sop(good)]


def test_failed_commit_removes_every_new_blob(archive: Archive, monkeypatch: pytest.MonkeyPatch) -> None:
    import medcloud.imaging.archive as mod

    def broken(conn, pks, now):  # type: ignore[no-untyped-def]
        raise RuntimeError("connection lost")

    monkeypatch.setattr(mod, "_recount", broken)
    results = archive.store_many([instance(), instance()])
    assert all(r.status == status.OUT_OF_RESOURCES for r in results)
    assert not any(archive.blobs.root.rglob("*.dcm"))  # type: ignore[attr-defined]
    assert qido.search(archive.db, qido.QidoQuery("study"))[0] == []


def test_every_pydicom_test_file_is_stored_or_refused_with_a_status(archive: Archive) -> None:
    files = sorted(TEST_FILES.glob("*.dcm"))
    assert len(files) > 50
    results = archive.store_many([f.read_bytes() for f in files])
    by_name = dict(zip((f.name for f in files), results, strict=True))
    known = {0, status.DUPLICATE_SOP_INSTANCE, status.CANNOT_UNDERSTAND, status.DATASET_DOES_NOT_MATCH_SOP_CLASS,
             status.SOP_CLASS_NOT_SUPPORTED}
    assert {r.status for r in results} <= known
    assert by_name["CT_small.dcm"].stored
    assert by_name["no_meta.dcm"].status == status.CANNOT_UNDERSTAND
    assert by_name["MR_truncated.dcm"].status != 0
    stored = [r for r in results if r.stored]
    assert len(stored) > 30
    for r in stored:  # every stored instance has its file and its metadata
        assert archive.blobs.exists(f"{r.study_uid}/{r.series_uid}/{r.sop_instance_uid}.dcm")
        assert archive.metadata(r.study_uid, r.series_uid, r.sop_instance_uid)  # type: ignore[arg-type]


def test_delete_instance_series_and_study_keep_counts_right(archive: Archive) -> None:
    st, se1, se2 = generate_uid(), generate_uid(), generate_uid()
    datas = [instance(study=st, series=se1), instance(study=st, series=se1), instance(study=st, series=se2)]
    archive.store_many(datas)
    assert archive.delete(st, se1, _sop(datas[0])) == 1
    assert _study_row(archive, st)["num_instances"] == 2
    assert not archive.blobs.exists(f"{st}/{se1}/{_sop(datas[0])}.dcm")
    assert archive.delete(st, se2) == 1
    s = _study_row(archive, st)
    assert (s["num_series"], s["num_instances"]) == (1, 1)
    assert archive.delete(st) == 1
    assert archive.study_summary(st) is None
    with pytest.raises(NotFound):
        archive.delete(st)
    with pytest.raises(NotFound):
        archive.instances(st)


def _uid(data: bytes, kw: str) -> str:
    import io

    import pydicom

    return str(pydicom.dcmread(io.BytesIO(data), stop_before_pixels=True).get(kw))


def _sop(data: bytes) -> str:
    return _uid(data, "SOPInstanceUID")


def _study(data: bytes) -> str:
    return _uid(data, "StudyInstanceUID")


def _series(data: bytes) -> str:
    return _uid(data, "SeriesInstanceUID")


def test_concurrent_stores_of_one_patient_all_succeed(archive: Archive) -> None:
    from concurrent.futures import ThreadPoolExecutor

    studies = [generate_uid() for _ in range(4)]
    batches = [[instance(study=st, patient_id="SAME"), instance(study=st, patient_id="SAME")] for st in studies]
    with ThreadPoolExecutor(4) as pool:
        results = [r for rs in pool.map(archive.store_many, batches) for r in rs]
    assert all(r.stored for r in results), [r.reason for r in results if not r.stored]
    found, _ = qido.search(archive.db, qido.parse_query("study", [("PatientID", "SAME")]))
    assert len(found) == 4


def test_study_becomes_stable_after_the_quiet_period_and_again_after_changes(archive: Archive) -> None:
    now = [1_000_000_000_000]
    archive.clock = lambda: now[0]
    fired: list[list[str]] = []
    archive.on_stable.append(fired.append)
    st = generate_uid()
    archive.store(instance(study=st))
    assert archive.mark_stable() == []  # not quiet yet
    now[0] += 5_000_000
    assert archive.mark_stable() == [st]
    assert archive.mark_stable() == []  # fires once
    archive.store(instance(study=st))
    now[0] += 4_000_000
    assert archive.mark_stable() == []
    now[0] += 1_000_000
    assert archive.mark_stable() == [st]
    assert fired == [[st], [st]]


def test_a_stable_event_is_not_lost_when_the_process_dies_while_delivering_it(archive: Archive) -> None:
    """The mark is written after the hooks ran: killed in between, the study fires again next time."""
    now = [1_000_000_000_000]
    archive.clock = lambda: now[0]

    class Killed(BaseException):  # what a kill -9 looks like to the code after it: nothing runs
        pass

    def dies(uids: list[str]) -> None:
        raise Killed

    st = generate_uid()
    archive.store(instance(study=st))
    now[0] += 5_000_000
    archive.on_stable.append(dies)
    with pytest.raises(Killed):
        archive.mark_stable()
    archive.on_stable.remove(dies)
    fired: list[list[str]] = []
    archive.on_stable.append(fired.append)
    assert archive.mark_stable() == [st] and fired == [[st]]  # delivered after the "restart"
    assert archive.mark_stable() == []


def test_a_study_stored_to_while_its_event_is_delivered_fires_again_when_quiet(archive: Archive) -> None:
    now = [1_000_000_000_000]
    archive.clock = lambda: now[0]
    st = generate_uid()
    archive.store(instance(study=st))
    now[0] += 5_000_000
    archive.on_stable.append(lambda uids: archive.store(instance(study=st)))  # a new image meanwhile
    assert archive.mark_stable() == [st]
    archive.on_stable.clear()
    assert archive.mark_stable() == []  # not quiet: the late image restarted the quiet period
    now[0] += 5_000_000
    assert archive.mark_stable() == [st]


def test_one_failing_instance_first_in_a_batch_fails_alone(archive: Archive, monkeypatch: pytest.MonkeyPatch) -> None:
    # The batch is first tried in one transaction without savepoints; the failure rolls it back
    # and the retry with a savepoint per instance stores the rest.
    st = generate_uid()
    bad, good1, good2 = instance(study=st), instance(study=st), instance(study=st)
    real = archive.blobs.put

    def flaky_put(key, data, **kw):  # type: ignore[no-untyped-def]
        if key.endswith(f"/{_sop(bad)}.dcm"):
            raise OSError("disk full")
        return real(key, data, **kw)

    monkeypatch.setattr(archive.blobs, "put", flaky_put)
    results = archive.store_many([bad, good1, good2])
    assert [r.stored for r in results] == [False, True, True]
    assert results[0].status == status.PROCESSING_FAILURE
    assert sorted(r.sop_uid for r in archive.instances(st)) == sorted([_sop(good1), _sop(good2)])
    assert _study_row(archive, st)["num_instances"] == 2
    for data in (good1, good2):
        assert archive.blobs.read(f"{st}/{_series(data)}/{_sop(data)}.dcm") == data


@pytest.mark.parametrize("policy", ["reject", "overwrite"])
def test_the_same_instance_twice_in_one_batch_follows_the_duplicate_policy(archive: Archive, policy: str) -> None:
    archive.config = dataclasses.replace(archive.config, duplicates=policy)  # type: ignore[arg-type]
    first = instance(study_description="first")
    second = instance(sop=_sop(first), study=_study(first), series=_series(first), study_description="second")
    results = archive.store_many([first, second])
    assert results[0].stored
    if policy == "reject":
        assert results[1].status == status.DUPLICATE_SOP_INSTANCE
        expected = first
    else:
        assert results[1].stored and results[1].warnings[0][0] == status.COERCION_OF_DATA_ELEMENTS
        expected = second
    refs = archive.instances(_study(first))
    assert len(refs) == 1 and archive.blobs.read(refs[0].blob_key) == expected
    assert _study_row(archive, _study(first))["num_instances"] == 1


def test_fsck_finds_orphans_and_missing_objects_and_repairs_old_orphans(archive: Archive) -> None:
    """A kill -9 between publishing a batch's files and its index commit leaves orphan objects;
    a file removed behind the archive's back leaves a row without its object."""
    import os
    import time

    from medcloud.imaging.blobs import instance_key

    kept, lost = instance(study=generate_uid()), instance(study=generate_uid())
    r1, r2 = archive.store(kept), archive.store(lost)
    assert r1.stored and r2.stored
    lost_key = instance_key(r2.study_uid, r2.series_uid, r2.sop_instance_uid)
    archive.blobs.delete(lost_key)
    orphan_key = instance_key("1.2.826.0.1", "1.2.826.0.1.2", "1.2.826.0.1.2.3")
    archive.blobs.put(orphan_key, b"published, never indexed")
    young_key = instance_key("1.2.826.0.1", "1.2.826.0.1.2", "1.2.826.0.1.2.4")
    archive.blobs.put(young_key, b"a batch about to commit")
    staged = archive.blobs.stage(instance_key("1.2.826.0.1", "1.2.826.0.1.2", "1.2.826.0.1.2.5"), b"staged")
    root = getattr(archive.blobs, "root", None)
    assert root is not None and staged is not None
    old = time.time() - 7200
    os.utime(root / orphan_key, (old, old))
    os.utime(staged.token, (old, old))

    found = archive.check_blobs()
    assert set(found.orphans) == {orphan_key, young_key} and found.missing == (lost_key,)
    assert found.objects == 3 and found.removed == found.swept == 0  # report only
    fixed = archive.check_blobs(repair=True, min_age=3600)
    assert fixed.removed == 1 and fixed.swept == 1  # the young orphan is left for its batch
    assert not archive.blobs.exists(orphan_key) and archive.blobs.exists(young_key)
    assert archive.blobs.read(instance_key(r1.study_uid, r1.series_uid, r1.sop_instance_uid))


def test_fsck_command_reports_and_exits_1_until_repaired(services, settings) -> None:  # type: ignore[no-untyped-def]
    import os
    import time

    from typer.testing import CliRunner

    from medcloud.cli import app
    from medcloud.imaging.blobs import instance_key

    assert services.imaging is not None
    assert services.imaging.store(instance()).stored
    orphan = instance_key("1.2.826.0.9", "1.2.826.0.9.1", "1.2.826.0.9.1.1")
    services.imaging.blobs.put(orphan, b"orphan")
    root = services.imaging.blobs.root
    old = time.time() - 7200
    os.utime(root / orphan, (old, old))
    args = ["dicom", "fsck", "--data-dir", str(settings.data_dir), "--db", settings.db_url]
    first = CliRunner().invoke(app, args)
    assert first.exit_code == 1 and f"orphan: {orphan}" in first.output and "1 orphan(s), 0 missing" in first.output
    fixed = CliRunner().invoke(app, [*args, "--repair"])
    assert fixed.exit_code == 0 and "removed 1 orphan(s)" in fixed.output, fixed.output
    assert CliRunner().invoke(app, args).exit_code == 0
