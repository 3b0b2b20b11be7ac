"""SQL text helpers and the DuckDB macros that compiled FHIRPath calls."""

from __future__ import annotations


def sql_str(value: str) -> str:
    return "'" + value.replace("'", "''") + "'"


# String-valued FHIR primitives (schema spelling): read as VARCHAR with ->> (JSON null reads as {}).
STRING_TYPES = frozenset({
    "string", "code", "id", "uri", "url", "canonical", "oid", "uuid", "markdown", "base64Binary", "date",
    "dateTime", "time", "instant", "xhtml",
})
_NUMERIC = "('BIGINT', 'UBIGINT', 'DOUBLE')"
# FHIR date/dateTime/instant (https://hl7.org/fhir/R4/datatypes.html#dateTime) and time.
_DT = r"^(\d{4})(?:-(\d{2}))?(?:-(\d{2}))?(?:T(\d{2})(?::(\d{2}))?(?::(\d{2}))?(?:\.(\d+))?)?(Z|[+-]\d{2}:\d{2})?$"
_TIME = r"^(\d{2})(?::(\d{2}))?(?::(\d{2}))?(?:\.(\d+))?$"


def _or(field: str, default: str) -> str:
    return f"CASE WHEN g.{field} = '' THEN '{default}' ELSE g.{field} END"


_DT_GROUPS = "['y', 'mo', 'd', 'h', 'mi', 'sec', 'f', 'tz']"
_LAST_DAY = "strftime(last_day(make_date(CAST(g.y AS INTEGER), CAST({mo} AS INTEGER), 1)), '%d')"


def _datetime(low: bool, with_time: bool) -> str:
    mo = _or("mo", "01" if low else "12")
    day = _or("d", "01") if low else f"CASE WHEN g.d = '' THEN {_LAST_DAY.format(mo=mo)} ELSE g.d END"
    date = f"g.y || '-' || {mo} || '-' || {day}"
    if not with_time:
        return date
    hi = "00" if low else "23"
    mm = "00" if low else "59"
    frac = (
        f"CASE WHEN g.f = '' THEN '{'000' if low else '999'}' ELSE rpad(g.f, 3, '{'0' if low else '9'}') END"
    )
    tz = f"CASE WHEN g.tz = '' THEN '{'+14:00' if low else '-12:00'}' ELSE g.tz END"
    return (
        f"{date} || 'T' || {_or('h', hi)} || ':' || {_or('mi', mm)} || ':' || {_or('sec', mm)}"
        f" || '.' || {frac} || {tz}"
    )


def _dt_macro(name: str, low: bool, with_time: bool) -> str:
    return (
        f"CREATE OR REPLACE TEMP MACRO {name}(s) AS CASE WHEN regexp_full_match(s, '{_DT}') THEN "
        f"list_transform([regexp_extract(s, '{_DT}', {_DT_GROUPS})], lambda g: {_datetime(low, with_time)})[1] END"
    )


def _time_macro(name: str, low: bool) -> str:
    d = "00" if low else "59"
    frac = (
        f"CASE WHEN g.f = '' THEN '{'000' if low else '999'}' ELSE rpad(g.f, 3, '{'0' if low else '9'}') END"
    )
    return (
        f"CREATE OR REPLACE TEMP MACRO {name}(s) AS CASE WHEN regexp_full_match(s, '{_TIME}') THEN "
        f"list_transform([regexp_extract(s, '{_TIME}', ['h', 'mi', 'sec', 'f'])], lambda g: "
        f"g.h || ':' || {_or('mi', d)} || ':' || {_or('sec', d)} || '.' || {frac})[1] END"
    )


def _decimal_macro(name: str, low: bool) -> str:
    # FHIRPath lowBoundary()/highBoundary() on decimals: half a unit of the last written digit.
    sign = "-" if low else "+"
    rnd = "floor" if low else "ceil"
    return (
        f"CREATE OR REPLACE TEMP MACRO {name}(t, p) AS list_transform("
        "[CASE WHEN contains(t, '.') THEN length(split_part(t, '.', 2)) ELSE 0 END], lambda d: "
        f"CASE WHEN p IS NULL THEN format('{{:.{{}}f}}', CAST(t AS DOUBLE) {sign} 0.5 * pow(10, -d), d + 1) "
        f"ELSE format('{{:.{{}}f}}', {rnd}((CAST(t AS DOUBLE) {sign} 0.5 * pow(10, -d)) * pow(10, p)) / pow(10, p), p) END)[1]"
    )


