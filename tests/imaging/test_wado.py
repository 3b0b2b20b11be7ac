"""WADO-RS (PS3.18 §10.4): instances, metadata, frames, bulk data, rendered/thumbnail, and DELETE."""

from __future__ import annotations

import io

import numpy as np
import pytest
from _factory import TEST_FILES, instance, pixels
from _http import parts, stow
from PIL import Image
from pydicom.uid import generate_uid

MULTI_DICOM = 'multipart/related; type="application/dicom"'


@pytest.fixture
def study(dw):
    st, se = generate_uid(), generate_uid()
    datas = [instance(study=st, series=se, instance_number=n, rows=16, columns=12, frames=3 if n == 2 else 1)
             for n in (1, 2)]
    assert stow(dw, datas).status_code == 200
    return st, se, datas


def _sop(data: bytes) -> str:
    import pydicom

    return str(pydicom.dcmread(io.BytesIO(data)).SOPInstanceUID)


def test_retrieve_study_series_and_instance_return_the_stored_bytes(dw, study) -> None:
    st, se, datas = study
    for path in (f"/dicomweb/studies/{st}", f"/dicomweb/studies/{st}/series/{se}"):
        r = dw.get(path, headers={"Accept": MULTI_DICOM + "; transfer-syntax=*"})
        assert r.status_code == 200
        assert r.headers["content-type"].startswith("multipart/related")
        assert parts(r) == datas
    r = dw.get(f"/dicomweb/studies/{st}/series/{se}/instances/{_sop(datas[1])}", headers={"Accept": MULTI_DICOM})
    assert parts(r) == [datas[1]]


def test_retrieve_in_a_lossy_or_unknown_transfer_syntax_is_406(dw, study) -> None:
    st, _, _ = study
    for ts in ("1.2.840.10008.1.2.4.50", "1.2.840.10008.1.2.4.91", "1.2.3.4"):  # JPEG baseline, lossy J2K
        r = dw.get(f"/dicomweb/studies/{st}", headers={"Accept": MULTI_DICOM + f"; transfer-syntax={ts}"})
        assert r.status_code == 406, ts
    r = dw.get(f"/dicomweb/studies/{st}", headers={"Accept": MULTI_DICOM + "; transfer-syntax=1.2.840.10008.1.2.1"})
    assert r.status_code == 200


def test_metadata_is_dicom_json_with_bulk_data_uris(dw, study) -> None:
    st, se, datas = study
    r = dw.get(f"/dicomweb/studies/{st}/metadata")
    assert r.headers["content-type"].startswith("application/dicom+json")
    objs = r.json()
    assert len(objs) == 2
    first = objs[0]
    assert first["00080018"]["Value"] == [_sop(datas[0])]
    assert first["00100010"] == {"vr": "PN", "Value": [{"Alphabetic": "Doe^Jane"}]}
    assert first["00280010"] == {"vr": "US", "Value": [16]}
    assert first["00020010"]["Value"] == ["1.2.840.10008.1.2.1"]
    uri = first["7FE00010"]["BulkDataURI"]
    assert uri == f"http://testserver/dicomweb/studies/{st}/series/{se}/instances/{_sop(datas[0])}/bulkdata/7fe00010"
    assert len(dw.get(f"/dicomweb/studies/{st}/series/{se}/metadata").json()) == 2
    one = dw.get(f"/dicomweb/studies/{st}/series/{se}/instances/{_sop(datas[1])}/metadata").json()
    assert one[0]["00280008"]["Value"] in ([3], ["3"])


def test_metadata_matches_pydicom_json_for_a_real_file(dw) -> None:
    import pydicom

    data = (TEST_FILES / "MR_small.dcm").read_bytes()
    assert stow(dw, [data]).status_code in (200, 202)
    ds = pydicom.dcmread(io.BytesIO(data))
    [md] = dw.get(f"/dicomweb/studies/{ds.StudyInstanceUID}/series/{ds.SeriesInstanceUID}/instances/"
                  f"{ds.SOPInstanceUID}/metadata").json()
    expected = ds.to_json_dict(1024, lambda e: "x")
    for tag, el in expected.items():
        if "BulkDataURI" in el:
            assert "BulkDataURI" in md[tag]
        else:
            assert md[tag] == el, tag
    back = pydicom.Dataset.from_json({k: v for k, v in md.items() if "BulkDataURI" not in v})
    assert back.PatientName == ds.PatientName


