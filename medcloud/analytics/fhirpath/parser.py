"""Tokenizer and precedence-climbing parser for FHIRPath (https://hl7.org/fhirpath/N1/#grammar)."""

from __future__ import annotations

import re
from dataclasses import dataclass
from decimal import Decimal
from functools import lru_cache

from medcloud.analytics.errors import FhirPathSyntaxError
from medcloud.analytics.fhirpath.ast import (
    Binary,
    Call,
    External,
    Identifier,
    Indexer,
    Literal,
    Member,
    Node,
    TypeOp,
    Unary,
    Variable,
)


@dataclass(frozen=True, slots=True)
class Token:
    kind: str  # "id" | "qid" | "str" | "num" | "date" | "ext" | "var" | "op" | "eof"
    text: str
    pos: int


_DATETIME = (
    r"@(?P<date>\d{4}(?:-\d{2}(?:-\d{2})?)?)"
    r"(?P<time>T(?:\d{2}(?::\d{2}(?::\d{2}(?:\.\d+)?)?)?)?(?:Z|[+-]\d{2}:\d{2})?)?"
    r"|@T(?P<tonly>\d{2}(?::\d{2}(?::\d{2}(?:\.\d+)?)?)?)"
)
_TOKEN = re.compile(
    r"""(?P<ws>\s+|//[^\n]*|/\*.*?\*/)
      |(?P<num>\d+(?:\.\d+)?)
      |(?P<str>'(?:[^'\\]|\\.)*')
      |(?P<qid>`(?:[^`\\]|\\.)*`)
      |(?P<dt>"""
    + _DATETIME
    + r""")
      |(?P<ext>%(?:[A-Za-z_][A-Za-z0-9_]*|`(?:[^`\\]|\\.)*`|'(?:[^'\\]|\\.)*'))
      |(?P<var>\$(?:this|index|total))
      |(?P<id>[A-Za-z_][A-Za-z0-9_]*)
      |(?P<op><=|>=|!=|!~|[-+*/&|<>=~.,()\[\]{}])""",
    re.VERBOSE | re.DOTALL,
)
_ESCAPES = {"'": "'", '"': '"', "`": "`", "r": "\r", "n": "\n", "t": "\t", "f": "\f", "\\": "\\", "/": "/"}

# Binary operators by precedence, loosest first (FHIRPath N1 §Operator precedence).
_LEVELS: tuple[tuple[str, ...], ...] = (
    ("implies",),
    ("or", "xor"),
    ("and",),
    ("in", "contains"),
    ("=", "~", "!=", "!~"),
    ("<=", "<", ">", ">="),
    ("|",),
    ("is", "as"),
    ("+", "-", "&"),
    ("*", "/", "div", "mod"),
)
_KEYWORD_OPS = {"implies", "or", "xor", "and", "in", "contains", "is", "as", "div", "mod"}


def _unescape(body: str) -> str:
    return re.sub(
        r"\\(u[0-9a-fA-F]{4}|.)",
        lambda m: (
            chr(int(m.group(1)[1:], 16))
            if m.group(1).startswith("u")
            else _ESCAPES.get(m.group(1), m.group(1))
        ),
        body,
    )


def tokenize(text: str) -> list[Token]:
    tokens: list[Token] = []
    pos = 0
    while pos < len(text):
        m = _TOKEN.match(text, pos)
        if m is None:
            raise FhirPathSyntaxError(text, pos, f"unexpected character {text[pos]!r}")
        kind = m.lastgroup
        if kind in ("date", "time", "tonly"):
            kind = "dt"
        if kind != "ws":
            tokens.append(Token(kind or "op", m.group(0), pos))
        pos = m.end()
    tokens.append(Token("eof", "", len(text)))
    return tokens


