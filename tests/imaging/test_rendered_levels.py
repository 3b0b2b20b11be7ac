"""Rendered and thumbnail resources at study, series, instance and frame level (PS3.18 §10.4.1.1.3-4)."""

from __future__ import annotations

import io

import pytest
from _factory import instance
from _http import stow
from PIL import Image
from pydicom.uid import generate_uid

from medcloud.imaging._multipart import media_type, parse_related

JPEG, PNG, GIF = b"\xff\xd8\xff", b"\x89PNG\r\n\x1a\n", b"GIF8"
MULTI_JPEG = 'multipart/related; type="image/jpeg"'


@pytest.fixture
def study(dw):
    """Series 1: a 16x12 single-frame image and a 3-frame one; series 2: one 20x10 image; series 3: no pixels."""
    st, se1, se2, se3 = generate_uid(), generate_uid(), generate_uid(), generate_uid()
    sops = [generate_uid() for _ in range(4)]
    datas = [
        instance(study=st, series=se1, sop=sops[0], instance_number=1, rows=16, columns=12),
        instance(study=st, series=se1, sop=sops[1], instance_number=2, rows=16, columns=12, frames=3),
        instance(study=st, series=se2, sop=sops[2], series_number=2, instance_number=1, rows=20, columns=10),
        instance(study=st, series=se3, sop=sops[3], series_number=3, instance_number=1,
                 drop=("PixelData", "Rows", "Columns", "BitsAllocated", "BitsStored", "HighBit",
                       "PixelRepresentation", "SamplesPerPixel", "PhotometricInterpretation")),
    ]
    assert stow(dw, datas).status_code == 200
    return st, (se1, se2, se3), sops


def _parts(resp) -> list[tuple[dict[str, str], bytes]]:
    _, params = media_type(resp.headers["content-type"])
    return [(p.headers, p.body) for p in parse_related(resp.content, params["boundary"])]


def _size(img: bytes) -> tuple[int, int]:
    return Image.open(io.BytesIO(img)).size


def test_rendered_study_is_one_jpeg_part_per_frame_of_every_image(dw, study) -> None:
    st, (se1, se2, _), sops = study
    r = dw.get(f"/dicomweb/studies/{st}/rendered", headers={"Accept": MULTI_JPEG})
    assert r.status_code == 200, r.text
    assert media_type(r.headers["content-type"])[1]["type"] == "image/jpeg"
    parts = _parts(r)
    # 1 + 3 frames + 1; the instance without pixel data has no rendered form
    assert len(parts) == 5
    assert all(body.startswith(JPEG) and h["content-type"] == "image/jpeg" for h, body in parts)
    locations = [h["content-location"] for h, _ in parts]
    base = f"http://testserver/dicomweb/studies/{st}/series"
    assert locations == [f"{base}/{se1}/instances/{sops[0]}/rendered",
                         *(f"{base}/{se1}/instances/{sops[1]}/frames/{n}/rendered" for n in (1, 2, 3)),
                         f"{base}/{se2}/instances/{sops[2]}/rendered"]
    assert [_size(b) for _, b in parts] == [(12, 16)] * 4 + [(10, 20)]
    # each Content-Location resolves to the same image
    one = dw.get(locations[2].removeprefix("http://testserver"), headers={"Accept": "image/jpeg"})
    assert one.status_code == 200 and one.content == parts[2][1]


def test_rendered_series_png_with_viewport(dw, study) -> None:
    st, (se1, _, _), _ = study
    r = dw.get(f"/dicomweb/studies/{st}/series/{se1}/rendered", params={"viewport": "6,8"},
               headers={"Accept": 'multipart/related; type="image/png"'})
    assert r.status_code == 200
    parts = _parts(r)
    assert len(parts) == 4
    assert all(body.startswith(PNG) for _, body in parts)
    assert {_size(b) for _, b in parts} == {(6, 8)}  # 12x16 fitted into 6x8


def test_rendered_series_without_accept_defaults_to_multipart_jpeg(dw, study) -> None:
    st, (_, se2, _), _ = study
    r = dw.get(f"/dicomweb/studies/{st}/series/{se2}/rendered")
    assert r.status_code == 200
    assert r.headers["content-type"].startswith("multipart/related")
    assert [b[:3] for _, b in _parts(r)] == [JPEG]