def test_frames_are_uncompressed_octets(dw, study) -> None:
    st, se, datas = study
    sop = _sop(datas[1])
    r = dw.get(f"/dicomweb/studies/{st}/series/{se}/instances/{sop}/frames/1,3",
               headers={"Accept": 'multipart/related; type="application/octet-stream"'})
    assert r.status_code == 200
    frames = parts(r)
    arr = pixels(datas[1])
    assert frames == [arr[0].tobytes(), arr[2].tobytes()]
    r = dw.get(f"/dicomweb/studies/{st}/series/{se}/instances/{sop}/frames/4")
    assert r.status_code == 404


def test_frames_of_a_compressed_instance_are_decoded(dw) -> None:
    import pydicom

    data = (TEST_FILES / "MR_small_jpeg_ls_lossless.dcm").read_bytes()
    ds = pydicom.dcmread(io.BytesIO(data))
    assert stow(dw, [data]).status_code in (200, 202)
    r = dw.get(f"/dicomweb/studies/{ds.StudyInstanceUID}/series/{ds.SeriesInstanceUID}/instances/"
               f"{ds.SOPInstanceUID}/frames/1")
    assert r.status_code == 200
    [frame] = parts(r)
    assert np.frombuffer(frame, dtype=ds.pixel_array.dtype).reshape(ds.pixel_array.shape).tolist() == \
        ds.pixel_array.tolist()


def test_rendered_and_thumbnail_are_images(dw, study) -> None:
    st, se, datas = study
    base = f"/dicomweb/studies/{st}/series/{se}/instances/{_sop(datas[1])}"
    r = dw.get(base + "/rendered", headers={"Accept": "image/jpeg"})
    assert r.status_code == 200 and r.headers["content-type"] == "image/jpeg"
    assert Image.open(io.BytesIO(r.content)).size == (12, 16)
    r = dw.get(base + "/frames/2/rendered", params={"window": "500,1000", "viewport": "6,8"},
               headers={"Accept": "image/png"})
    assert r.headers["content-type"] == "image/png"
    assert Image.open(io.BytesIO(r.content)).size == (6, 8)
    r = dw.get(base + "/thumbnail")
    assert r.status_code == 200 and Image.open(io.BytesIO(r.content)).format == "JPEG"
    assert dw.get(base + "/rendered", params={"window": "abc"}).status_code == 400


def test_bulkdata_returns_the_pixel_data(dw, study) -> None:
    st, se, datas = study
    md = dw.get(f"/dicomweb/studies/{st}/series/{se}/instances/{_sop(datas[0])}/metadata").json()[0]
    r = dw.get(md["7FE00010"]["BulkDataURI"].replace("http://testserver", ""))
    assert r.status_code == 200
    assert parts(r) == [pixels(datas[0]).tobytes()]


def test_unknown_and_malformed_uids_are_404_and_400(dw, study) -> None:
    st, se, _ = study
    assert dw.get(f"/dicomweb/studies/{generate_uid()}").status_code == 404
    assert dw.get(f"/dicomweb/studies/{st}/series/{generate_uid()}/metadata").status_code == 404
    r = dw.get("/dicomweb/studies/not-a-uid/metadata")
    assert r.status_code == 400 and r.json()["category"] == "invalid"
    assert dw.get(f"/dicomweb/studies/{st}/series/{se}/instances/1.2/frames/x").status_code == 400