class _Parser:
    def __init__(self, text: str):
        self.text = text
        self.tokens = tokenize(text)
        self.i = 0

    @property
    def tok(self) -> Token:
        return self.tokens[self.i]

    def fail(self, message: str, tok: Token | None = None) -> FhirPathSyntaxError:
        t = tok or self.tok
        return FhirPathSyntaxError(self.text, t.pos, message)

    def take(self) -> Token:
        t = self.tok
        self.i += 1
        return t

    def at_op(self, *ops: str) -> bool:
        t = self.tok
        return (t.kind == "op" and t.text in ops) or (
            t.kind == "id" and t.text in ops and t.text in _KEYWORD_OPS
        )

    def expect(self, op: str) -> Token:
        if not self.at_op(op):
            found = self.tok.text or "end of expression"
            raise self.fail(f"expected {op!r} but found {found!r}")
        return self.take()

    def parse(self) -> Node:
        if self.tok.kind == "eof":
            raise self.fail("empty expression")
        node = self.binary(0)
        if self.tok.kind != "eof":
            raise self.fail(f"unexpected {self.tok.text!r}")
        return node

    def binary(self, level: int) -> Node:
        if level == len(_LEVELS):
            return self.unary()
        left = self.binary(level + 1)
        while self.at_op(*_LEVELS[level]):
            op = self.take().text
            if op in ("is", "as"):
                left = TypeOp(op, left, self.type_specifier())
            else:
                left = Binary(op, left, self.binary(level + 1))
        return left

    def type_specifier(self) -> str:
        parts = [self.identifier()]
        while self.at_op(".") and self.tokens[self.i + 1].kind in ("id", "qid"):
            self.take()
            parts.append(self.identifier())
        return parts[-1]

    def identifier(self) -> str:
        t = self.tok
        if t.kind == "id":
            return self.take().text
        if t.kind == "qid":
            return _unescape(self.take().text[1:-1])
        raise self.fail(f"expected an identifier but found {t.text or 'end of expression'!r}")

    def unary(self) -> Node:
        if self.at_op("+", "-"):
            op = self.take().text
            return Unary(op, self.unary())
        return self.postfix(self.term())

    def postfix(self, node: Node) -> Node:
        while True:
            if self.at_op("."):
                self.take()
                name = self.identifier()
                node = Call(node, name, self.arguments()) if self.at_op("(") else Member(node, name)
            elif self.at_op("["):
                self.take()
                index = self.binary(0)
                self.expect("]")
                node = Indexer(node, index)
            else:
                return node

    def arguments(self) -> tuple[Node, ...]:
        self.expect("(")
        args: list[Node] = []
        if not self.at_op(")"):
            args.append(self.binary(0))
            while self.at_op(","):
                self.take()
                args.append(self.binary(0))
        self.expect(")")
        return tuple(args)

    def term(self) -> Node:
        t = self.tok
        if t.kind == "num":
            self.take()
            if "." in t.text:
                return Literal(Decimal(t.text), "decimal")
            return Literal(int(t.text), "integer")
        if t.kind == "str":
            self.take()
            return Literal(_unescape(t.text[1:-1]), "string")
        if t.kind == "dt":
            self.take()
            body = t.text[1:]
            if body.startswith("T"):
                return Literal(body[1:], "time")
            if "T" in body:
                return Literal(body.rstrip("T"), "dateTime")
            return Literal(body, "date")
        if t.kind == "ext":
            self.take()
            name = t.text[1:]
            return External(_unescape(name[1:-1]) if name[0] in "`'" else name)
        if t.kind == "var":
            self.take()
            return Variable(t.text[1:])
        if t.kind in ("id", "qid"):
            if t.kind == "id" and t.text in ("true", "false"):
                self.take()
                return Literal(t.text == "true", "boolean")
            name = self.identifier()
            if self.at_op("("):
                return Call(None, name, self.arguments())
            return Identifier(name)
        if self.at_op("("):
            self.take()
            node = self.binary(0)
            self.expect(")")
            return node
        if self.at_op("{"):
            self.take()
            self.expect("}")
            return Literal(None, "empty")
        raise self.fail(f"unexpected {t.text!r}" if t.text else "unexpected end of expression")


def parse(expression: str) -> Node:
    """Parse a FHIRPath expression; raises FhirPathSyntaxError with the position of the fault."""
    if not isinstance(expression, str):
        raise FhirPathSyntaxError(str(expression), 0, "expression must be a string")
    return _parse(expression)


@lru_cache(maxsize=4096)
def _parse(expression: str) -> Node:
    # ASTs are immutable; a view is parsed when validated and again when compiled, per run.
    return _Parser(expression).parse()
