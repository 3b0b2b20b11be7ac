"""DICOM JSON (PS3.18 Annex F.2) to the XML Native DICOM Model (PS3.19 §A.1), for ``application/dicom+xml``.

pydicom writes DICOM JSON but no XML, and QIDO-RS origin servers must offer both (PS3.18 §10.6.4,
Table 10.6.4-1: ``multipart/related; type="application/dicom+xml"`` is required). Everything we
answer is already DICOM JSON, so this encodes that model, not a pydicom Dataset. Rules followed
(PS3.19 §A.1.5 and the normative RELAX NG schema of §A.1.6):

* root ``NativeDicomModel`` in the ``http://dicom.nema.org/PS3.19/models/NativeDICOM`` namespace with
  ``xml:space="preserve"``; one ``DicomAttribute`` per attribute with ``tag`` (8 uppercase hex
  digits), ``vr`` and ``keyword`` (omitted when the dictionary does not know the tag);
* private elements carry ``privateCreator`` (the value of their block's creator element) and the tag
  in the form ``gggg00ee``, since the block number is not part of the Native model; the creator
  elements themselves (gggg,0010-00FF) are not repeated as attributes;
* one ``Value number="n"`` per value, ``PersonName number="n"`` with ``Alphabetic``/``Ideographic``/
  ``Phonetic`` split into ``FamilyName``..``NameSuffix``, ``Item number="n"`` per sequence item,
  ``InlineBinary`` (base64) or ``BulkData uri="..."``; an empty attribute has no child.
* a JSON ``null`` inside a multi-valued attribute is an empty value: an empty ``Value`` element
  keeps the numbering of the others.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from collections.abc import Iterable
from typing import Any

from pydicom.datadict import keyword_for_tag

NAMESPACE = "http://dicom.nema.org/PS3.19/models/NativeDICOM"
XML_SPACE = "{http://www.w3.org/XML/1998/namespace}space"
NAME_COMPONENTS = ("FamilyName", "GivenName", "MiddleName", "NamePrefix", "NameSuffix")
PN_GROUPS = ("Alphabetic", "Ideographic", "Phonetic")


def to_xml(obj: dict[str, Any]) -> bytes:
    """One DICOM JSON object as a UTF-8 ``NativeDicomModel`` document (with XML declaration)."""
    root = ET.Element("NativeDicomModel", {"xmlns": NAMESPACE, XML_SPACE: "preserve"})
    _dataset(root, obj)
    return bytes(ET.tostring(root, encoding="utf-8", xml_declaration=True))


def _dataset(parent: ET.Element, obj: dict[str, Any]) -> None:
    creators = _private_creators(obj)
    for tag in sorted(obj, key=lambda t: int(t, 16)):
        el = obj[tag]
        group, elem = int(tag[:4], 16), int(tag[4:], 16)
        if elem == 0:
            continue  # Group Length attributes shall not be included (PS3.19 §A.1.1)
        if group % 2 == 1 and 0x10 <= elem <= 0xFF:
            continue  # a Private Creator: conveyed as privateCreator (its tag would clash with gggg00ee)
        attrs = {"tag": tag.upper()}
        if el.get("vr"):
            attrs["vr"] = str(el["vr"])
        if group % 2 == 1 and elem > 0xFF:  # a private data element: gggg00ee + its creator
            creator = creators.get((group, elem >> 8))
            attrs["tag"] = f"{group:04X}00{elem & 0xFF:02X}"
            if creator is not None:
                attrs["privateCreator"] = creator
        else:
            keyword = keyword_for_tag((group << 16) | elem)
            if keyword:
                attrs["keyword"] = keyword
        node = ET.SubElement(parent, "DicomAttribute", attrs)
        _value(node, el)


def _value(node: ET.Element, el: dict[str, Any]) -> None:
    vr = el.get("vr")
    if "BulkDataURI" in el:
        ET.SubElement(node, "BulkData", {"uri": str(el["BulkDataURI"])})
        return
    if "InlineBinary" in el:
        ET.SubElement(node, "InlineBinary").text = str(el["InlineBinary"])
        return
    values = el.get("Value")
    if not values:
        return
    for n, v in enumerate(values, start=1):
        if vr == "SQ":
            item = ET.SubElement(node, "Item", {"number": str(n)})
            _dataset(item, v or {})
        elif vr == "PN":
            _person_name(ET.SubElement(node, "PersonName", {"number": str(n)}), v)
        else:
            ET.SubElement(node, "Value", {"number": str(n)}).text = _text(v)


def _person_name(node: ET.Element, value: Any) -> None:
    groups = value if isinstance(value, dict) else {"Alphabetic": value} if value else {}
    for group in PN_GROUPS:
        text = groups.get(group)
        if not text:
            continue
        g = ET.SubElement(node, group)
        for name, part in zip(NAME_COMPONENTS, str(text).split("^"), strict=False):
            if part:
                ET.SubElement(g, name).text = part


def _text(v: Any) -> str:
    if v is None:
        return ""
    if isinstance(v, bool):
        return "1" if v else "0"
    if isinstance(v, float) and v.is_integer():
        return str(int(v))
    return str(v)


def _private_creators(obj: dict[str, Any]) -> dict[tuple[int, int], str]:
    """(group, block) -> Private Creator value, from the elements gggg,0010-00FF (PS3.5 §7.8.1)."""
    out: dict[tuple[int, int], str] = {}
    for tag, el in obj.items():
        group, elem = int(tag[:4], 16), int(tag[4:], 16)
        if group % 2 == 1 and 0x10 <= elem <= 0xFF and el.get("Value"):
            out[(group, elem)] = str(el["Value"][0])
    return out


def multipart_parts(objs: Iterable[dict[str, Any]]) -> Iterable[tuple[dict[str, str], list[bytes]]]:
    """Parts for ``write_related``: one ``application/dicom+xml`` document per object (PS3.18 §10.6.3.3)."""
    for obj in objs:
        yield {"Content-Type": "application/dicom+xml; charset=utf-8"}, [to_xml(obj)]
