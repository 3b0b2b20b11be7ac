"""QIDO-RS conformance: DICOM XML responses (PS3.19 Native DICOM Model), Retrieve URL, date/time
validation, and JSON error bodies for unknown DICOMweb paths."""

from __future__ import annotations

import base64
import xml.etree.ElementTree as ET
from typing import Any

import pytest
from _factory import instance
from _http import stow
from hypothesis import given, settings
from hypothesis import strategies as st
from pydicom.uid import generate_uid

from medcloud.imaging import native_model
from medcloud.imaging._multipart import media_type, parse_related

NS = {"n": native_model.NAMESPACE}
XML_ACCEPT = 'multipart/related; type="application/dicom+xml"'
NUMERIC = {"IS", "DS", "US", "SS", "UL", "SL", "FL", "FD", "UV", "SV"}


def from_xml(doc: bytes) -> dict[str, Any]:
    """An independent reader: a NativeDicomModel document back to DICOM JSON (PS3.18 F.2)."""
    root = ET.fromstring(doc)
    assert root.tag == f"{{{native_model.NAMESPACE}}}NativeDicomModel"
    assert root.get("{http://www.w3.org/XML/1998/namespace}space") == "preserve"
    return _dataset(root)


def _dataset(node: ET.Element) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for a in node.findall("n:DicomAttribute", NS):
        tag, vr = a.get("tag"), a.get("vr")
        assert tag is not None and len(tag) == 8 and tag == tag.upper()
        el: dict[str, Any] = {"vr": vr}
        values = a.findall("n:Value", NS)
        if values:
            assert [v.get("number") for v in values] == [str(n) for n in range(1, len(values) + 1)]
            el["Value"] = [_number(v.text or "", vr) for v in values]
        names = a.findall("n:PersonName", NS)
        if names:
            el["Value"] = [{g.tag.split("}")[1]: "^".join(c.text or "" for c in g) for g in pn} for pn in names]
        items = a.findall("n:Item", NS)
        if items:
            el["Value"] = [_dataset(i) for i in items]
        bulk = a.find("n:BulkData", NS)
        if bulk is not None:
            el["BulkDataURI"] = bulk.get("uri")
        inline = a.find("n:InlineBinary", NS)
        if inline is not None:
            el["InlineBinary"] = inline.text
        out[tag] = el
    return out


def _number(text: str, vr: str | None) -> Any:
    if vr in NUMERIC:
        f = float(text)
        return int(f) if f.is_integer() else f
    return text


def _normal(obj: dict[str, Any]) -> dict[str, Any]:
    """JSON values in the form the XML reader produces (numbers as int/float, PN groups as strings)."""
    out = {}
    for tag, el in obj.items():
        el = dict(el)
        if "Value" in el and el["vr"] == "SQ":
            el["Value"] = [_normal(i) for i in el["Value"]]
        elif "Value" in el and el["vr"] in NUMERIC:
            el["Value"] = [_number(str(v), el["vr"]) for v in el["Value"]]
        out[tag] = el
    return out


@pytest.fixture
def stored(dw):
    st_uid, se = generate_uid(), generate_uid()
    datas = [instance(study=st_uid, series=se, instance_number=n, patient_name="Doe^Jane^Q^Dr^Jr",
                      patient_id="XML-1", study_date="20211215") for n in (1, 2)]
    assert stow(dw, datas).status_code == 200
    return st_uid, se


def _xml_parts(r) -> list[bytes]:
    ctype, params = media_type(r.headers["content-type"])
    assert ctype == "multipart/related" and params["type"] == "application/dicom+xml"
    parts = parse_related(r.content, params["boundary"])
    assert all(p.content_type == "application/dicom+xml" for p in parts)
    return [p.body for p in parts]


@pytest.mark.parametrize("path", ["/dicomweb/studies", "/dicomweb/series", "/dicomweb/instances",
                                  "/dicomweb/studies?includefield=all", "/dicomweb/instances?includefield=all"])
def test_qido_xml_has_every_json_attribute_with_the_same_values(dw, stored, path) -> None:
    sep = "&" if "?" in path else "?"
    q = f"{path}{sep}PatientID=XML-1"
    as_json = dw.get(q, headers={"Accept": "application/dicom+json"})
    as_xml = dw.get(q, headers={"Accept": XML_ACCEPT})
    assert as_json.status_code == as_xml.status_code == 200
    docs = _xml_parts(as_xml)
    assert len(docs) == len(as_json.json()) >= 1
    for doc, obj in zip(docs, as_json.json(), strict=True):
        assert from_xml(doc) == _normal(obj)