def test_rendered_series_with_only_single_part_types_is_406(dw, study) -> None:
    """PS3.18 §10.4.4: single-part types are ignored for multi-item resources; none left -> 406."""
    st, (se1, _, _), _ = study
    r = dw.get(f"/dicomweb/studies/{st}/series/{se1}/rendered", headers={"Accept": "image/jpeg"})
    assert r.status_code == 406
    assert r.headers["content-type"] == "application/json"
    assert "thumbnail" in r.json()["message"]


def test_rendered_series_without_pixels_is_404_and_unknown_series_is_404(dw, study) -> None:
    st, (_, _, se3), _ = study
    r = dw.get(f"/dicomweb/studies/{st}/series/{se3}/rendered", headers={"Accept": MULTI_JPEG})
    assert r.status_code == 404 and r.json()["category"] == "not-found"
    r = dw.get(f"/dicomweb/studies/{st}/series/{generate_uid()}/rendered", headers={"Accept": MULTI_JPEG})
    assert r.status_code == 404 and r.json()["category"] == "not-found"


@pytest.mark.parametrize("level", ["study", "series", "instance", "frame"])
@pytest.mark.parametrize(("accept", "magic"), [("image/jpeg", JPEG), ("image/png", PNG), ("image/gif", GIF),
                                               (None, JPEG)])
def test_thumbnail_at_every_level_is_one_image_within_128(dw, study, level, accept, magic) -> None:
    st, (se1, _, _), sops = study
    path = {
        "study": f"/dicomweb/studies/{st}/thumbnail",
        "series": f"/dicomweb/studies/{st}/series/{se1}/thumbnail",
        "instance": f"/dicomweb/studies/{st}/series/{se1}/instances/{sops[0]}/thumbnail",
        "frame": f"/dicomweb/studies/{st}/series/{se1}/instances/{sops[1]}/frames/2/thumbnail",
    }[level]
    r = dw.get(path, headers={"Accept": accept} if accept else {})
    assert r.status_code == 200, r.text
    assert r.headers["content-type"] == (accept or "image/jpeg")
    assert r.content.startswith(magic)
    w, h = _size(r.content)
    assert w <= 128 and h <= 128 and (w, h) == (12, 16)  # small images are not enlarged


def test_thumbnail_viewport_and_series_without_pixels(dw, study) -> None:
    st, (se1, _, se3), _ = study
    r = dw.get(f"/dicomweb/studies/{st}/series/{se1}/thumbnail", params={"viewport": "3,4"})
    assert r.status_code == 200 and _size(r.content) == (3, 4)
    r = dw.get(f"/dicomweb/studies/{st}/series/{se3}/thumbnail")
    assert r.status_code == 404 and r.json()["category"] == "not-found"
    r = dw.get(f"/dicomweb/studies/{st}/thumbnail", headers={"Accept": "application/dicom"})
    assert r.status_code == 406


def test_study_thumbnail_is_the_middle_instance_of_the_first_series(dw, study) -> None:
    st, (se1, _, _), sops = study
    thumb = dw.get(f"/dicomweb/studies/{st}/thumbnail", headers={"Accept": "image/png"}).content
    # middle of series 1 (2 instances) is the 3-frame instance; its middle frame is 2
    frame = dw.get(f"/dicomweb/studies/{st}/series/{se1}/instances/{sops[1]}/frames/2/thumbnail",
                   headers={"Accept": "image/png"}).content
    assert thumb == frame


def test_rendered_in_a_browser_sized_viewport_keeps_aspect(dw) -> None:
    st, se = generate_uid(), generate_uid()
    assert stow(dw, [instance(study=st, series=se, rows=64, columns=32)]).status_code == 200
    r = dw.get(f"/dicomweb/studies/{st}/rendered", params={"viewport": "16,16"}, headers={"Accept": MULTI_JPEG})
    (_, body), = _parts(r)
    assert _size(body) == (8, 16)
