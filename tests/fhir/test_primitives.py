from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone
from decimal import Decimal

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from medcloud.errors import Invalid
from medcloud.fhir.primitives import MAX_US, MIN_US, date_range, normalise_string, number_range

EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def us(dt: datetime) -> int:
    return (dt - EPOCH) // timedelta(microseconds=1)


@pytest.mark.parametrize(
    ("value", "low", "high"),
    [
        ("2023", datetime(2023, 1, 1, tzinfo=UTC), datetime(2024, 1, 1, tzinfo=UTC)),
        ("2024-02", datetime(2024, 2, 1, tzinfo=UTC), datetime(2024, 3, 1, tzinfo=UTC)),
        ("2023-12", datetime(2023, 12, 1, tzinfo=UTC), datetime(2024, 1, 1, tzinfo=UTC)),
        ("2023-02-03", datetime(2023, 2, 3, tzinfo=UTC), datetime(2023, 2, 4, tzinfo=UTC)),
        ("2023-02-03T04:05", datetime(2023, 2, 3, 4, 5, tzinfo=UTC), datetime(2023, 2, 3, 4, 6, tzinfo=UTC)),
        (
            "2023-02-03T04:05:06Z",
            datetime(2023, 2, 3, 4, 5, 6, tzinfo=UTC),
            datetime(2023, 2, 3, 4, 5, 7, tzinfo=UTC),
        ),
        (
            "2023-02-03T04:05:06.5+01:00",
            datetime(2023, 2, 3, 3, 5, 6, 500000, tzinfo=UTC),
            datetime(2023, 2, 3, 3, 5, 6, 600000, tzinfo=UTC),
        ),
        (
            "2023-02-03T04:05:06.123456789-05:30",
            datetime(2023, 2, 3, 9, 35, 6, 123456, tzinfo=UTC),
            datetime(2023, 2, 3, 9, 35, 6, 123457, tzinfo=UTC),
        ),
        (
            "2023-02-03T04:05:06",
            datetime(2023, 2, 3, 4, 5, 6, tzinfo=UTC),
            datetime(2023, 2, 3, 4, 5, 7, tzinfo=UTC),
        ),
    ],
)
def test_date_range_covers_the_precision_of_the_value(value: str, low: datetime, high: datetime) -> None:
    assert date_range(value) == (us(low), us(high) - 1)


def test_date_range_sentinels_are_years_0001_and_9999() -> None:
    assert date_range("0001")[0] == MIN_US
    assert date_range("9999")[1] == MAX_US
    assert us(datetime(1, 1, 1, tzinfo=UTC)) == MIN_US


def test_date_range_clamps_zone_offsets_at_the_ends_of_time() -> None:
    low, high = date_range("9999-12-31T23:59:59-14:00")
    assert low <= high == MAX_US
    low, high = date_range("0001-01-01T00:00:00+14:00")
    assert MIN_US == low <= high


@pytest.mark.parametrize(
    "value",
    [
        "",
        "20",
        "2023-1",
        "2023-13",
        "2023-02-30",
        "2023-02-03T",
        "2023-02-03T25:00:00Z",
        "2023-02-03T10:61",
        "2023-02-03T10:00:00+15:00",
        "0000",
        "2023-02-03 10:00",
        "abc",
        "2023-02-03T10:00:00.Z",
        "１２３４",
    ],
)
def test_date_range_rejects_malformed_values(value: str) -> None:
    with pytest.raises(Invalid):
        date_range(value)


def test_date_range_rejects_non_strings() -> None:
    with pytest.raises(Invalid):
        date_range(2023)  # type: ignore[arg-type]


@settings(deadline=None)  # wall-clock deadlines are noise on a shared machine
@given(st.text(max_size=40))
def test_date_range_raises_only_invalid_on_arbitrary_text(s: str) -> None:
    try:
        low, high = date_range(s)
    except Invalid:
        return
    assert MIN_US <= low <= high <= MAX_US


