"""dicomweb-client (the reference Python DICOMweb client) against a live server: STOW, QIDO, WADO."""

from __future__ import annotations

import io

import pydicom
import pytest
from _factory import TEST_FILES, instance, pixels
from pydicom.uid import generate_uid

pytestmark = pytest.mark.integration


def _ds(data: bytes) -> pydicom.Dataset:
    return pydicom.dcmread(io.BytesIO(data))


def test_dicomweb_client_round_trip(dicomweb_live: str) -> None:
    from dicomweb_client.api import DICOMwebClient

    client = DICOMwebClient(url=dicomweb_live)
    st, se = generate_uid(), generate_uid()
    datas = [instance(study=st, series=se, patient_id="DWC-1", instance_number=n, frames=2) for n in (1, 2)]
    datasets = [_ds(d) for d in datas]
    mr = _ds((TEST_FILES / "MR_small.dcm").read_bytes())

    response = client.store_instances(datasets=[*datasets, mr])
    assert len(response.ReferencedSOPSequence) == 3

    studies = client.search_for_studies(search_filters={"PatientID": "DWC-1"})
    assert [s["0020000D"]["Value"][0] for s in studies] == [st]
    series = client.search_for_series(st)
    assert [s["0020000E"]["Value"][0] for s in series] == [se]
    insts = client.search_for_instances(st, se, fields=["Rows"], limit=1, offset=1)
    assert len(insts) == 1 and insts[0]["00080018"]["Value"][0] == datasets[1].SOPInstanceUID

    sop = datasets[0].SOPInstanceUID
    got = client.retrieve_instance(st, se, sop)
    assert got.SOPInstanceUID == sop and got.pixel_array.tolist() == pixels(datas[0]).tolist()
    assert sorted(d.SOPInstanceUID for d in client.retrieve_study(st)) == sorted(d.SOPInstanceUID for d in datasets)
    assert len(client.retrieve_series(st, se)) == 2

    md = client.retrieve_series_metadata(st, se)
    assert len(md) == 2 and pydicom.Dataset.from_json(md[0], lambda *a: b"").PatientID == "DWC-1"
    frames = client.retrieve_instance_frames(st, se, sop, frame_numbers=[2])
    assert frames == [pixels(datas[0])[1].tobytes()]
    jpeg = client.retrieve_instance_rendered(st, se, sop, media_types=("image/jpeg",))
    assert jpeg[:2] == b"\xff\xd8"

    client.delete_study(st)
    assert client.search_for_studies(search_filters={"PatientID": "DWC-1"}) == []