def test_qido_xml_person_name_components_and_keywords(dw, stored) -> None:
    r = dw.get("/dicomweb/studies?PatientID=XML-1", headers={"Accept": XML_ACCEPT})
    root = ET.fromstring(_xml_parts(r)[0])
    pn = root.find("n:DicomAttribute[@tag='00100010']", NS)
    assert pn is not None and pn.get("keyword") == "PatientName" and pn.get("vr") == "PN"
    alpha = pn.find("n:PersonName[@number='1']/n:Alphabetic", NS)
    assert alpha is not None
    assert [(c.tag.split("}")[1], c.text) for c in alpha] == [
        ("FamilyName", "Doe"), ("GivenName", "Jane"), ("MiddleName", "Q"), ("NamePrefix", "Dr"),
        ("NameSuffix", "Jr")]
    date = root.find("n:DicomAttribute[@keyword='StudyDate']/n:Value[@number='1']", NS)
    assert date is not None and date.text == "20211215"


def test_qido_xml_with_no_match_is_an_empty_200(dw, stored) -> None:
    r = dw.get("/dicomweb/studies?PatientID=nobody", headers={"Accept": XML_ACCEPT})
    assert r.status_code == 200 and r.content == b""


@pytest.mark.parametrize("accept", ["application/dicom+xml", "text/html", "multipart/related; type=\"image/jpeg\"",
                                    "application/xml"])
def test_qido_with_unsupported_accept_is_406_json(dw, stored, accept) -> None:
    r = dw.get("/dicomweb/studies", headers={"Accept": accept})
    assert r.status_code == 406
    assert r.json()["category"] == "not-acceptable" or r.json()["status"] == 406
    assert "application/dicom+xml" in r.json()["message"]


def test_qido_accept_lists_pick_the_first_supported(dw, stored) -> None:
    r = dw.get("/dicomweb/studies", headers={"Accept": "text/html, " + XML_ACCEPT + ", application/dicom+json"})
    assert r.status_code == 200 and r.headers["content-type"].startswith("multipart/related")
    r = dw.get("/dicomweb/studies", headers={"Accept": "*/*"})
    assert r.status_code == 200 and r.headers["content-type"] == "application/dicom+json"


def test_native_model_encodes_sequences_binary_private_and_empty_values() -> None:
    obj = {
        "00080005": {"vr": "CS", "Value": ["ISO_IR 192"]},
        "00081115": {"vr": "SQ", "Value": [{"0020000E": {"vr": "UI", "Value": ["1.2.3"]}}, {}]},
        "00090010": {"vr": "LO", "Value": ["ACME 1.0"]},
        "00091011": {"vr": "DS", "Value": [1.5, None, 3]},
        "00280030": {"vr": "DS", "Value": [0.5, 0.5]},
        "7FE00010": {"vr": "OW", "BulkDataURI": "http://x/bulk"},
        "00291010": {"vr": "OB", "InlineBinary": base64.b64encode(b"\x00\x01").decode()},
        "00100010": {"vr": "PN", "Value": [{"Alphabetic": "Yamada^Tarou", "Ideographic": "山田^太郎"}]},
        "00080090": {"vr": "PN"},
        "00200000": {"vr": "UL", "Value": [12]},
    }
    root = ET.fromstring(native_model.to_xml(obj))
    tags = [a.get("tag") for a in root.findall("n:DicomAttribute", NS)]
    assert "00200000" not in tags  # no group length (PS3.19 §A.1.1)
    assert tags.count("00090011") == 1 and "00090010" not in tags  # creator only as privateCreator
    priv = root.find("n:DicomAttribute[@tag='00090011']", NS)  # gggg00ee + privateCreator
    assert priv is not None and priv.get("privateCreator") == "ACME 1.0" and priv.get("keyword") is None
    assert [v.text or "" for v in priv.findall("n:Value", NS)] == ["1.5", "", "3"]
    items = root.findall("n:DicomAttribute[@tag='00081115']/n:Item", NS)
    assert [i.get("number") for i in items] == ["1", "2"] and len(items[1]) == 0
    assert root.find("n:DicomAttribute[@tag='7FE00010']/n:BulkData", NS).get("uri") == "http://x/bulk"  # type: ignore[union-attr]
    ideo = root.find("n:DicomAttribute[@tag='00100010']/n:PersonName/n:Ideographic/n:FamilyName", NS)
    assert ideo is not None and ideo.text == "山田"
    empty = root.find("n:DicomAttribute[@tag='00080090']", NS)
    assert empty is not None and len(empty) == 0


_text = st.text(st.characters(blacklist_categories=("Cs", "Cc")), max_size=12)


