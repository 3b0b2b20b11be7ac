"""STOW-RS metadata + bulk data form (PS3.18 §10.5.1.2): DICOM JSON / XML metadata with bulk data parts.

Round trips take what WADO-RS gives (metadata, bulk data) and store it on a fresh server; the
re-stored instance must equal the original. Failures are per instance, never the whole request.
"""

from __future__ import annotations

import base64
import copy
import io
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import pydicom
import pytest
from _factory import TEST_FILES, instance
from _http import parts, stow, value
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydicom.encaps import generate_frames
from pydicom.uid import generate_uid
from starlette.applications import Starlette
from starlette.testclient import TestClient

from medcloud.app import build_services
from medcloud.config import Settings
from medcloud.errors import Invalid
from medcloud.fhir import http as fhir_http
from medcloud.imaging import native_model
from medcloud.imaging._multipart import Part, media_type, parse_related
from medcloud.imaging.dicomweb import build_archive, routes
from medcloud.imaging.stow_metadata import assemble

XML_ACCEPT = 'multipart/related; type="application/dicom+xml"'
PIXEL = "7FE00010"
BOUNDARY = "stow-meta-7"


@pytest.fixture
def fresh(tmp_path: Path) -> Iterator[TestClient]:
    """A second, empty server (SQLite, its own blobs): where the round trips store again."""
    cfg = Settings(data_dir=tmp_path / "fresh", db=f"sqlite:///{tmp_path / 'fresh.db'}", auth=False)
    svc = build_services(cfg)
    archive = build_archive(svc.settings, svc.db, svc.fhir)
    app = Starlette(routes=[*fhir_http.routes(svc.fhir), *routes(archive)])
    try:
        with TestClient(app, base_url="http://testserver") as c:
            yield c
    finally:
        svc.close()


def related(items: list[tuple[dict[str, str], bytes]], root: str = "application/dicom+json") -> tuple[bytes, str]:
    out = b""
    for headers, body in items:
        head = "".join(f"{k}: {v}\r\n" for k, v in headers.items())
        out += f"--{BOUNDARY}\r\n{head}\r\n".encode() + body + b"\r\n"
    out += f"--{BOUNDARY}--\r\n".encode()
    return out, f'multipart/related; type="{root}"; boundary={BOUNDARY}'


def post(client: TestClient, items: list[tuple[dict[str, str], bytes]], root: str = "application/dicom+json",
         path: str = "/dicomweb/studies") -> Any:
    body, ctype = related(items, root)
    return client.post(path, content=body, headers={"Content-Type": ctype, "Accept": "application/dicom+json"})


def meta_part(objs: list[dict[str, Any]]) -> tuple[dict[str, str], bytes]:
    return {"Content-Type": "application/dicom+json"}, orjson.dumps(objs)


def octets(location: str, data: bytes) -> tuple[dict[str, str], bytes]:
    return {"Content-Type": "application/octet-stream", "Content-Location": location}, data


def read(data: bytes) -> pydicom.Dataset:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return pydicom.dcmread(io.BytesIO(data))


def url(ds: pydicom.Dataset) -> str:
    return f"/dicomweb/studies/{ds.StudyInstanceUID}/series/{ds.SeriesInstanceUID}/instances/{ds.SOPInstanceUID}"


def retrieve(client: TestClient, ds: pydicom.Dataset) -> bytes:
    r = client.get(url(ds))
    assert r.status_code == 200, r.text
    [data] = parts(r)
    return data


def bulk(client: TestClient, uri: str) -> bytes:
    """The value of one BulkDataURI (WADO-RS bulk data: for Pixel Data, every frame, concatenated)."""
    r = client.get(uri)
    assert r.status_code == 200, r.text
    return b"".join(parts(r))


def bulk_uris(obj: dict[str, Any]) -> list[str]:
    return [el["BulkDataURI"] for el in obj.values() if "BulkDataURI" in el]


def assert_same_instance(a: bytes, b: bytes) -> None:
    orig, again = read(a), read(b)
    assert again.file_meta.TransferSyntaxUID == orig.file_meta.TransferSyntaxUID
    assert again.file_meta.MediaStorageSOPInstanceUID == orig.SOPInstanceUID
    assert {e.tag for e in again} == {e.tag for e in orig}
    for elem in orig:
        assert again[elem.tag].value == elem.value, elem.keyword
    assert np.array_equal(again.pixel_array, orig.pixel_array)


@pytest.fixture
def stored(dw) -> pydicom.Dataset:
    data = instance(frames=3, rows=6, columns=5)
    assert stow(dw, [data]).status_code == 200
    ds = read(data)
    ds.raw = data  # type: ignore[attr-defined]
    return ds


