"""Configurable extra matching keys for QIDO-RS and C-FIND (``dicom_extra_tags``).

PS3.18 lists the attributes an origin server must match on; sites also search on others
(InstitutionName, StationName, ProtocolName, ...). Each configured tag is indexed per instance in
``dicom_extra_index`` (one row per value, so a multi-valued attribute matches when any value does),
in the same transaction as the instance; a study or series matches when any of its instances does.
Values are normalised like the built-in keys (DA as YYYYMMDD, TM as HHMMSS.ffffff, DT as
YYYYMMDDHHMMSS.ffffff, in UTC when it carries an offset) so the QIDO
matcher's wildcards, lists and ranges work unchanged. Only plain-valued VRs can be indexed:
sequences, binary and private attributes are refused when the setting is read.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from pydicom.datadict import dictionary_VR, keyword_for_tag, tag_for_keyword
from pydicom.dataset import Dataset
from pydicom.multival import MultiValue

from medcloud.imaging._parse import da, dt, tm

MAX_VALUE = 256  # characters kept per value (the index column's width)
INDEXABLE_VRS = frozenset({"AE", "AS", "CS", "DA", "DS", "DT", "IS", "LO", "PN", "SH", "TM", "UI", "SL", "SS",
                           "UL", "US", "FL", "FD", "LT", "ST", "UC", "UR", "UT"})


def normalise_tag(text: str) -> str:
    """A keyword or ``GGGGEEEE`` / ``(GGGG,EEEE)`` tag as 8 upper-case hex digits; ValueError if not indexable."""
    raw = text.strip()
    compact = raw.strip("()").replace(",", "").replace(" ", "")
    if len(compact) == 8 and all(c in "0123456789abcdefABCDEF" for c in compact):
        tag = int(compact, 16)
    else:
        found = tag_for_keyword(raw)
        if found is None:
            raise ValueError(f"dicom_extra_tags: {raw!r} is neither a DICOM keyword nor a tag")
        tag = found
    if (tag >> 16) % 2 == 1:
        raise ValueError(f"dicom_extra_tags: {raw!r} is a private attribute (its VR is not known)")
    try:
        vr = dictionary_VR(tag)
    except KeyError:
        raise ValueError(f"dicom_extra_tags: {raw!r} is not in the DICOM dictionary") from None
    if vr not in INDEXABLE_VRS:
        raise ValueError(f"dicom_extra_tags: {raw!r} has VR {vr}; only plain values can be indexed")
    return f"{tag:08X}"


def keyword(tag: str) -> str:
    return keyword_for_tag(int(tag, 16)) or tag


def vr(tag: str) -> str:
    return str(dictionary_VR(int(tag, 16)))


def from_dataset(ds: Dataset, tags: Iterable[str]) -> tuple[tuple[str, str], ...]:
    """(tag, value) pairs of ``ds`` for the configured ``tags`` (top level only)."""
    out: list[tuple[str, str]] = []
    for tag in tags:
        try:
            elem = ds.get(int(tag, 16))
            value = None if elem is None else elem.value
        except Exception:  # noqa: BLE001 - an undecodable value is not indexed
            continue
        out += _pairs(tag, value)
    return tuple(out)


def from_json(obj: dict[str, Any], tags: Iterable[str]) -> tuple[tuple[str, str], ...]:
    """The same pairs from an instance's DICOM JSON (``medcloud dicom reindex``)."""
    out: list[tuple[str, str]] = []
    for tag in tags:
        values = (obj.get(tag) or {}).get("Value") or []
        flat = [v.get("Alphabetic", "") if isinstance(v, dict) else v for v in values]
        out += _pairs(tag, flat)
    return tuple(out)


def _pairs(tag: str, value: Any) -> list[tuple[str, str]]:
    if value is None or value == "":
        return []
    values = list(value) if isinstance(value, list | tuple | MultiValue) else [value]
    kind = vr(tag)
    out: list[tuple[str, str]] = []
    for v in values:
        s = str(v).strip().rstrip("\x00").strip()
        if kind == "DA":
            s = da(s) or ""
        elif kind == "TM":
            s = tm(s) or ""
        elif kind == "DT":
            s = dt(s) or ""
        if s:
            out.append((tag, s[:MAX_VALUE]))
    return out
