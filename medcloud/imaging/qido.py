"""QIDO-RS search over the DICOM index (PS3.18 §10.6, matching per PS3.4 C.2.2.2).

Matching: single value, comma-separated lists (UID lists for UI), ``*``/``?`` wildcards on text
VRs, ``a-b`` / ``-b`` / ``a-`` ranges on DA and TM, integers for IS/US. PN matching is always
case-insensitive; ``fuzzymatching=true`` additionally lets a value without wildcards match the
start of any name component (``smi`` finds ``Smith^John`` and ``Doe^Smithson``). Attributes from
higher levels may be matched at lower levels (``/series?PatientID=x``); attributes not in the index
and sequence matching are ignored with a warning (PS3.18 §8.3.4.3: a Warning header).
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import orjson
from pydicom.datadict import keyword_for_tag, tag_for_keyword
from sqlalchemy import ColumnElement, Select, and_, exists, false, func, or_, select, true

from medcloud.errors import Invalid
from medcloud.imaging._parse import da, dt, tm
from medcloud.storage.imaging_schema import (
    dicom_extra_index,
    dicom_instances,
    dicom_patients,
    dicom_series,
    dicom_studies,
)
from medcloud.storage.sql.database import Database

Level = Literal["study", "series", "instance"]
LEVELS: tuple[Level, ...] = ("study", "series", "instance")
P, ST, SE, IN = dicom_patients, dicom_studies, dicom_series, dicom_instances


@dataclass(frozen=True, slots=True)
class Attr:
    keyword: str
    tag: str  # 8 hex digits, as in DICOM JSON
    vr: str
    level: Level
    column: Any  # SQLAlchemy column (None for computed ones)


ATTRS: dict[str, Attr] = {a.keyword: a for a in (
    Attr("PatientName", "00100010", "PN", "study", P.c.patient_name),
    Attr("PatientID", "00100020", "LO", "study", P.c.patient_id),
    Attr("PatientBirthDate", "00100030", "DA", "study", P.c.patient_birth_date),
    Attr("PatientSex", "00100040", "CS", "study", P.c.patient_sex),
    Attr("StudyInstanceUID", "0020000D", "UI", "study", ST.c.study_uid),
    Attr("StudyDate", "00080020", "DA", "study", ST.c.study_date),
    Attr("StudyTime", "00080030", "TM", "study", ST.c.study_time),
    Attr("AccessionNumber", "00080050", "SH", "study", ST.c.accession_number),
    Attr("ModalitiesInStudy", "00080061", "CS", "study", ST.c.modalities),
    Attr("ReferringPhysicianName", "00080090", "PN", "study", ST.c.referring_physician_name),
    Attr("StudyDescription", "00081030", "LO", "study", ST.c.study_description),
    Attr("StudyID", "00200010", "SH", "study", ST.c.study_id),
    Attr("NumberOfStudyRelatedSeries", "00201206", "IS", "study", ST.c.num_series),
    Attr("NumberOfStudyRelatedInstances", "00201208", "IS", "study", ST.c.num_instances),
    Attr("SeriesInstanceUID", "0020000E", "UI", "series", SE.c.series_uid),
    Attr("Modality", "00080060", "CS", "series", SE.c.modality),
    Attr("SeriesNumber", "00200011", "IS", "series", SE.c.series_number),
    Attr("SeriesDescription", "0008103E", "LO", "series", SE.c.series_description),
    Attr("BodyPartExamined", "00180015", "CS", "series", SE.c.body_part_examined),
    Attr("PerformedProcedureStepStartDate", "00400244", "DA", "series", SE.c.pps_start_date),
    Attr("PerformedProcedureStepStartTime", "00400245", "TM", "series", SE.c.pps_start_time),
    Attr("NumberOfSeriesRelatedInstances", "00201209", "IS", "series", SE.c.num_instances),
    Attr("SOPClassUID", "00080016", "UI", "instance", IN.c.sop_class_uid),
    Attr("SOPInstanceUID", "00080018", "UI", "instance", IN.c.sop_uid),
    Attr("InstanceNumber", "00200013", "IS", "instance", IN.c.instance_number),
    Attr("Rows", "00280010", "US", "instance", IN.c.rows),
    Attr("Columns", "00280011", "US", "instance", IN.c.columns),
    Attr("NumberOfFrames", "00280008", "IS", "instance", IN.c.number_of_frames),
    Attr("BitsAllocated", "00280100", "US", "instance", IN.c.bits_allocated),
    Attr("AvailableTransferSyntaxUID", "00083002", "UI", "instance", IN.c.transfer_syntax_uid),
)}

# Returned by default at each level (PS3.18 Tables 10.6.3-3/-4/-5).
DEFAULT_FIELDS: dict[Level, tuple[str, ...]] = {
    "study": ("StudyDate", "StudyTime", "AccessionNumber", "ModalitiesInStudy", "ReferringPhysicianName",
              "PatientName", "PatientID", "PatientBirthDate", "PatientSex", "StudyInstanceUID", "StudyID",
              "StudyDescription", "NumberOfStudyRelatedSeries", "NumberOfStudyRelatedInstances"),
    "series": ("StudyInstanceUID", "Modality", "SeriesDescription", "SeriesNumber", "SeriesInstanceUID",
               "BodyPartExamined", "NumberOfSeriesRelatedInstances", "PerformedProcedureStepStartDate",
               "PerformedProcedureStepStartTime"),
    "instance": ("StudyInstanceUID", "SeriesInstanceUID", "SOPClassUID", "SOPInstanceUID", "InstanceNumber",
                 "Rows", "Columns", "BitsAllocated", "NumberOfFrames", "AvailableTransferSyntaxUID"),
}
# ``includefield=all`` at study/series level adds these attributes of a representative instance.
_ALL_EXTRA_GROUPS: dict[Level, tuple[int, ...]] = {"study": (0x0010,), "series": (0x0018,), "instance": ()}
_ALL_EXTRA_TAGS: dict[Level, tuple[str, ...]] = {
    "study": ("00080005", "00081032", "00081060", "00101010", "00101020", "00101030", "00200010"),
    "series": ("00080005", "00080021", "00080031", "00080070", "00080080", "00081090", "00181030",
               "00200060", "00400254"),
    "instance": (),
}


@dataclass(frozen=True, slots=True)
class QidoQuery:
    level: Level
    study_uid: str | None = None
    series_uid: str | None = None
    filters: tuple[tuple[str, str], ...] = ()
    include: frozenset[str] = frozenset()  # 8-hex tags beyond the defaults
    include_all: bool = False
    fuzzy: bool = False
    limit: int | None = None
    offset: int = 0
    warnings: tuple[str, ...] = field(default=())


def parse_query(level: Level, params: Sequence[tuple[str, str]], *, study_uid: str | None = None,
                series_uid: str | None = None, extra_tags: Collection[str] = ()) -> QidoQuery:
    """Turn QIDO-RS query parameters into a ``QidoQuery``; raises Invalid on malformed values."""
    filters: list[tuple[str, str]] = []
    include: set[str] = set()
    include_all = False
    fuzzy = False
    limit: int | None = None
    offset = 0
    notes: list[str] = []
    for key, value in params:
        if key == "limit":
            limit = _nonneg(key, value)
        elif key == "offset":
            offset = _nonneg(key, value)
        elif key == "fuzzymatching":
            fuzzy = value.strip().lower() == "true"
        elif key == "includefield":
            for v in (x.strip() for x in value.split(",")):
                if v == "all":
                    include_all = True
                elif v:
                    include.add(_tag_of(v))
        elif key in ("_", "accept", "charset"):
            continue
        else:
            if "." in key:
                notes.append(f"sequence matching on {key} is not supported; the attribute was ignored")
                continue
            kw = _keyword_of(key)
            extra = _extra_tag(key, extra_tags) if kw not in ATTRS else None
            if extra is not None:  # a configured extra matching key (imaging/extra_tags.py)
                include.add(extra)
                if value != "":
                    filters.append((extra, value))
                continue
            if kw not in ATTRS:
                notes.append(f"{kw} is not a supported matching key; the attribute was ignored")
                continue
            if LEVELS.index(ATTRS[kw].level) > LEVELS.index(level):
                notes.append(f"{kw} is an attribute of a lower level than {level}; it was ignored")
                continue
            if value == "":
                include.add(ATTRS[kw].tag)  # universal matching: return the attribute
            else:
                filters.append((kw, value))
    return QidoQuery(level, study_uid, series_uid, tuple(filters), frozenset(include), include_all, fuzzy,
                     limit, offset, tuple(notes))


def search(db: Database, q: QidoQuery, *, max_results: int = 1000, studies: ColumnElement[bool] | None = None,
           base: str | None = None) -> tuple[list[dict[str, Any]], bool]:
    """Run a query; returns DICOM JSON objects and whether results were cut at ``max_results``.

    ``studies`` is a condition on ``dicom_studies`` rows confining the search (what the asking
    principal may see, imaging/access.py); applied in SQL, so ``limit``/``offset`` page over it.
    ``base`` (the DICOMweb root URL) adds each result's Retrieve URL (0008,1190), which PS3.18
    Tables 10.6.3-3/-4/-5 require in QIDO-RS responses; DIMSE C-FIND passes none.
    """
    limit = min(q.limit, max_results) if q.limit is not None else max_results
    stmt = _statement(q)
    if studies is not None:
        stmt = stmt.where(studies)
    stmt = stmt.offset(q.offset).limit(limit + 1)
    with db.read() as conn:
        rows = conn.execute(stmt).mappings().all()
        truncated = len(rows) > limit and (q.limit is None or q.limit > max_results)
        rows = rows[:limit]
        fields = _fields(q)
        out = [_row_json(r, fields, retrieve_url(base, q.level, r) if base else None) for r in rows]
        extra = set(q.include) - {ATTRS[f].tag for f in fields}
        if rows and (extra or q.include_all):
            _add_from_metadata(conn, q, rows, out, extra)
    return out, truncated


def _fields(q: QidoQuery) -> list[str]:
    fields = list(DEFAULT_FIELDS[q.level])
    # Outside a study (/series, /instances) the study-level attributes come along (PS3.18 §10.6.3.3).
    if q.level != "study" and q.study_uid is None:
        fields += [f for f in DEFAULT_FIELDS["study"] if f not in fields]
    if q.level == "instance" and q.series_uid is None:
        fields += [f for f in DEFAULT_FIELDS["series"] if f not in fields]
    by_tag = {a.tag: a.keyword for a in ATTRS.values()}
    for tag in sorted(q.include):
        kw = by_tag.get(tag)
        if kw and kw not in fields and LEVELS.index(ATTRS[kw].level) <= LEVELS.index(q.level):
            fields.append(kw)
    return fields


def _statement(q: QidoQuery) -> Select[Any]:
    cols = [a.column.label(a.keyword) for a in ATTRS.values() if LEVELS.index(a.level) <= LEVELS.index(q.level)]
    if q.level == "study":
        src = ST.join(P, P.c.pk == ST.c.patient_pk)
        key = ST.c.pk
    elif q.level == "series":
        src = SE.join(ST, ST.c.pk == SE.c.study_pk).join(P, P.c.pk == ST.c.patient_pk)
        key = SE.c.pk
    else:
        src = IN.join(SE, SE.c.pk == IN.c.series_pk).join(ST, ST.c.pk == IN.c.study_pk).join(P, P.c.pk == ST.c.patient_pk)
        key = IN.c.pk
    where: list[ColumnElement[bool]] = []
    if q.study_uid is not None:
        where.append(ST.c.study_uid == q.study_uid)
    if q.series_uid is not None:
        where.append(SE.c.series_uid == q.series_uid)
    for kw, value in q.filters:
        where.append(_match(ATTRS[kw], value, q.fuzzy) if kw in ATTRS else _extra_match(kw, value, q.level, q.fuzzy))
    return select(*cols, key.label("_pk")).select_from(src).where(and_(true(), *where)).order_by(key)


def _extra_tag(key: str, configured: Collection[str]) -> str | None:
    """The configured extra tag ``key`` names (keyword or hex), or None."""
    if not configured:
        return None
    from medcloud.imaging.extra_tags import normalise_tag

    try:
        tag = normalise_tag(key)
    except ValueError:
        return None
    return tag if tag in configured else None


def _extra_match(tag: str, value: str, level: Level, fuzzy: bool) -> ColumnElement[bool]:
    """An extra key matches a study/series/instance when any of its instances has a matching value."""
    from medcloud.imaging.extra_tags import keyword, vr

    x = dicom_extra_index
    kind = vr(tag)
    attr = Attr(keyword(tag), tag, kind if kind in ("UI", "DA", "TM", "DT", "PN") else "LO", "instance", x.c.value)
    owner = {"study": x.c.study_pk == ST.c.pk, "series": x.c.series_pk == SE.c.pk,
             "instance": x.c.instance_pk == IN.c.pk}[level]
    return exists(select(x.c.instance_pk).where(owner, x.c.tag == tag, _match(attr, value, fuzzy)))


def _match(a: Attr, value: str, fuzzy: bool) -> ColumnElement[bool]:
    if a.keyword == "ModalitiesInStudy":
        wanted = [v.strip() for v in value.replace("\\", ",").split(",") if v.strip()]
        return exists(select(SE.c.pk).where(SE.c.study_pk == ST.c.pk, SE.c.modality.in_(wanted)))
    if a.vr == "UI":
        uids = [v.strip() for v in value.replace("\\", ",").split(",") if v.strip()]
        return a.column.in_(uids)
    if a.vr in ("DA", "TM"):
        return _range(a, value)
    if a.vr == "DT":
        return _dt_range(a, value)
    if a.vr in ("IS", "US"):
        try:
            nums = [int(v) for v in value.split(",") if v.strip()]
        except ValueError as e:
            raise Invalid(f"{a.keyword} needs an integer, got {value!r}") from e
        return a.column.in_(nums)
    return or_(*(_text_match(a, v, fuzzy) for v in value.split(",") if v != "")) if value.strip(",") else false()


def _text_match(a: Attr, value: str, fuzzy: bool) -> ColumnElement[bool]:
    col = a.column
    ci = a.vr == "PN"
    if ci:
        col, value = func.lower(col), value.lower()
    if "*" in value or "?" in value:
        return col.like(_like(value), escape="!")
    if a.vr == "PN" and fuzzy:
        esc = _like(value)
        return or_(col.like(esc + "%", escape="!"), col.like("%^" + esc + "%", escape="!"),
                   col.like("% " + esc + "%", escape="!"))
    return col == value


def _like(value: str) -> str:
    out = []
    for ch in value:
        if ch in "!%_":
            out.append("!" + ch)
        elif ch == "*":
            out.append("%")
        elif ch == "?":
            out.append("_")
        else:
            out.append(ch)
    return "".join(out)


_FORMAT = {"DA": "a date YYYYMMDD that exists in the calendar",
           "DT": "a date-time YYYY[MM[DD[HH[MM[SS[.F{1,6}]]]]]][&ZZXX]",
           "TM": "a time HH[MM[SS[.F{1,6}]]] with HH < 24, MM < 60, SS < 61"}


def _invalid(a: Attr, value: str) -> Invalid:
    return Invalid(f"{a.keyword}: {value!r} is not a valid {a.vr} value (expected {_FORMAT[a.vr]}, "
                   "or a range a-b, -b, a-)")


def _range(a: Attr, value: str) -> ColumnElement[bool]:
    """DA/TM single value or range matching (PS3.4 C.2.2.2.5); malformed or reversed values are Invalid."""
    norm = da if a.vr == "DA" else tm
    if "-" not in value:
        v = norm(value)
        if v is None:
            raise _invalid(a, value)
        if a.vr == "TM":  # a partial time matches the whole span it names: 10 -> 10:00:00..10:59:59.999999
            return and_(a.column >= v, a.column <= (tm(value, upper=True) or v))
        return a.column == v
    lo_s, _, hi_s = value.partition("-")
    conds = []
    lo = hi = None
    if lo_s:
        lo = norm(lo_s)
        if lo is None:
            raise _invalid(a, lo_s)
        conds.append(a.column >= lo)
    if hi_s:
        hi = norm(hi_s) if a.vr == "DA" else tm(hi_s, upper=True)
        if hi is None:
            raise _invalid(a, hi_s)
        conds.append(a.column <= hi)
    if not conds:
        raise _invalid(a, value)
    if lo is not None and hi is not None and lo > hi:
        raise Invalid(f"{a.keyword}: the range {value!r} ends before it starts")
    return and_(*conds)


def _dt_range(a: Attr, value: str) -> ColumnElement[bool]:
    """DT single value or range (PS3.4 C.2.2.2.5). A value names the span it covers (``2024`` is
    all of 2024); offsets are converted to UTC like the stored values. ``-`` separates a range and
    also signs an offset (``&ZZXX``), so the split is the one that leaves a valid DT (or nothing)
    on both sides."""
    single = dt(value)
    if single is not None:
        return and_(a.column >= single, a.column <= dt(value, upper=True))
    for i, ch in enumerate(value):
        if ch != "-":
            continue
        lo_s, hi_s = value[:i], value[i + 1:]
        lo = dt(lo_s) if lo_s else None
        hi = dt(hi_s, upper=True) if hi_s else None
        if (lo_s and lo is None) or (hi_s and hi is None) or not (lo_s or hi_s):
            continue
        if lo is not None and hi is not None and lo > hi:
            raise Invalid(f"{a.keyword}: the range {value!r} ends before it starts")
        return and_(*([a.column >= lo] if lo else []), *([a.column <= hi] if hi else []))
    raise _invalid(a, value)


def retrieve_url(base: str, level: Level, row: Any) -> str:
    """The WADO-RS URL of a result: its study, series or instance resource under ``base``."""
    url = f"{base}/studies/{row['StudyInstanceUID']}"
    if level != "study":
        url += f"/series/{row['SeriesInstanceUID']}"
    if level == "instance":
        url += f"/instances/{row['SOPInstanceUID']}"
    return url


def _row_json(row: Any, fields: list[str], url: str | None = None) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for kw in fields:
        a = ATTRS[kw]
        out[a.tag] = element(a.vr, row[kw], multi=kw == "ModalitiesInStudy")
    out["00080005"] = {"vr": "CS", "Value": ["ISO_IR 192"]}
    if url is not None:
        out["00081190"] = {"vr": "UR", "Value": [url]}
    return dict(sorted(out.items()))


def element(vr: str, value: Any, *, multi: bool = False) -> dict[str, Any]:
    """One DICOM JSON attribute (PS3.18 F.2.2); None gives the zero-length attribute."""
    if value is None or value == "":
        return {"vr": vr}
    if vr == "PN":
        return {"vr": vr, "Value": [{"Alphabetic": value}]}
    if vr == "TM":
        value = value[:-7] if value.endswith(".000000") else value
    if multi:
        return {"vr": vr, "Value": [v for v in str(value).split("\\") if v]}
    if vr in ("IS", "US"):
        return {"vr": vr, "Value": [int(value)]}
    return {"vr": vr, "Value": [value]}


def _add_from_metadata(conn: Any, q: QidoQuery, rows: Sequence[Any], out: list[dict[str, Any]],
                       extra: set[str]) -> None:
    """Fill includefield attributes that are not index columns from a representative instance."""
    pks = [r["_pk"] for r in rows]
    if q.level == "instance":
        owner = IN.c.pk
        rep = select(IN.c.pk.label("owner"), IN.c.metadata).where(IN.c.pk.in_(pks))
    else:
        owner = IN.c.study_pk if q.level == "study" else IN.c.series_pk
        first = select(owner.label("owner"), func.min(IN.c.pk).label("ipk")).where(owner.in_(pks)).group_by(owner)
        sub = first.subquery()
        rep = select(sub.c.owner, IN.c.metadata).join(IN, IN.c.pk == sub.c.ipk)
    found = {r.owner: orjson.loads(r.metadata) for r in conn.execute(rep)}
    for r, obj in zip(rows, out, strict=True):
        md = found.get(r["_pk"])
        if md is None:
            continue
        for tag in extra:
            if tag in md and tag not in obj:
                obj[tag] = md[tag]
        if q.include_all:
            for tag, el in md.items():
                if tag in obj or "BulkDataURI" in el or "InlineBinary" in el:
                    continue
                if q.level == "instance" or int(tag[:4], 16) in _ALL_EXTRA_GROUPS[q.level] \
                        or tag in _ALL_EXTRA_TAGS[q.level]:
                    obj[tag] = el
        obj_sorted = dict(sorted(obj.items()))
        obj.clear()
        obj.update(obj_sorted)


def _nonneg(key: str, value: str) -> int:
    try:
        n = int(value)
    except ValueError as e:
        raise Invalid(f"{key} must be a non-negative integer, got {value!r}") from e
    if n < 0:
        raise Invalid(f"{key} must be a non-negative integer, got {value!r}")
    return n


def _keyword_of(key: str) -> str:
    k = key.strip()
    if len(k) == 8 and all(c in "0123456789abcdefABCDEF" for c in k):
        kw = keyword_for_tag(int(k, 16))
        return kw or k.upper()
    return k


def _tag_of(key: str) -> str:
    k = key.strip()
    if len(k) == 8 and all(c in "0123456789abcdefABCDEF" for c in k):
        return k.upper()
    tag = tag_for_keyword(k)
    if tag is None:
        raise Invalid(f"includefield: {k!r} is neither a DICOM keyword nor a tag")
    return f"{tag:08X}"