def test_json_metadata_and_octet_bulk_data_round_trip(dw, fresh, stored) -> None:
    [obj] = dw.get(url(stored) + "/metadata").json()
    uris = bulk_uris(obj)
    assert obj[PIXEL]["BulkDataURI"] in uris
    r = post(fresh, [meta_part([obj]), *(octets(u, bulk(dw, u)) for u in uris)])
    assert r.status_code == 200, r.text
    ref = r.json()["00081199"]["Value"][0]
    assert value(ref, "00081155") == stored.SOPInstanceUID
    again = retrieve(fresh, stored)
    assert_same_instance(stored.raw, again)
    assert read(again).file_meta.ImplementationClassUID == pynetdicom_uid()
    # The same store path as Part-10 STOW: the instance is indexed, and a second copy is a duplicate.
    assert len(fresh.get("/dicomweb/instances", params={"SOPInstanceUID": stored.SOPInstanceUID}).json()) == 1
    assert fresh.get(f"/fhir/ImagingStudy/{stored.StudyInstanceUID}").status_code == 200
    r = post(fresh, [meta_part([obj]), *(octets(u, bulk(dw, u)) for u in uris)])
    assert r.status_code == 409 and value(r.json()["00081198"]["Value"][0], "00081197") == 0x0111


def pynetdicom_uid() -> str:
    from pynetdicom import PYNETDICOM_IMPLEMENTATION_UID

    return str(PYNETDICOM_IMPLEMENTATION_UID)


@pytest.mark.parametrize("relative", ["metadata", "location"])
def test_bulk_data_uri_and_content_location_match_relative_or_absolute(dw, fresh, stored, relative) -> None:
    [obj] = dw.get(url(stored) + "/metadata").json()
    uri = obj[PIXEL]["BulkDataURI"]
    value_bytes = bulk(dw, uri)
    short = uri.removeprefix("http://testserver/dicomweb/")
    assert short.startswith("studies/")
    location = uri
    if relative == "metadata":  # relative to the DICOMweb root, as medcloud stores it
        obj[PIXEL]["BulkDataURI"] = short
    else:  # relative to the request URL /dicomweb/studies
        location = short.removeprefix("studies/")
    r = post(fresh, [meta_part([obj]), octets(location, value_bytes)])
    assert r.status_code == 200, r.text
    assert_same_instance(stored.raw, retrieve(fresh, stored))


def test_xml_metadata_round_trip(dw, fresh, stored) -> None:
    r = dw.get(url(stored) + "/metadata", headers={"Accept": XML_ACCEPT})
    _, params = media_type(r.headers["content-type"])
    [doc] = [p.body for p in parse_related(r.content, params["boundary"])]
    obj = native_model.from_xml(doc)
    uris = bulk_uris(obj)
    assert uris
    items = [({"Content-Type": "application/dicom+xml; charset=utf-8"}, doc), *(octets(u, bulk(dw, u)) for u in uris)]
    r = post(fresh, items, root="application/dicom+xml")
    assert r.status_code == 200, r.text
    assert_same_instance(stored.raw, retrieve(fresh, stored))


def test_from_xml_is_the_inverse_of_to_xml() -> None:
    obj = {
        "00080005": {"vr": "CS", "Value": ["ISO_IR 192"]},
        "00100010": {"vr": "PN", "Value": [{"Alphabetic": "Müller^Zoë", "Ideographic": "山田^太郎"}]},
        "00181050": {"vr": "DS", "Value": [0.5, 2]},
        "00280010": {"vr": "US", "Value": [8]},
        "00201041": {"vr": "DS"},
        "00080008": {"vr": "CS", "Value": ["ORIGINAL", None, "AXIAL"]},
        "00090010": {"vr": "LO", "Value": ["ACME"]},
        "00091011": {"vr": "OB", "InlineBinary": base64.b64encode(b"\x01\x02").decode()},
        "00091012": {"vr": "LO", "Value": ["private text"]},
        "00400275": {"vr": "SQ", "Value": [{"00321060": {"vr": "LO", "Value": ["Chest"]}}, {}]},
        "7FE00010": {"vr": "OW", "BulkDataURI": "http://x/bulk/1"},
    }
    # (0009,0010) is the Private Creator of block 0x10: it comes back for the private element.
    assert native_model.from_xml(native_model.to_xml(obj)) == obj


@pytest.mark.parametrize("doc", [b"<NativeDicomModel", b"<Other xmlns='x'/>", b"not xml at all",
                                 b'<!DOCTYPE x [<!ENTITY a "b">]><NativeDicomModel/>',
                                 b'<NativeDicomModel xmlns="http://dicom.nema.org/PS3.19/models/NativeDICOM">'
                                 b'<DicomAttribute tag="XYZ" vr="CS"/></NativeDicomModel>'])
