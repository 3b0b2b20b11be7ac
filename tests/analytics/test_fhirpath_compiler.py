"""Property: every FHIRPath expression the parser accepts compiles to SQL that DuckDB binds and runs.

Data-dependent failures (several values where one is needed, non-boolean criteria) must surface as
medcloud errors; any other DuckDB error would be a compiler bug and fails this test.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from medcloud.analytics import DuckDBEngine
from medcloud.errors import MedcloudError

PATIENT = {
    "resourceType": "Patient",
    "id": "p1",
    "active": True,
    "birthDate": "1970-06-01",
    "gender": "female",
    "name": [{"use": "official", "family": "Doe", "given": ["Jane", "Q"]}, {"family": "Roe"}],
    "telecom": [{"system": "phone", "value": "555"}],
    "extension": [{"url": "http://x/ext", "valueCode": "F"}, {"url": "http://x/n", "valueInteger": 3}],
    "managingOrganization": {"reference": "Organization/o1"},
}
NAMES = [
    "name",
    "given",
    "family",
    "use",
    "id",
    "active",
    "birthDate",
    "telecom",
    "value",
    "extension",
    "url",
    "managingOrganization",
    "system",
    "gender",
]
ATOMS = st.sampled_from(
    NAMES
    + ["'x'", "1", "2.5", "true", "@2020-01-01", "{}", "$this", "%rowIndex", "%c", "%resource", "Patient"]
)
FUNCTIONS_0 = [
    "first()",
    "last()",
    "count()",
    "exists()",
    "empty()",
    "not()",
    "distinct()",
    "tail()",
    "single()",
    "toString()",
    "toInteger()",
    "lowBoundary()",
    "highBoundary()",
    "join()",
    "upper()",
    "length()",
    "getResourceKey()",
    "getReferenceKey()",
    "hasValue()",
    "allTrue()",
    "sum()",
]
FUNCTIONS_1 = [
    "where({})",
    "select({})",
    "exists({})",
    "all({})",
    "join({})",
    "skip({})",
    "take({})",
    "startsWith({})",
    "contains({})",
    "union({})",
    "combine({})",
    "extension({})",
    "iif({}, 1, 2)",
]
TYPES = st.sampled_from(["string", "integer", "Quantity", "boolean", "dateTime", "Coding", "code"])
OPS = st.sampled_from(
    [
        "=",
        "!=",
        "<",
        ">=",
        "and",
        "or",
        "xor",
        "implies",
        "+",
        "-",
        "*",
        "/",
        "div",
        "mod",
        "&",
        "|",
        "in",
        "contains",
        "~",
    ]
)


def _expressions() -> st.SearchStrategy[str]:
    return st.recursive(
        ATOMS,
        lambda inner: st.one_of(
            st.tuples(inner, st.sampled_from(NAMES)).map(lambda t: f"{t[0]}.{t[1]}"),
            st.tuples(inner, st.sampled_from(FUNCTIONS_0)).map(lambda t: f"{t[0]}.{t[1]}"),
            st.tuples(inner, st.sampled_from(FUNCTIONS_1), inner).map(
                lambda t: f"{t[0]}.{t[1].format(t[2])}"
            ),
            st.tuples(inner, TYPES).map(lambda t: f"{t[0]}.ofType({t[1]})"),
            st.tuples(inner, st.sampled_from(["is", "as"]), TYPES).map(lambda t: f"({t[0]} {t[1]} {t[2]})"),
            st.tuples(inner, OPS, inner).map(lambda t: f"({t[0]} {t[1]} {t[2]})"),
            st.tuples(inner, inner).map(lambda t: f"{t[0]}[{t[1]}]"),
            inner.map(lambda e: f"-({e})"),
        ),
        max_leaves=6,
    )


@pytest.fixture(scope="module")
def engine() -> Iterator[DuckDBEngine]:
    with DuckDBEngine() as e:
        yield e


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(expression=_expressions(), collection=st.booleans(), nested=st.booleans())
def test_any_parsed_expression_compiles_and_runs(
    engine: DuckDBEngine, expression: str, collection: bool, nested: bool
) -> None:
    column = {"name": "v", "path": expression, "collection": collection}
    select = {"forEachOrNull": "name", "column": [column]} if nested else {"column": [column]}
    view = {"resource": "Patient", "constant": [{"name": "c", "valueString": "Doe"}], "select": [select]}
    with contextlib.suppress(MedcloudError):
        engine.run(view, [PATIENT])
