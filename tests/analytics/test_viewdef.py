"""ViewDefinition validation: clear errors that say where in the JSON the problem is."""

from __future__ import annotations

from typing import Any

import pytest

from medcloud.analytics import ViewDefinitionError, parse_view
from medcloud.errors import Invalid


def _view(**overrides: Any) -> dict[str, Any]:
    view: dict[str, Any] = {"resource": "Patient", "select": [{"column": [{"name": "id", "path": "id"}]}]}
    view.update(overrides)
    return view


def _error(view: Any) -> ViewDefinitionError:
    with pytest.raises(ViewDefinitionError) as info:
        parse_view(view)
    return info.value


def test_valid_view_lists_columns_in_spec_order() -> None:
    view = parse_view(
        {
            "resource": "Patient",
            "select": [
                {
                    "column": [{"name": "a", "path": "'A'"}],
                    "select": [{"forEach": "name", "column": [{"name": "b", "path": "family"}]}],
                    "unionAll": [
                        {"column": [{"name": "c", "path": "'1'"}]},
                        {"column": [{"name": "c", "path": "'2'"}]},
                    ],
                },
                {"column": [{"name": "d", "path": "'D'"}]},
            ],
        }
    )
    assert [c.name for c in view.columns] == ["a", "b", "c", "d"]


def test_view_errors_are_invalid_category() -> None:
    assert isinstance(_error({}), Invalid)


@pytest.mark.parametrize(
    ("view", "location", "fragment"),
    [
        ({}, "resource", "is required"),
        (_view(resource="patient"), "resource", "not a FHIR resource type"),
        (_view(select=[]), "select", "at least one select"),
        (_view(select=[{"forEach": 1}]), "select[0].forEach", "must be a FHIRPath string"),
        (_view(select=[{"forEach": "@@"}]), "select[0].forEach", "syntax error"),
        (
            _view(
                select=[
                    {
                        "column": [
                            {"name": "a", "path": "id"},
                            {"name": "b", "path": "id"},
                            {"name": "c", "path": "name.where(use = )"},
                        ]
                    }
                ]
            ),
            "select[0].column[2].path",
            "syntax error",
        ),
        (
            _view(select=[{"column": [{"name": "1abc", "path": "id"}]}]),
            "select[0].column[0].name",
            "not a valid column name",
        ),
        (_view(select=[{"column": [{"name": "a"}]}]), "select[0].column[0].path", "is required"),
        (
            _view(select=[{"column": [{"name": "a", "path": "id", "collection": "yes"}]}]),
            "select[0].column[0].collection",
            "true or false",
        ),
        (
            _view(
                select=[
                    {"column": [{"name": "id", "path": "id"}]},
                    {"column": [{"name": "id", "path": "id"}]},
                ]
            ),
            "select[1].column[0].name",
            "already defined",
        ),
        (
            _view(select=[{"forEach": "a", "forEachOrNull": "b", "column": [{"name": "x", "path": "x"}]}]),
            "select[0]",
            "only one of forEach",
        ),
        (
            _view(select=[{"repeat": [], "column": [{"name": "x", "path": "x"}]}]),
            "select[0].repeat",
            "non-empty",
        ),
        (
            _view(
                select=[
                    {
                        "unionAll": [
                            {"column": [{"name": "a", "path": "id"}]},
                            {"column": [{"name": "b", "path": "id"}]},
                        ]
                    }
                ]
            ),
            "select[0].unionAll[1]",
            "same columns",
        ),
        (_view(constant=[{"name": "c"}]), "constant[0]", "exactly one value[x]"),
        (
            _view(constant=[{"name": "c", "valueInteger": "1"}]),
            "constant[0].valueInteger",
            "not a valid integer",
        ),
        (
            _view(constant=[{"name": "c", "valueQuantity": {}}]),
            "constant[0].valueQuantity",
            "unsupported constant type",
        ),
        (
            _view(constant=[{"name": "c", "valueString": "a"}, {"name": "c", "valueString": "b"}]),
            "constant[1].name",
            "defined twice",
        ),
        (_view(where=[{"path": "name.("}]), "where[0].path", "syntax error"),
    ],
)
def test_invalid_view_error_names_its_location(view: Any, location: str, fragment: str) -> None:
    err = _error(view)
    assert err.location == location
    assert str(err).startswith(f"{location}: ") or not location
    assert fragment in str(err)


def test_undefined_constant_is_reported_at_the_path_that_uses_it() -> None:
    from medcloud.analytics import DuckDBEngine

    view = _view(
        select=[{"column": [{"name": "id", "path": "id"}, {"name": "x", "path": "name.where(use = %nope)"}]}]
    )
    with DuckDBEngine() as engine, pytest.raises(ViewDefinitionError) as info:
        engine.run(view, [{"resourceType": "Patient", "id": "p"}])
    assert info.value.location == "select[0].column[1].path"
    assert "%nope" in str(info.value)


def test_unknown_function_is_a_located_view_error() -> None:
    from medcloud.analytics import DuckDBEngine

    view = _view(select=[{"column": [{"name": "x", "path": "name.frobnicate()"}]}])
    with (
        DuckDBEngine() as engine,
        pytest.raises(ViewDefinitionError, match=r"select\[0\]\.column\[0\]\.path: .*frobnicate"),
    ):
        engine.run(view, [])