def test_malformed_xml_metadata_is_400(dw, doc) -> None:
    r = post(dw, [({"Content-Type": "application/dicom+xml"}, doc)], root="application/dicom+xml")
    assert r.status_code == 400, r.text
    assert r.json()["category"] == "invalid"


@pytest.mark.parametrize("doc", [b"{not json", b"[1, 2]", b"[]", b'"text"'])
def test_malformed_json_metadata_is_400(dw, doc) -> None:
    r = post(dw, [({"Content-Type": "application/dicom+json"}, doc)])
    assert r.status_code == 400, r.text


def test_other_request_types_are_still_415(dw) -> None:
    body, _ = related([({"Content-Type": "application/pdf"}, b"%PDF")])
    r = dw.post("/dicomweb/studies", content=body,
                headers={"Content-Type": f'multipart/related; type="application/pdf"; boundary={BOUNDARY}'})
    assert r.status_code == 415 and r.json()["category"] == "unsupported-media"


def _jpeg() -> tuple[bytes, pydicom.Dataset]:
    data = (TEST_FILES / "SC_rgb_jpeg_dcmtk.dcm").read_bytes()
    ds = read(data)
    assert ds.file_meta.TransferSyntaxUID == "1.2.840.10008.1.2.4.50"
    return data, ds


def test_jpeg_pixel_data_round_trips_in_its_transfer_syntax(dw, fresh) -> None:
    data, ds = _jpeg()
    assert stow(dw, [data]).status_code == 200
    [obj] = dw.get(url(ds) + "/metadata").json()
    frames = list(generate_frames(ds.PixelData, number_of_frames=1))
    uri = obj[PIXEL]["BulkDataURI"]
    jpeg = {"Content-Type": "image/jpeg; transfer-syntax=1.2.840.10008.1.2.4.50", "Content-Location": uri}
    others = [octets(u, bulk(dw, u)) for u in bulk_uris(obj) if u != uri]
    r = post(fresh, [meta_part([obj]), (jpeg, frames[0]), *others])
    assert r.status_code == 200, r.text
    again = read(retrieve(fresh, ds))
    assert again.file_meta.TransferSyntaxUID == "1.2.840.10008.1.2.4.50"
    assert list(generate_frames(again.PixelData, number_of_frames=1)) == frames
    assert_same_instance(data, retrieve(fresh, ds))


def test_compressed_frames_as_separate_parts_are_encapsulated_in_order(dw, fresh, stored) -> None:
    """Three RLE frames, one part each at ``{BulkDataURI}/frames/n`` (frames of a multi-frame image)."""
    from pydicom.pixels.encoders.base import RLELosslessEncoder

    [obj] = dw.get(url(stored) + "/metadata").json()
    uri = obj[PIXEL]["BulkDataURI"]
    arr = stored.pixel_array
    encoded = [RLELosslessEncoder.encode(arr[n], rows=6, columns=5, samples_per_pixel=1, bits_allocated=16,
                                         bits_stored=12, pixel_representation=0, photometric_interpretation="MONOCHROME2",
                                         number_of_frames=1) for n in range(3)]
    items = [({"Content-Type": "image/dicom-rle", "Content-Location": f"{uri}/frames/{n + 1}"}, f)
             for n, f in enumerate(encoded)]
    r = post(fresh, [meta_part([obj]), *reversed(items)])
    assert r.status_code == 200, r.text
    again = read(retrieve(fresh, stored))
    assert again.file_meta.TransferSyntaxUID == "1.2.840.10008.1.2.5"
    assert np.array_equal(again.pixel_array, arr)