def _boundary_macro(name: str, low: bool) -> str:
    side = "low" if low else "high"
    period = "start" if low else "end"
    return (
        f"CREATE OR REPLACE TEMP MACRO {name}(x, p, hint) AS CASE "
        f"WHEN x IS NULL THEN NULL "
        f"WHEN json_type(x) IN {_NUMERIC} THEN CAST(fp_dec_{side}(CAST(x AS VARCHAR), p) AS JSON) "
        f"WHEN json_type(x) = 'OBJECT' THEN to_json(fp_dt_{side}(x ->> '{period}')) "
        f"WHEN json_type(x) <> 'VARCHAR' THEN NULL "
        f"WHEN hint = 'time' OR (hint IS NULL AND regexp_full_match(x ->> '$', '{_TIME}')) "
        f"THEN to_json(fp_time_{side}(x ->> '$')) "
        f"WHEN hint IN ('dateTime', 'instant') OR (hint IS NULL AND contains(x ->> '$', 'T')) "
        f"THEN to_json(fp_dt_{side}(x ->> '$')) "
        f"ELSE to_json(fp_date_{side}(x ->> '$')) END"
    )


MACROS: tuple[str, ...] = (
    # A JSON node (or array of nodes) as a FHIRPath collection: JSON arrays flatten, null is empty.
    # json_extract returns minified JSON, so a leading '[' is an array without parsing it again.
    "CREATE OR REPLACE TEMP MACRO fp_items(v) AS list_transform([CAST(v AS JSON)], lambda y: CASE "
    "WHEN y IS NULL THEN CAST([] AS JSON[]) WHEN starts_with(CAST(y AS VARCHAR), '[') THEN json_extract(y, '$[*]') "
    "WHEN CAST(y AS VARCHAR) = 'null' THEN CAST([] AS JSON[]) ELSE [y] END)[1]",
    # FHIRPath = on two single JSON nodes: numbers by value (1 = 1.0), everything else by JSON text.
    f"CREATE OR REPLACE TEMP MACRO fp_eq(a, b) AS CASE WHEN a IS NULL OR b IS NULL THEN NULL "
    f"WHEN json_type(a) IN {_NUMERIC} AND json_type(b) IN {_NUMERIC} THEN CAST(a AS DOUBLE) = CAST(b AS DOUBLE) "
    f"ELSE CAST(a AS VARCHAR) = CAST(b AS VARCHAR) END",
    f"CREATE OR REPLACE TEMP MACRO fp_cmp_num(a, b) AS json_type(a) IN {_NUMERIC} AND json_type(b) IN {_NUMERIC}",
    # getReferenceKey([type]): relative/absolute literal references (``[base/]Type/id[/_history/v]``)
    # and urn:uuid (type from Reference.type). String splitting, not regexes: this runs per reference.
    "CREATE OR REPLACE TEMP MACRO fp_ref_key(r, t) AS list_transform([r ->> 'reference'], lambda ref: CASE "
    "WHEN ref IS NULL OR contains(ref, '?') OR starts_with(ref, '#') THEN NULL "
    "WHEN starts_with(ref, 'urn:uuid:') THEN CASE WHEN t IS NULL OR (r ->> 'type') = t THEN substr(ref, 10) END "
    "ELSE list_transform([string_split(split_part(ref, '/_history/', 1), '/')], lambda p: CASE "
    "WHEN len(p) >= 2 AND p[-1] <> '' AND ascii(p[-2]) BETWEEN 65 AND 90 AND (t IS NULL OR p[-2] = t) "
    "THEN p[-1] END)[1] END)[1]",
    _dt_macro("fp_dt_low", True, True),
    _dt_macro("fp_dt_high", False, True),
    _dt_macro("fp_date_low", True, False),
    _dt_macro("fp_date_high", False, False),
    _time_macro("fp_time_low", True),
    _time_macro("fp_time_high", False),
    _decimal_macro("fp_dec_low", True),
    _decimal_macro("fp_dec_high", False),
    _boundary_macro("fp_low", True),
    _boundary_macro("fp_high", False),
)