@settings(max_examples=200)
@given(st.lists(st.tuples(st.sampled_from(["LO", "SH", "CS", "UI", "DA", "IS", "DS", "PN", "UT"]), _text),
                max_size=8))
def test_native_model_round_trips_text_values(values: list[tuple[str, str]]) -> None:
    obj: dict[str, Any] = {}
    for n, (vr, text) in enumerate(values):
        tag = f"0011{0x1000 + n:04X}"  # private, unique per value; creator present
        if vr == "PN":
            obj[tag] = {"vr": vr, "Value": [{"Alphabetic": text.replace("=", "")}]} if text.strip("^=") else {"vr": vr}
        elif vr in ("IS", "DS"):
            obj[tag] = {"vr": vr, "Value": [len(text)]}
        else:
            obj[tag] = {"vr": vr, "Value": [text]} if text else {"vr": vr}
    obj["00110010"] = {"vr": "LO", "Value": ["TEST"]}
    doc = native_model.to_xml(obj)
    back = from_xml(doc)
    expect = {f"{tag[:4]}00{tag[6:]}": el for tag, el in obj.items() if tag != "00110010"}
    assert set(back) == set(expect)
    for tag, el in expect.items():
        got = back[tag]
        if el["vr"] == "PN" and "Value" in el:
            parts = el["Value"][0]["Alphabetic"].split("^")[:5]
            assert got["Value"][0]["Alphabetic"] == "^".join(p for p in parts if p)
        else:
            assert got == _normal({tag: el})[tag]


# -- Retrieve URL (0008,1190) ---------------------------------------------------------------------

@pytest.mark.parametrize(("path", "suffix"), [
    ("/dicomweb/studies", "{st}"), ("/dicomweb/series", "{st}/series/{se}"),
    ("/dicomweb/instances", "{st}/series/{se}/instances/{sop}"),
    ("/dicomweb/studies/{st}/series", "{st}/series/{se}"),
    ("/dicomweb/studies/{st}/series/{se}/instances", "{st}/series/{se}/instances/{sop}"),
])
def test_qido_results_carry_a_resolvable_retrieve_url(dw, stored, path, suffix) -> None:
    st_uid, se = stored
    r = dw.get(path.format(st=st_uid, se=se) + "?PatientID=XML-1")
    assert r.status_code == 200 and r.json()
    for obj in r.json():
        sop = (obj.get("00080018") or {}).get("Value", [None])[0]
        url = obj["00081190"]
        assert url["vr"] == "UR"
        assert url["Value"] == ["http://testserver/dicomweb/studies/" + suffix.format(st=st_uid, se=se, sop=sop)]
        got = dw.get(url["Value"][0].removeprefix("http://testserver"),
                     headers={"Accept": 'multipart/related; type="application/dicom"'})
        assert got.status_code == 200 and got.headers["content-type"].startswith("multipart/related")


def test_retrieve_url_uses_public_url_behind_a_proxy(services, archive) -> None:
    import dataclasses

    from starlette.applications import Starlette
    from starlette.testclient import TestClient

    from medcloud.imaging.dicomweb import routes

    svc = dataclasses.replace(services, settings=services.settings.model_copy(
        update={"public_url": "https://pacs.example.org/"}), imaging=archive)
    with TestClient(Starlette(routes=routes(svc))) as c:
        st_uid = generate_uid()
        assert stow(c, [instance(study=st_uid)]).status_code == 200
        r = c.get("/dicomweb/studies", params={"StudyInstanceUID": st_uid})
        assert r.json()[0]["00081190"]["Value"] == [f"https://pacs.example.org/dicomweb/studies/{st_uid}"]


# -- DA / TM validation ---------------------------------------------------------------------------

@pytest.mark.parametrize(("key", "value"), [
    ("StudyDate", "20211301"), ("StudyDate", "20230230"), ("StudyDate", "20210001"), ("StudyDate", "2021121"),
    ("StudyDate", "20211301-20211231"), ("StudyDate", "-20211332"), ("StudyDate", "20211231-20210101"),
    ("StudyDate", "x"), ("PatientBirthDate", "19000229"), ("StudyTime", "2500"), ("StudyTime", "1260"),
    ("StudyTime", "120061"), ("StudyTime", "12-11"), ("StudyTime", "120000.1234567"),
])
def test_bad_dates_and_times_are_400_with_a_clear_message(dw, stored, key, value) -> None:
    r = dw.get("/dicomweb/studies", params={key: value})
    assert r.status_code == 400, r.text
    body = r.json()
    assert body["category"] == "invalid" and key in body["message"]


