"""Configured extra matching keys (dicom_extra_tags): indexed on store, matched by QIDO and C-FIND."""

from __future__ import annotations

import dataclasses
import io

import pydicom
import pytest
from _factory import instance
from pydantic import ValidationError
from pydicom.dataset import Dataset
from pydicom.uid import generate_uid

from medcloud.config import Settings
from medcloud.errors import Invalid
from medcloud.imaging import qido
from medcloud.imaging.archive import Archive
from medcloud.imaging.dimse import find
from medcloud.imaging.extra_tags import normalise_tag

INSTITUTION, STATION, ACQ_DATE = "00080080", "00081010", "00080022"


def _with(data: bytes, **attrs: object) -> bytes:
    ds = pydicom.dcmread(io.BytesIO(data))
    for k, v in attrs.items():
        setattr(ds, k, v)
    out = io.BytesIO()
    ds.save_as(out, enforce_file_format=True)
    return out.getvalue()


@pytest.fixture
def extra(archive: Archive) -> Archive:
    archive.config = dataclasses.replace(archive.config, extra_tags=(INSTITUTION, STATION, ACQ_DATE))
    return archive


def _studies(archive: Archive, level: qido.Level = "study", **params: str) -> list[dict]:
    q = qido.parse_query(level, list(params.items()), extra_tags=archive.config.extra_tags)
    assert not q.warnings, q.warnings
    return qido.search(archive.db, q)[0]


def _uids(results: list[dict], tag: str = "0020000D") -> set[str]:
    return {r[tag]["Value"][0] for r in results}


def test_tags_are_named_by_keyword_or_tag_and_unindexable_ones_are_refused() -> None:
    assert normalise_tag("InstitutionName") == normalise_tag("00080080") == normalise_tag("(0008,0080)") == INSTITUTION
    for bad in ("NoSuchKeyword", "00091010", "ReferencedSeriesSequence", "PixelData", "7FE00010"):
        with pytest.raises(ValueError):
            normalise_tag(bad)
    assert Settings(dicom_extra_tags=["StationName", "00080080"]).dicom_extra_tags == [STATION, INSTITUTION]
    with pytest.raises(ValidationError, match="private"):
        Settings(dicom_extra_tags=["00091010"])


def test_extra_keys_match_at_every_level_with_wildcards_lists_and_ranges(extra: Archive) -> None:
    st1, st2 = generate_uid(), generate_uid()
    a = _with(instance(study=st1), InstitutionName="General Hospital", StationName="CT01", AcquisitionDate="20240301")
    b = _with(instance(study=st1), InstitutionName="General Hospital", StationName="CT02", AcquisitionDate="20240302")
    c = _with(instance(study=st2), InstitutionName="Children's Clinic", StationName=["MR1", "MR2"],
              AcquisitionDate="20231231")
    assert all(r.stored for r in extra.store_many([a, b, c]))
    assert _uids(_studies(extra, InstitutionName="General Hospital")) == {st1}
    assert _uids(_studies(extra, InstitutionName="*Clinic")) == {st2}
    assert _uids(_studies(extra, StationName="MR2")) == {st2}  # any value of a multi-valued attribute
    assert _uids(_studies(extra, StationName="CT02,MR1")) == {st1, st2}
    assert _uids(_studies(extra, AcquisitionDate="20240101-")) == {st1}
    assert _uids(_studies(extra, **{"00081010": "CT0?"})) == {st1}  # by tag too
    series = _studies(extra, "series", StationName="CT01")
    assert len(series) == 1 and series[0]["0020000D"]["Value"] == [st1]
    inst = _studies(extra, "instance", StationName="CT02")
    assert [r["00080018"]["Value"][0] for r in inst] == [pydicom.dcmread(io.BytesIO(b)).SOPInstanceUID]
    # the matched attribute comes back in the result (from a representative instance)
    assert inst[0][STATION]["Value"] == ["CT02"]
    # combined with a built-in key
    assert _uids(_studies(extra, InstitutionName="General*", PatientID="nobody")) == set()


ACQ_DATETIME = "0008002A"


