"""Parsers at the DICOMweb edge survive arbitrary input (Hypothesis) and round-trip what they write."""

from __future__ import annotations

import contextlib

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from medcloud.errors import Invalid
from medcloud.imaging import qido
from medcloud.imaging._multipart import media_type, parse_related, write_related
from medcloud.imaging._parse import da, tm


@pytest.mark.parametrize(("value", "expected"), [
    ("20240115", "20240115"), ("2024.01.15", "20240115"), ("2024011", None), ("abcdefgh", None), ("", None),
])
def test_da_normalisation(value: str, expected: str | None) -> None:
    assert da(value) == expected


@pytest.mark.parametrize(("value", "upper", "expected"), [
    ("10", False, "100000.000000"), ("10", True, "105959.999999"), ("1015", False, "101500.000000"),
    ("101530.5", False, "101530.500000"), ("10:15:30", False, "101530.000000"), ("101", False, None),
    ("ab", False, None),
])
def test_tm_normalisation(value: str, upper: bool, expected: str | None) -> None:
    assert tm(value, upper=upper) == expected


@given(st.text(max_size=30))
def test_tm_and_da_never_raise_and_sort_like_times(value: str) -> None:
    t = tm(value)
    assert t is None or (len(t) == 13 and t[6] == ".")
    d = da(value)
    assert d is None or (len(d) == 8 and d.isdigit())


@settings(max_examples=300)
@given(st.lists(st.tuples(st.sampled_from(["PatientName", "StudyDate", "StudyTime", "limit", "offset",
                                           "includefield", "fuzzymatching", "SeriesNumber", "0020000D",
                                           "Modality", "x.y", "Nonsense"]),
                          st.text(max_size=20)), max_size=6))
def test_query_parser_accepts_or_refuses_cleanly(params: list[tuple[str, str]]) -> None:
    try:
        q = qido.parse_query("series", params)
        for kw, value in q.filters:
            qido._match(qido.ATTRS[kw], value, q.fuzzy)
    except Invalid:
        pass


@given(st.lists(st.binary(max_size=200), min_size=1, max_size=5))
def test_multipart_round_trip(bodies: list[bytes]) -> None:
    boundary = "b-1234567890abcdef"
    raw = b"".join(write_related(((({"Content-Type": "application/dicom"}), [b]) for b in bodies), boundary))
    parts = parse_related(raw, boundary)
    assert [p.body for p in parts] == bodies
    assert all(p.content_type == "application/dicom" for p in parts)


@given(st.binary(max_size=300))
def test_multipart_parser_never_crashes(raw: bytes) -> None:
    with contextlib.suppress(Invalid):
        parse_related(raw, "xyz")


def test_media_type_parameters() -> None:
    assert media_type('multipart/related; type="application/dicom"; boundary=abc') == (
        "multipart/related", {"type": "application/dicom", "boundary": "abc"})
    assert media_type("Application/DICOM+JSON") == ("application/dicom+json", {})
