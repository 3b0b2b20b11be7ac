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

from medcloud.errors import Invalid

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


# -- XML -> DICOM JSON (STOW-RS with application/dicom+xml, PS3.18 §10.5.1.2) -----------------------

# VRs whose values are JSON numbers (PS3.18 F.2.3.1); AT stays a string, SV/UV numbers too.
_NUMBER_VRS = frozenset({"DS", "FL", "FD", "IS", "SL", "SS", "SV", "UL", "US", "UV"})


def from_xml(doc: bytes) -> dict[str, Any]:
    """One ``NativeDicomModel`` document as a DICOM JSON object: the inverse of ``to_xml``.

    Private attributes (``tag="gggg00ee"`` + ``privateCreator``) get a block of their group and
    its Private Creator element back. Raises Invalid for a document that is not a Native DICOM Model.
    """
    # A Native DICOM Model document has no DTD; refusing one keeps entity expansion out entirely.
    if b"<!DOCTYPE" in doc or b"<!ENTITY" in doc:
        raise Invalid("the application/dicom+xml part has a DOCTYPE / ENTITY declaration; none is allowed")
    try:
        root = ET.fromstring(doc)
    except ET.ParseError as e:
        raise Invalid(f"the application/dicom+xml part is not well-formed XML: {e}") from e
    if _local(root.tag) != "NativeDicomModel" or _ns(root.tag) not in ("", NAMESPACE):
        raise Invalid(f"the XML part's root is {root.tag!r}, not NativeDicomModel ({NAMESPACE})")
    try:
        return _read_dataset(root)
    except (ValueError, KeyError, TypeError, RecursionError) as e:
        raise Invalid(f"malformed NativeDicomModel: {type(e).__name__}: {e}") from e


def _local(tag: str) -> str:
    return tag.rsplit("}", 1)[-1]


def _ns(tag: str) -> str:
    return tag[1:].split("}", 1)[0] if tag.startswith("{") else ""


def _children(node: ET.Element, name: str) -> list[ET.Element]:
    return [c for c in node if isinstance(c.tag, str) and _local(c.tag) == name]


def _read_dataset(node: ET.Element) -> dict[str, Any]:
    out: dict[str, Any] = {}
    blocks: dict[tuple[int, str], int] = {}  # (group, creator) -> block number
    for attr in _children(node, "DicomAttribute"):
        tag = (attr.get("tag") or "").upper()
        if len(tag) != 8 or any(c not in "0123456789ABCDEF" for c in tag):
            raise ValueError(f"DicomAttribute tag {attr.get('tag')!r} is not 8 hex digits")
        creator = attr.get("privateCreator")
        group, elem = int(tag[:4], 16), int(tag[4:], 16)
        if creator is not None and group % 2 == 1 and elem <= 0xFF:
            tag = _private_tag(out, blocks, group, elem, creator)
        el: dict[str, Any] = {}
        if attr.get("vr"):
            el["vr"] = attr.get("vr")
        el.update(_read_value(attr, el.get("vr")))
        out[tag] = el
    return dict(sorted(out.items()))


def _private_tag(out: dict[str, Any], blocks: dict[tuple[int, str], int], group: int, elem: int,
                 creator: str) -> str:
    """``gggg,xxee`` for a private element; its creator ``gggg,00xx`` is added once per block."""
    block = blocks.get((group, creator))
    if block is None:
        used = {b for (g, _), b in blocks.items() if g == group}
        used |= {int(t[4:], 16) for t in out if int(t[:4], 16) == group and int(t[4:], 16) <= 0xFF}
        block = next((b for b in range(0x10, 0x100) if b not in used), None)
        if block is None:
            raise ValueError(f"more than 240 private creators in group {group:04X}")
        blocks[(group, creator)] = block
        out[f"{group:04X}{block:04X}"] = {"vr": "LO", "Value": [creator]}
    return f"{group:04X}{block:02X}{elem & 0xFF:02X}"


def _read_value(attr: ET.Element, vr: str | None) -> dict[str, Any]:
    if (bulk := next(iter(_children(attr, "BulkData")), None)) is not None:
        uri = bulk.get("uri") or bulk.get("uuid")
        if not uri:
            raise ValueError(f"BulkData of {attr.get('tag')} has no uri")
        return {"BulkDataURI": uri}
    if (inline := next(iter(_children(attr, "InlineBinary")), None)) is not None:
        return {"InlineBinary": "".join((inline.text or "").split())}
    if vr == "SQ":
        items = _numbered(_children(attr, "Item"))
        return {"Value": [_read_dataset(i) for i in items]} if items else {}
    if vr == "PN":
        names = _numbered(_children(attr, "PersonName"))
        return {"Value": [_read_person_name(n) for n in names]} if names else {}
    values = _numbered(_children(attr, "Value"))
    if not values:
        return {}
    return {"Value": [_read_text(v.text, vr) for v in values]}


def _numbered(nodes: list[ET.Element]) -> list[ET.Element]:
    """Nodes in ``number`` order (1..n, PS3.19 §A.1.6); a missing number keeps document order."""
    keyed = [(int(n.get("number") or i), n) for i, n in enumerate(nodes, start=1)]
    return [n for _, n in sorted(keyed, key=lambda kn: kn[0])]


def _read_person_name(node: ET.Element) -> dict[str, str] | None:
    out = {}
    for group in PN_GROUPS:
        g = next(iter(_children(node, group)), None)
        if g is None:
            continue
        parts = [(next(iter(_children(g, name)), None)) for name in NAME_COMPONENTS]
        text = "^".join((p.text or "") if p is not None else "" for p in parts).rstrip("^")
        if text:
            out[group] = text
    return out or None


def _read_text(text: str | None, vr: str | None) -> Any:
    if text is None or text == "":
        return None
    if vr in _NUMBER_VRS:
        number = float(text)
        if vr in ("DS", "FL", "FD"):
            return int(number) if number.is_integer() and "." not in text and "e" not in text.lower() else number
        return int(text.strip())
    return text