def test_each_failure_is_that_instances_alone(dw, stored) -> None:
    [obj] = dw.get(url(stored) + "/metadata").json()
    uri = obj[PIXEL]["BulkDataURI"]
    pixels = bulk(dw, uri)
    study = generate_uid()

    def variant(**changes: Any) -> dict[str, Any]:
        o = copy.deepcopy(obj)
        o["0020000D"] = {"vr": "UI", "Value": [study]}
        o["00080018"] = {"vr": "UI", "Value": [generate_uid()]}
        for tag, el in changes.items():
            if el is None:
                o.pop(tag, None)
            else:
                o[tag] = el
        return o

    good = variant()
    no_sop = variant(**{"00080018": None})
    no_part = variant(**{PIXEL: {"vr": "OW", "BulkDataURI": "http://testserver/nowhere/1"}})
    bad_b64 = variant(**{PIXEL: {"vr": "OW", "InlineBinary": "@@not base64@@"}})
    short = variant(**{PIXEL: {"vr": "OW", "BulkDataURI": "short-pixels"}})
    odd_type = variant(**{PIXEL: {"vr": "OB", "BulkDataURI": "odd-type"}})
    r = post(dw, [meta_part([good, no_sop, no_part, bad_b64, short, odd_type]), octets(uri, pixels),
                  octets("short-pixels", pixels[:-4]),
                  ({"Content-Type": "image/x-unknown", "Content-Location": "odd-type"}, b"\xff\xd8")])
    assert r.status_code == 202, r.text
    body = r.json()
    [ok] = body["00081199"]["Value"]
    assert value(ok, "00081155") == value(good, "00080018")
    failed = {value(f, "00081155"): (value(f, "00081197"), value(f, "00000902")) for f in body["00081198"]["Value"]}
    assert failed[None][0] == 0xA900 and "SOPInstanceUID" in failed[None][1]
    assert failed[value(no_part, "00080018")][0] == 0xC000
    assert failed[value(bad_b64, "00080018")][0] == 0xC000
    assert failed[value(short, "00080018")][0] == 0xA900
    assert failed[value(odd_type, "00080018")][0] == 0xC000
    assert len(failed) == 5
    # Nothing of the failed instances was stored.
    stored_uids = [value(o, "00080018") for o in dw.get(f"/dicomweb/studies/{study}/instances").json()]
    assert stored_uids == [value(good, "00080018")]


def test_study_in_the_path_refuses_instances_of_other_studies(dw, fresh, stored) -> None:
    [obj] = dw.get(url(stored) + "/metadata").json()
    uri = obj[PIXEL]["BulkDataURI"]
    r = post(fresh, [meta_part([obj]), octets(uri, bulk(dw, uri))], path=f"/dicomweb/studies/{generate_uid()}")
    assert r.status_code == 409
    assert value(r.json()["00081198"]["Value"][0], "00081197") == 0xA900


def test_several_json_parts_and_inline_pixel_data(fresh) -> None:
    datas = [instance(rows=2, columns=2), instance(rows=2, columns=3)]
    objs = []
    for d in datas:
        ds = read(d)
        objs.append(ds.to_json_dict(bulk_data_threshold=10_000))
        assert "InlineBinary" in objs[-1][PIXEL]
    r = post(fresh, [meta_part([objs[0]]), meta_part([objs[1]])])
    assert r.status_code == 200, r.text
    for d in datas:
        assert_same_instance(d, retrieve(fresh, read(d)))


def test_non_ascii_text_without_a_character_set_is_stored_as_utf8(fresh) -> None:
    ds = read(instance(rows=2, columns=2))
    obj = ds.to_json_dict(bulk_data_threshold=10_000)
    obj["00100010"] = {"vr": "PN", "Value": [{"Alphabetic": "Müller^Zoë", "Ideographic": "山田^太郎"}]}
    r = post(fresh, [meta_part([obj])])
    assert r.status_code == 200, r.text
    again = read(retrieve(fresh, ds))
    assert again.SpecificCharacterSet == "ISO_IR 192"
    assert str(again.PatientName) == "Müller^Zoë=山田^太郎"


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.binary(max_size=300) | st.text(max_size=200).map(str.encode))
def test_from_xml_never_fails_other_than_invalid(doc: bytes) -> None:
    try:
        native_model.from_xml(b'<NativeDicomModel xmlns="http://dicom.nema.org/PS3.19/models/NativeDICOM">'
                              + doc + b"</NativeDicomModel>")
        native_model.from_xml(doc)
    except Invalid:
        pass


_JSON = st.recursive(st.none() | st.booleans() | st.integers(-(2**40), 2**40) | st.floats(allow_nan=False) | st.text(max_size=12),
                     lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=9), inner, max_size=4),
                     max_leaves=20)
_ELEMENT = st.fixed_dictionaries({}, optional={"vr": st.sampled_from(["UI", "OB", "OW", "PN", "SQ", "DS", "US", "XX"]),
                                               "Value": _JSON, "InlineBinary": _JSON, "BulkDataURI": _JSON})


@settings(max_examples=300, deadline=None)
@given(st.lists(st.dictionaries(st.sampled_from(["00080016", "00080018", "00100010", "00280010", "7FE00010",
                                                 "7fe00010", "0002001", "ZZZZZZZZ"]), _ELEMENT, max_size=5),
                max_size=3))
def test_any_json_instance_is_built_or_refused_alone(objs: list[dict[str, Any]]) -> None:
    part = Part({"content-type": "application/dicom+json"}, orjson.dumps(objs))
    try:
        built = assemble([part], "application/dicom+json", bases=("http://h/dicomweb/studies",))
    except Invalid:
        assert not objs
        return
    assert len(built) == len(objs)
    assert all((b.data is None) != (b.error is None) for b in built)