@pytest.mark.parametrize(("key", "value", "n"), [
    ("StudyDate", "20211215", 1), ("StudyDate", "20240229", 0), ("StudyDate", "20211201-20211231", 1),
    ("StudyDate", "-20211214", 0), ("StudyTime", "235960", 0), ("StudyTime", "10-11", 1),
])
def test_valid_dates_including_leap_day_and_leap_second_match(dw, stored, key, value, n) -> None:
    r = dw.get("/dicomweb/studies", params={key: value, "PatientID": "XML-1"})
    assert r.status_code == 200 and len(r.json()) == n


# -- unknown paths --------------------------------------------------------------------------------

@pytest.mark.parametrize("path", ["/dicomweb/nope", "/dicomweb/studies/1.2.3/nope", "/dicomweb",
                                  "/dicomweb/studies/1.2/series/1.3/instances/1.4/frames/1/nope"])
def test_unknown_dicomweb_paths_are_json_404(dw, path) -> None:
    r = dw.get(path)
    assert r.status_code == 404
    assert r.headers["content-type"] == "application/json"
    assert r.json() == {"status": 404, "category": "not-found", "message": f"no DICOMweb resource at {path}"}


def test_wrong_method_on_a_known_path_is_json_405_with_allow(dw) -> None:
    r = dw.put("/dicomweb/studies", content=b"")
    assert r.status_code == 405
    assert r.headers["content-type"] == "application/json"
    assert set(r.headers["allow"].split(", ")) == {"GET", "HEAD", "POST"}
    assert r.json()["status"] == 405


def test_wado_metadata_xml_has_every_json_attribute_with_the_same_values(dw, stored) -> None:
    """WADO-RS metadata as multipart DICOM XML (PS3.18 §10.4.3.3): one document per instance, the same
    attributes as the JSON, BulkData URIs included."""
    st_uid, se = stored
    for path in (f"/dicomweb/studies/{st_uid}/metadata", f"/dicomweb/studies/{st_uid}/series/{se}/metadata"):
        as_json = dw.get(path, headers={"Accept": "application/dicom+json"})
        as_xml = dw.get(path, headers={"Accept": XML_ACCEPT})
        assert as_json.status_code == as_xml.status_code == 200
        docs = _xml_parts(as_xml)
        assert len(docs) == len(as_json.json()) == 2
        for doc, obj in zip(docs, as_json.json(), strict=True):
            assert from_xml(doc) == _normal(obj)
    assert dw.get(f"/dicomweb/studies/{st_uid}/metadata", headers={"Accept": "text/html"}).status_code == 406


def test_stow_response_in_xml_on_request_and_406_before_storing(dw) -> None:
    st_uid = generate_uid()
    good, bad = instance(study=st_uid), b"not dicom at all"
    r = stow(dw, [good, bad], headers={"Accept": "application/dicom+xml"})
    assert r.status_code == 202 and r.headers["content-type"].startswith("application/dicom+xml")
    doc = from_xml(r.content)
    assert len(doc["00081199"]["Value"]) == 1 and len(doc["00081198"]["Value"]) == 1  # stored / failed
    as_json = stow(dw, [bad]).json()  # the same failure, as JSON
    assert doc["00081198"]["Value"][0]["00081197"] == as_json["00081198"]["Value"][0]["00081197"]
    # an Accept the server cannot answer is refused before anything is stored
    other = generate_uid()
    r = stow(dw, [instance(study=other)], headers={"Accept": "text/html"})
    assert r.status_code == 406
    assert dw.get(f"/dicomweb/studies?StudyInstanceUID={other}").json() == []


def test_the_accept_query_parameter_comes_before_the_accept_header(dw, stored) -> None:
    """PS3.18 §8.3.3.1 / §8.7.8.1: ``?accept=`` is tried first, then the Accept header."""
    from urllib.parse import quote

    q = "/dicomweb/studies?PatientID=XML-1&accept=" + quote(XML_ACCEPT, safe="")
    r = dw.get(q, headers={"Accept": "application/dicom+json"})
    assert r.status_code == 200 and r.headers["content-type"].startswith("multipart/related")
    assert len(_xml_parts(r)) == 1
    # a parameter type this resource cannot produce falls back to the header
    r = dw.get("/dicomweb/studies?PatientID=XML-1&accept=image/png", headers={"Accept": "application/dicom+json"})
    assert r.status_code == 200 and r.json()[0]["00100020"]["Value"] == ["XML-1"]
    st_uid, se = stored
    r = dw.get(f"/dicomweb/studies/{st_uid}/series/{se}/metadata?accept=application/dicom%2Bjson",
               headers={"Accept": "text/html"})
    assert r.status_code == 200 and len(r.json()) == 2
