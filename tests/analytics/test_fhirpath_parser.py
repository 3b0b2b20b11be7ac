"""FHIRPath parser: the subset views use, syntax errors with positions, and robustness."""

from __future__ import annotations

import contextlib
from decimal import Decimal

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from medcloud.analytics import FhirPathSyntaxError
from medcloud.analytics.fhirpath import ast
from medcloud.analytics.fhirpath.parser import parse


def test_member_function_and_indexer_chain() -> None:
    first_name = ast.Indexer(ast.Identifier("name"), ast.Literal(0, "integer"))
    assert parse("name[0].given.first()") == ast.Call(ast.Member(first_name, "given"), "first", ())


def test_operator_precedence_follows_fhirpath() -> None:
    node = parse("a = 1 + 2 * 3 and b or c")
    assert isinstance(node, ast.Binary) and node.op == "or"
    left = node.left
    assert isinstance(left, ast.Binary) and left.op == "and"
    eq = left.left
    assert isinstance(eq, ast.Binary) and eq.op == "="
    assert eq.right == ast.Binary(
        "+", ast.Literal(1, "integer"), ast.Binary("*", ast.Literal(2, "integer"), ast.Literal(3, "integer"))
    )


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("'it''s'", None),
        ("'a\\'b'", ast.Literal("a'b", "string")),
        ("1.50", ast.Literal(Decimal("1.50"), "decimal")),
        ("true", ast.Literal(True, "boolean")),
        ("@2020-01", ast.Literal("2020-01", "date")),
        ("@2020-01-02T10:00:00.000+02:00", ast.Literal("2020-01-02T10:00:00.000+02:00", "dateTime")),
        ("@T12:30", ast.Literal("12:30", "time")),
        ("{}", ast.Literal(None, "empty")),
        ("%rowIndex", ast.External("rowIndex")),
        ("%`my const`", ast.External("my const")),
        ("$this", ast.Variable("this")),
        ("`div`", ast.Identifier("div")),
        ("value is Quantity", ast.TypeOp("is", ast.Identifier("value"), "Quantity")),
        (
            "value.ofType(FHIR.string)",
            ast.Call(ast.Identifier("value"), "ofType", (ast.Member(ast.Identifier("FHIR"), "string"),)),
        ),
    ],
)
def test_literals_and_terms(text: str, expected: ast.Node | None) -> None:
    if expected is None:
        with pytest.raises(FhirPathSyntaxError):
            parse(text)
    else:
        assert parse(text) == expected


@pytest.mark.parametrize(
    ("text", "position"),
    [
        ("@@", 0),
        ("name.", 5),
        ("(a", 2),
        ("a b", 2),
        ("", 0),
        ("name.where(use = )", 17),
        ("a[1", 3),
        ("#", 0),
    ],
)
def test_syntax_error_reports_position(text: str, position: int) -> None:
    with pytest.raises(FhirPathSyntaxError) as info:
        parse(text)
    assert info.value.position == position
    assert repr(text) in str(info.value)


@settings(max_examples=2000, deadline=None)
@given(st.text(alphabet=st.sampled_from(list("abc.()[]'%@$=<>!+-*/|&, 019T:`{}\\")), max_size=30))
def test_parser_only_ever_raises_syntax_errors(text: str) -> None:
    with contextlib.suppress(FhirPathSyntaxError):
        parse(text)


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=40))
def test_parser_survives_arbitrary_unicode(text: str) -> None:
    with contextlib.suppress(FhirPathSyntaxError):
        parse(text)
