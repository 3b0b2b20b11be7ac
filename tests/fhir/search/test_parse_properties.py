"""Property tests: the value parsers accept or reject any input, but only ever with ``Invalid``."""

from __future__ import annotations

import contextlib

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from medcloud.errors import Invalid, NotSupported
from medcloud.fhir.search.params import date, number, quantity, reference, string, token, uri
from medcloud.fhir.search.parse import (
    WarnFn,
    or_values,
    parse_results,
    split_escaped,
    split_prefix,
    unescape,
)

ALPHABET = st.characters(codec="utf-8", exclude_categories=("Cs",))
TEXT = st.text(ALPHABET, max_size=40)
SEARCHY = st.text(st.sampled_from("0123456789-+.:TZeE|$,\\ gtlqnsabpx/"), max_size=30)


def _survives(fn, value):
    with contextlib.suppress(Invalid):
        fn(value)


@settings(max_examples=1500)
@given(st.one_of(TEXT, SEARCHY))
def test_value_parsers_raise_only_invalid(value):
    _survives(date.parse, value)
    _survives(number.parse, value)
    _survives(quantity.parse, value)
    _survives(lambda v: token.parse(v, None), value)
    _survives(lambda v: token.parse(v, "of-type"), value)
    _survives(lambda v: token.parse(v, "text"), value)
    _survives(lambda v: string.parse(v, None), value)
    _survives(lambda v: uri.parse(v, "above"), value)
    _survives(lambda v: reference.parse(v, None, ("Patient",), "http://x/fhir"), value)
    _survives(or_values, value)


@settings(max_examples=500)
@given(st.lists(st.tuples(st.sampled_from(["_count", "_sort", "_total", "_summary", "_elements", "_include",
                                           "_revinclude:iterate", "_include:bogus"]), st.one_of(TEXT, SEARCHY)),
                max_size=4))
def test_results_parser_raises_only_invalid(query):
    with contextlib.suppress(Invalid, NotSupported):
        parse_results(query, default_count=10, max_count=100, warn=WarnFn(strict=False))


@given(st.lists(st.text(st.characters(exclude_characters="\\,"), max_size=8), min_size=1, max_size=5))
def test_escaping_round_trips_through_or_splitting(parts):
    joined = ",".join(p.replace("\\", "\\\\").replace(",", "\\,") for p in parts)
    assert [unescape(p) for p in split_escaped(joined, ",")] == parts


@given(st.sampled_from(sorted(["eq", "ne", "gt", "lt", "ge", "le", "sa", "eb", "ap"])),
       st.datetimes(timezones=st.none()).map(lambda d: d.isoformat(timespec="seconds")))
def test_every_prefix_parses_on_dates_and_keeps_the_range(prefix, value):
    v = date.parse(prefix + value)
    assert v.prefix == prefix and v.lo <= v.hi


@given(st.decimals(allow_nan=False, allow_infinity=False, places=3, min_value=-10**6, max_value=10**6))
def test_number_equality_range_contains_the_value(d):
    v = number.parse(str(d))
    assert v.prefix == "eq" and v.lo <= v.value <= v.hi


@pytest.mark.parametrize(("raw", "expected"), [
    ("ge2020", ("ge", "2020")), ("2020", ("eq", "2020")), ("gt-5", ("gt", "-5")), ("apple", ("eq", "apple")),
    ("ne", ("eq", "ne")),
])
def test_split_prefix_examples(raw, expected):
    assert split_prefix(raw) == expected


@pytest.mark.parametrize("raw", ["100|a", "a|b|c", "1|2|3|4"])
def test_quantity_examples_rejected(raw):
    with pytest.raises(Invalid):
        quantity.parse(raw)
