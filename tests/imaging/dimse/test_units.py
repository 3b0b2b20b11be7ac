"""Pure pieces of the DIMSE package: identifier translation, presentation-context planning."""

from __future__ import annotations

import warnings

import pytest
from pydicom.dataset import Dataset
from pydicom.uid import ExplicitVRLittleEndian, JPEGBaseline8Bit

from medcloud.errors import Invalid
from medcloud.imaging.dimse import find, scu
from medcloud.imaging.dimse.remotes import resolve
from medcloud.imaging.dimse.scp import storage_contexts


def _ident(level: str, **keys: object) -> Dataset:
    ds = Dataset()
    ds.QueryRetrieveLevel = level
    with warnings.catch_warnings():  # wildcards and ranges are not valid CS/DA values, rightly so here
        warnings.simplefilter("ignore")
        for k, v in keys.items():
            setattr(ds, k, v)
    return ds


def test_identifier_to_qido_query() -> None:
    req = find.to_query(_ident("SERIES", PatientName="", StudyDate="20240101-", Modality="*",
                               SOPInstanceUID="1.2.3", StudyInstanceUID=["1.2", "1.3"]), "study")
    assert req.query.level == "series"
    # "*" is universal, a key below the level is not matched, UID lists keep their backslash
    assert dict(req.query.filters) == {"StudyDate": "20240101-", "StudyInstanceUID": "1.2\\1.3"}
    assert set(req.requested) == {0x00100010, 0x00080020, 0x00080060, 0x00080018, 0x0020000D}
    with pytest.raises(Invalid):
        find.to_query(_ident("PATIENT"), "study")
    with pytest.raises(Invalid):
        find.to_query(_ident("VOLUME"), "patient")
    patient = find.to_query(_ident("PATIENT", PatientID="P*", StudyDate="2024"), "patient")
    assert dict(patient.query.filters) == {"PatientID": "P*"}  # study keys do not filter patients


def test_storage_contexts_split_and_limit() -> None:
    ctx = storage_contexts({("1.2.840.10008.5.1.4.1.1.7", JPEGBaseline8Bit),
                            ("1.2.840.10008.5.1.4.1.1.7", ExplicitVRLittleEndian)})
    assert [c.transfer_syntax for c in ctx] == [[JPEGBaseline8Bit], [ExplicitVRLittleEndian, "1.2.840.10008.1.2"]]
    many = {(f"1.2.3.{i}", JPEGBaseline8Bit) for i in range(100)}
    with pytest.raises(Invalid):
        storage_contexts(many)
    lenient = storage_contexts(many, strict=False)
    assert len(lenient) == 128 and sum(len(c.transfer_syntax) == 2 for c in lenient) == 100


def test_cli_identifier_and_remote_resolution() -> None:
    ds = scu.identifier("study", ["PatientName=DOE*", "StudyInstanceUID", "0008,0020=20240101-"])
    assert ds.QueryRetrieveLevel == "STUDY" and ds.PatientName == "DOE*" and ds.StudyDate == "20240101-"
    assert "StudyInstanceUID" in ds and not ds.StudyInstanceUID
    for bad in (["NoSuchKey=1"], ["ReferencedSOPSequence=1"]):
        with pytest.raises(Invalid):
            scu.identifier("STUDY", bad)
    from medcloud.config import RemoteAE

    remotes = [RemoteAE(title="PACS", host="pacs", port=104)]
    assert resolve(remotes, "PACS", None, None, None) == remotes[0]
    assert resolve(remotes, "PACS", None, 11112, "OTHER").port == 11112
    with pytest.raises(Invalid):
        resolve(remotes, "NOPE", None, None, None)
    with pytest.raises(Invalid):
        resolve(remotes, None, "host-only", None, None)