@settings(deadline=None)  # wall-clock deadlines are noise on a shared machine
@given(st.datetimes(min_value=datetime(1, 1, 2), max_value=datetime(9999, 12, 30), timezones=st.just(UTC)))
def test_date_range_round_trips_instants_and_widens_with_less_precision(dt: datetime) -> None:
    instant = dt.strftime("%Y-%m-%dT%H:%M:%S.%f").rjust(26, "0") + "Z"
    low, high = date_range(instant)
    assert low == high == us(dt)
    contained = low
    for text in (instant[:19] + "Z", instant[:16] + "Z", instant[:10], instant[:7], instant[:4]):
        lo, hi = date_range(text)
        assert lo <= contained <= hi
        assert hi - lo >= high - low
        low, high = lo, hi


@settings(deadline=None)  # wall-clock deadlines are noise on a shared machine
@given(
    st.datetimes(min_value=datetime(2, 1, 1), max_value=datetime(9998, 12, 31)),
    st.integers(min_value=-14 * 60, max_value=14 * 60),
)
def test_date_range_applies_the_zone_offset(dt: datetime, offset_min: int) -> None:
    dt = dt.replace(microsecond=0, tzinfo=timezone(timedelta(minutes=offset_min)))
    text = dt.isoformat()
    assert date_range(text) == (us(dt), us(dt) + 999_999)


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("100", (100.0, 99.5, 100.5)),
        ("1.50", (1.5, 1.495, 1.505)),
        ("1e2", (100.0, 50.0, 150.0)),
        ("1.0E-3", (0.001, 0.00095, 0.00105)),
        ("-2", (-2.0, -2.5, -1.5)),
        (100, (100.0, 99.5, 100.5)),
        (1.5, (1.5, 1.45, 1.55)),
        (Decimal("0.10"), (0.1, 0.095, 0.105)),
    ],
)
def test_number_range_uses_implicit_precision(value: object, expected: tuple[float, float, float]) -> None:
    assert number_range(value) == pytest.approx(expected)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "value",
    [
        "",
        "abc",
        "1.",
        ".5",
        "1e",
        "NaN",
        "Infinity",
        "1_000",
        "1e400",
        10**400,
        True,
        Decimal("NaN"),
        None,
        "0x10",
    ],
)
def test_number_range_rejects_non_decimals(value: object) -> None:
    with pytest.raises(Invalid):
        number_range(value)  # type: ignore[arg-type]


@settings(deadline=None)  # wall-clock deadlines are noise on a shared machine
@given(st.text(max_size=30))
def test_number_range_raises_only_invalid_on_arbitrary_text(s: str) -> None:
    try:
        value, low, high = number_range(s)
    except Invalid:
        return
    assert low <= value <= high


@settings(deadline=None)  # wall-clock deadlines are noise on a shared machine
@given(st.decimals(allow_nan=False, allow_infinity=False, min_value=-(10**12), max_value=10**12, places=6))
def test_number_range_round_trips_and_more_digits_narrow_the_range(d: Decimal) -> None:
    value, low, high = number_range(str(d))
    assert low <= value <= high
    assert value == pytest.approx(float(d))
    if d.as_tuple().exponent > -12:  # type: ignore[operator]
        _, low2, high2 = number_range(str(d) + "0" if "." in str(d) else str(d) + ".0")
        assert low <= low2 <= high2 <= high


@settings(deadline=None)  # wall-clock deadlines are noise on a shared machine
@given(st.floats(allow_nan=False, allow_infinity=False, min_value=-1e15, max_value=1e15))
def test_number_range_of_a_float_contains_the_float(f: float) -> None:
    value, low, high = number_range(f)
    assert value == f
    assert low <= f <= high


def test_normalise_string_folds_case_accents_and_whitespace() -> None:
    assert normalise_string("  Miguel   Ángel\tÉLOÏSE ") == "miguel angel eloise"
    assert normalise_string("Straße") == "strasse"
    assert normalise_string("ﬁne") == "fine"  # NFKD compatibility ligature


@settings(deadline=None)  # wall-clock deadlines are noise on a shared machine
@given(st.text(max_size=30))
def test_normalise_string_is_idempotent(s: str) -> None:
    once = normalise_string(s)
    assert normalise_string(once) == once