def test_delete_instance_series_and_study(dw, study) -> None:
    st, se, datas = study
    assert dw.delete(f"/dicomweb/studies/{st}/series/{se}/instances/{_sop(datas[0])}").status_code == 204
    [s] = dw.get("/dicomweb/studies", params={"StudyInstanceUID": st}).json()
    assert s["00201208"]["Value"] == [1]
    assert dw.delete(f"/dicomweb/studies/{st}").status_code == 204
    assert dw.get(f"/dicomweb/studies/{st}/metadata").status_code == 404
    assert dw.delete(f"/dicomweb/studies/{st}").status_code == 404


def test_retrieve_transcodes_compressed_to_explicit_little_endian(dw) -> None:
    import pydicom

    data = (TEST_FILES / "MR_small_jpeg_ls_lossless.dcm").read_bytes()
    ds = pydicom.dcmread(io.BytesIO(data))
    assert stow(dw, [data]).status_code in (200, 202)
    path = f"/dicomweb/studies/{ds.StudyInstanceUID}/series/{ds.SeriesInstanceUID}/instances/{ds.SOPInstanceUID}"
    as_stored = parts(dw.get(path, headers={"Accept": MULTI_DICOM + "; transfer-syntax=*"}))
    assert as_stored == [data]
    for ts in ("1.2.840.10008.1.2.1", "1.2.840.10008.1.2"):
        r = dw.get(path, headers={"Accept": MULTI_DICOM + f"; transfer-syntax={ts}"})
        assert r.status_code == 200
        [out] = parts(r)
        back = pydicom.dcmread(io.BytesIO(out))
        assert back.file_meta.TransferSyntaxUID == ts
        assert back.pixel_array.tolist() == ds.pixel_array.tolist()


@pytest.mark.parametrize("ts", ["1.2.840.10008.1.2.5", "1.2.840.10008.1.2.4.90", "1.2.840.10008.1.2.4.80",
                                "1.2.840.10008.1.2.1.99"])
def test_retrieve_transcodes_losslessly_to_compressed_syntaxes(dw, ts: str) -> None:
    """RLE, JPEG 2000 lossless, JPEG-LS lossless, Deflate: from uncompressed and from another
    compressed syntax; the pixels read back equal the stored ones."""
    import pydicom

    jls = (TEST_FILES / "MR_small_jpeg_ls_lossless.dcm").read_bytes()
    plain = instance(rows=64, columns=64, frames=3)
    assert stow(dw, [jls, plain]).status_code in (200, 202)
    for data in (jls, plain):
        ds = pydicom.dcmread(io.BytesIO(data))
        path = f"/dicomweb/studies/{ds.StudyInstanceUID}/series/{ds.SeriesInstanceUID}/instances/{ds.SOPInstanceUID}"
        r = dw.get(path, headers={"Accept": MULTI_DICOM + f"; transfer-syntax={ts}"})
        assert r.status_code == 200, r.text
        assert f"transfer-syntax={ts}" in r.text[:2000]  # the part's Content-Type names it
        [out] = parts(r)
        back = pydicom.dcmread(io.BytesIO(out))
        assert back.file_meta.TransferSyntaxUID == ts
        assert back.SOPInstanceUID == ds.SOPInstanceUID
        assert back.pixel_array.tolist() == ds.pixel_array.tolist()


def test_an_image_the_encoder_cannot_take_is_406_not_a_cut_stream(dw) -> None:
    import pydicom

    tiny = instance(rows=8, columns=8)  # below OpenJPEG's minimum for its default resolution levels
    ds = pydicom.dcmread(io.BytesIO(tiny))
    assert stow(dw, [tiny]).status_code in (200, 202)
    path = f"/dicomweb/studies/{ds.StudyInstanceUID}/series/{ds.SeriesInstanceUID}/instances/{ds.SOPInstanceUID}"
    r = dw.get(path, headers={"Accept": MULTI_DICOM + "; transfer-syntax=1.2.840.10008.1.2.4.90"})
    assert r.status_code == 406 and ds.SOPInstanceUID in r.text
    r = dw.get(path, headers={"Accept": MULTI_DICOM + "; transfer-syntax=1.2.840.10008.1.2.5"})  # RLE takes it
    assert r.status_code == 200