def test_date_time_keys_match_spans_ranges_and_offsets(archive: Archive) -> None:
    """DT (PS3.4 C.2.2.2.5): a partial value is the span it names, ranges are inclusive, offsets are
    compared in UTC, and '-' as an offset sign is not taken for the range separator."""
    archive.config = dataclasses.replace(archive.config, extra_tags=(ACQ_DATETIME,))
    st1, st2, st3 = generate_uid(), generate_uid(), generate_uid()
    assert all(r.stored for r in archive.store_many([
        _with(instance(study=st1), AcquisitionDateTime="20240301101530.25"),
        _with(instance(study=st2), AcquisitionDateTime="20240301233000+0200"),  # 21:30 UTC
        _with(instance(study=st3), AcquisitionDateTime="20231231"),
    ]))
    assert _uids(_studies(archive, AcquisitionDateTime="20240301")) == {st1, st2}
    assert _uids(_studies(archive, AcquisitionDateTime="2023")) == {st3}
    assert _uids(_studies(archive, AcquisitionDateTime="2024030110")) == {st1}
    assert _uids(_studies(archive, AcquisitionDateTime="20240301200000-20240301220000")) == {st2}
    assert _uids(_studies(archive, AcquisitionDateTime="-202312")) == {st3}
    assert _uids(_studies(archive, AcquisitionDateTime="20240301220000+0000-")) == set()
    # 21:30 UTC is 16:30 at -0500: the '-' of the offset is not the range separator
    assert _uids(_studies(archive, AcquisitionDateTime="202403011630-0500")) == {st2}
    assert _uids(_studies(archive, AcquisitionDateTime="202403011600-0500-202403011700-0500")) == {st2}
    for bad in ("20241301", "2024030125", "20240301-20230101", "abc"):
        with pytest.raises(Invalid):
            _studies(archive, AcquisitionDateTime=bad)


def test_unconfigured_keys_are_ignored_with_a_warning(archive: Archive) -> None:
    q = qido.parse_query("study", [("InstitutionName", "X")])
    assert q.filters == () and any("InstitutionName" in w for w in q.warnings)


def test_overwrite_and_delete_keep_the_index_right(extra: Archive) -> None:
    extra.config = dataclasses.replace(extra.config, duplicates="overwrite")
    first = _with(instance(), InstitutionName="Old Name")
    ds = pydicom.dcmread(io.BytesIO(first))
    assert extra.store(first).stored
    assert extra.store(_with(first, InstitutionName="New Name")).stored
    assert _studies(extra, InstitutionName="Old Name") == []
    assert _uids(_studies(extra, InstitutionName="New Name")) == {ds.StudyInstanceUID}
    extra.delete(ds.StudyInstanceUID)
    with extra.db.read() as conn:
        assert conn.exec_driver_sql("SELECT count(*) FROM dicom_extra_index").scalar() == 0


def test_reindex_indexes_instances_stored_before_the_tag_was_configured(archive: Archive) -> None:
    data = _with(instance(), InstitutionName="Before", AcquisitionDate="20200202")
    assert archive.store(data).stored
    archive.config = dataclasses.replace(archive.config, extra_tags=(INSTITUTION, ACQ_DATE))
    assert _studies(archive, InstitutionName="Before") == []  # not indexed yet
    assert archive.reindex_extra(batch=1) == 1
    study = pydicom.dcmread(io.BytesIO(data)).StudyInstanceUID
    assert _uids(_studies(archive, InstitutionName="Before")) == {study}
    assert _uids(_studies(archive, AcquisitionDate="20200202")) == {study}
    archive.config = dataclasses.replace(archive.config, extra_tags=())
    assert archive.reindex_extra() == 1
    with archive.db.read() as conn:
        assert conn.exec_driver_sql("SELECT count(*) FROM dicom_extra_index").scalar() == 0


def test_c_find_matches_extra_keys(extra: Archive) -> None:
    st = generate_uid()
    assert extra.store(_with(instance(study=st), InstitutionName="Find Me")).stored
    assert extra.store(_with(instance(), InstitutionName="Not Me")).stored
    ident = Dataset()
    ident.QueryRetrieveLevel = "STUDY"
    ident.StudyInstanceUID = ""
    ident.InstitutionName = "Find*"
    req = find.to_query(ident, "study", extra.config.extra_tags)
    found = list(find.run(extra.db, req))
    assert [ds.StudyInstanceUID for ds in found] == [st]
    assert find.to_query(ident, "study").query.filters == ()  # not configured: not matched


def test_archive_policy_comes_from_the_settings(services) -> None:  # type: ignore[no-untyped-def]
    from medcloud.imaging import status
    from medcloud.imaging.dicomweb import build_archive

    settings = services.settings.with_overrides(dicom_duplicates="overwrite", dicom_max_instance_mb=1,
                                                dicom_stable_after=0.5, dicom_extra_tags=["InstitutionName"])
    archive = build_archive(settings, services.db, services.fhir)
    assert (archive.config.duplicates, archive.config.max_instance_bytes, archive.config.stable_after_seconds,
            archive.config.extra_tags) == ("overwrite", 1024 * 1024, 0.5, (INSTITUTION,))
    big = instance(rows=800, columns=800)  # 1.28 MB of pixels
    assert archive.store(big).status == status.OUT_OF_RESOURCES
    data = instance()
    assert archive.store(data).stored
    again = archive.store(data)
    assert again.stored and again.warnings[0][0] == status.COERCION_OF_DATA_ELEMENTS
