"""C-FIND identifiers <-> QIDO queries, and C-MOVE/C-GET identifiers -> stored instances.

One matcher for both protocols: an identifier's keys become ``qido.QidoQuery`` filters, so DIMSE
gets exactly the PS3.4 C.2.2.2 matching QIDO-RS has (single value, ``*``/``?`` wildcards, DA/TM
ranges, UID lists; PN case-insensitive). Keys with a zero-length value are universal matches and
come back filled in; a value of only ``*`` is universal too (so rows whose attribute is empty
still match, PS3.4 C.2.2.2.3). Keys the index cannot match on (not a QIDO attribute, sequences,
keys below the query level) are returned (filled from a representative instance where the stored
metadata has them, else zero-length) without filtering, which PS3.4 allows for optional keys.

Known difference from strict PS3.4: a comma inside a text value acts as a QIDO list separator
(``A,B`` matches ``A`` or ``B``). The PATIENT level is computed from study rows grouped by
PatientID, with NumberOfPatientRelatedStudies/Series/Instances summed over them.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Collection, Iterator
from dataclasses import dataclass
from typing import Any, Literal

from pydicom.datadict import dictionary_VR
from pydicom.dataset import Dataset
from pydicom.multival import MultiValue

from medcloud.errors import Invalid
from medcloud.imaging import qido
from medcloud.imaging.archive import Archive, InstanceRef
from medcloud.storage.sql.database import Database

Model = Literal["patient", "study"]
QR_LEVELS: dict[str, qido.Level] = {"PATIENT": "study", "STUDY": "study", "SERIES": "series", "IMAGE": "instance"}
_RANK = {"PATIENT": 0, "STUDY": 1, "SERIES": 2, "IMAGE": 3}
# Attribute level of each QIDO attribute in Q/R terms (QIDO keeps patient attributes at "study").
_PATIENT_KEYS = frozenset({"PatientName", "PatientID", "PatientBirthDate", "PatientSex"})
_ATTR_RANK = {"study": 1, "series": 2, "instance": 3}
# Never matched on, answered by us (PS3.4 C.4.1.1.3 / C.6).
_CONTROL_TAGS = frozenset({0x00080005, 0x00080052, 0x00080054, 0x00080056})
_PATIENT_COUNTS = {0x00201200: "studies", 0x00201202: "series", 0x00201204: "instances"}
PAGE = 500


@dataclass(frozen=True, slots=True)
class FindRequest:
    level: str  # PATIENT / STUDY / SERIES / IMAGE
    query: qido.QidoQuery
    requested: tuple[int, ...]  # tags to return, in identifier order


def qr_level(identifier: Dataset, model: Model) -> str:
    """The QueryRetrieveLevel, checked against the information model (PATIENT only in Patient Root)."""
    level = str(identifier.get("QueryRetrieveLevel", "") or "").strip().upper()
    if level not in QR_LEVELS:
        raise Invalid(f"QueryRetrieveLevel {level or '(missing)'} is not one of PATIENT, STUDY, SERIES, IMAGE")
    if level == "PATIENT" and model != "patient":
        raise Invalid("the PATIENT level exists only in the Patient Root information model")
    return level


def to_query(identifier: Dataset, model: Model, extra_tags: Collection[str] = ()) -> FindRequest:
    """Translate a C-FIND identifier into a QIDO query; raises Invalid for malformed identifiers.

    Configured ``extra_tags`` (imaging/extra_tags.py) are matched at STUDY, SERIES and IMAGE level:
    a study or series matches when any of its instances does."""
    level = qr_level(identifier, model)
    filters: list[tuple[str, str]] = []
    requested: list[int] = []
    include: set[str] = set()
    for elem in identifier:
        tag = int(elem.tag)
        if tag in _CONTROL_TAGS or elem.tag.group in (0x0000, 0x0002):
            continue
        requested.append(tag)
        include.add(f"{tag:08X}")
        if elem.VR == "SQ":
            continue  # sequence matching is optional (PS3.4 C.2.2.2.6); returned, not matched
        value = _text(elem.value)
        kw = elem.keyword
        attr = qido.ATTRS.get(kw)
        if attr is None and f"{tag:08X}" in extra_tags and value and value.strip("*") and level != "PATIENT":
            filters.append((f"{tag:08X}", value))
            continue
        if attr is None or not value or value.strip("*") == "":
            continue
        if level == "PATIENT" and kw not in _PATIENT_KEYS:
            continue
        if _ATTR_RANK[attr.level] > _RANK[level] and kw not in _PATIENT_KEYS:
            continue  # a key below the query level cannot be matched (PS3.4 C.4.1.2.1)
        filters.append((kw, value))
    q = qido.QidoQuery(level=QR_LEVELS[level], filters=tuple(filters), include=frozenset(include))
    return FindRequest(level, q, tuple(requested))


def run(db: Database, req: FindRequest, *, retrieve_aet: str | None = None) -> Iterator[Dataset]:
    """The C-FIND matches, one identifier Dataset each (lazily, page by page)."""
    if req.level == "PATIENT":
        yield from _patients(db, req, retrieve_aet)
        return
    for obj in _pages(db, req.query):
        yield _identifier(obj, req, retrieve_aet)


def _pages(db: Database, q: qido.QidoQuery) -> Iterator[dict[str, Any]]:
    offset = 0
    while True:
        rows, _ = qido.search(db, dataclasses.replace(q, limit=PAGE, offset=offset), max_results=PAGE)
        yield from rows
        if len(rows) < PAGE:
            return
        offset += PAGE


def _patients(db: Database, req: FindRequest, retrieve_aet: str | None) -> Iterator[Dataset]:
    patients: dict[str, tuple[dict[str, Any], list[int]]] = {}
    for obj in _pages(db, req.query):
        pid = _first(obj.get("00100020"))
        key = pid if isinstance(pid, str) else ""
        counts = [1, int(_first(obj.get("00201206")) or 0), int(_first(obj.get("00201208")) or 0)]
        if key in patients:
            acc = patients[key][1]
            for i in range(3):
                acc[i] += counts[i]
        else:
            patients[key] = (obj, counts)
    for obj, (studies, series, instances) in patients.values():
        extra = {"00201200": studies, "00201202": series, "00201204": instances}
        merged = {k: v for k, v in obj.items() if int(k[:4], 16) == 0x0010}
        merged.update({k: {"vr": "IS", "Value": [n]} for k, n in extra.items()})
        yield _identifier(merged, req, retrieve_aet)


def _identifier(obj: dict[str, Any], req: FindRequest, retrieve_aet: str | None) -> Dataset:
    wanted = {f"{t:08X}": el for t in req.requested
              if (el := obj.get(f"{t:08X}")) is not None and "BulkDataURI" not in el and "InlineBinary" not in el}
    ds = Dataset.from_json(wanted) if wanted else Dataset()
    for tag in req.requested:
        if tag not in ds:
            try:
                vr = dictionary_VR(tag)
            except KeyError:
                vr = "UN"
            ds.add_new(tag, vr, [] if vr == "SQ" else None)
    ds.QueryRetrieveLevel = req.level
    ds.SpecificCharacterSet = "ISO_IR 192"  # the index holds Unicode text
    if retrieve_aet:
        ds.RetrieveAETitle = retrieve_aet
    return ds


# -- C-MOVE / C-GET -----------------------------------------------------------------------

_UNIQUE = (("PATIENT", "PatientID"), ("STUDY", "StudyInstanceUID"), ("SERIES", "SeriesInstanceUID"),
           ("IMAGE", "SOPInstanceUID"))


def retrieve_refs(archive: Archive, identifier: Dataset, model: Model) -> list[InstanceRef]:
    """The stored instances a C-MOVE/C-GET identifier names (PS3.4 C.4.2.2.1 / C.4.3.2.1).

    The unique key of the requested level must be present (UID lists allowed); unique keys of the
    levels above narrow the match. Raises Invalid for a missing key (0xA900 in the response).
    """
    level = qr_level(identifier, model)
    filters: list[tuple[str, str]] = []
    for lvl, kw in _UNIQUE:
        if _RANK[lvl] > _RANK[level]:
            break
        value = _text(identifier.get(kw, None) and identifier[kw].value)
        if lvl == level and not value:
            raise Invalid(f"a {level}-level retrieve needs the unique key {kw}")
        if value:
            filters.append((kw, value))
    q = qido.QidoQuery(level="instance", filters=tuple(filters))
    wanted: dict[str, set[str]] = {}
    for obj in _pages(archive.db, q):
        study, sop = _first(obj.get("0020000D")), _first(obj.get("00080018"))
        if isinstance(study, str) and isinstance(sop, str):
            wanted.setdefault(study, set()).add(sop)
    refs: list[InstanceRef] = []
    for study, sops in wanted.items():
        refs.extend(r for r in archive.instances(study) if r.sop_uid in sops)
    return refs


def _text(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, MultiValue | list | tuple):
        return "\\".join(str(v) for v in value)
    return str(value).strip()


def _first(el: dict[str, Any] | None) -> Any:
    if not el or not el.get("Value"):
        return None
    return el["Value"][0]
