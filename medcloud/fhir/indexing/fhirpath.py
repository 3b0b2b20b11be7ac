"""A compiler for the FHIRPath subset used by FHIR R4 search-parameter expressions.

https://hl7.org/fhir/R4/fhirpath.html. Expressions are parsed once into closures that walk the
parsed JSON; every result item is a ``(value, fhir_type)`` pair, the type taken from the element
table generated from the R4 JSON schema (``_element_types``), from the key suffix of a choice
element (``valueQuantity`` -> ``Quantity``) or from ``resourceType``. Anything outside the subset
(an unknown function, arithmetic) is handed to fhirpathpy, whose results come back with type
``None`` for the caller to infer from the JSON shape.

Deliberate departures from FHIRPath N1, all in the direction the R4 search expressions intend:
``X as T`` filters a collection of any size (N1 raises on more than one item, yet R4 writes
``(Observation.component.value as Quantity)``); the System type names in ``.as(DateTime)`` match
their FHIR primitives; ``|`` concatenates without removing duplicates (the indexer deduplicates rows).

``resolve()`` never loads anything: it yields a stub ``{"resourceType": T}`` whose type is read
from the reference itself (``Type/id``, an absolute URL ending in ``Type/id[/_history/v]``, a
``#contained`` id, or else ``Reference.type``), which is all ``where(resolve() is Patient)`` needs.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from decimal import Decimal
from functools import lru_cache
from typing import Any

from medcloud.errors import Unprocessable
from medcloud.fhir.definitions import resource_types
from medcloud.fhir.indexing._element_types import CHOICES, PRIMITIVES, TYPES

Item = tuple[Any, str | None]
Fn = Callable[[list[Item], Item], list[Item]]

# Specialisations in the R4 type hierarchy (https://hl7.org/fhir/R4/datatypes.html): a canonical
# is a uri, a code is a string, an Age is a Quantity.
_SUBTYPES = {
    "Quantity": frozenset({"Age", "Count", "Distance", "Duration", "SimpleQuantity", "MoneyQuantity"}),
    "uri": frozenset({"url", "canonical", "oid", "uuid"}),
    "string": frozenset({"code", "id", "markdown"}),
    "integer": frozenset({"positiveInt", "unsignedInt"}),
}
_SYSTEM_TYPES = {
    "String": "string",
    "Boolean": "boolean",
    "Integer": "integer",
    "Decimal": "decimal",
    "Date": "date",
    "DateTime": "dateTime",
    "Time": "time",
}
_RESOURCE_TYPES = frozenset(resource_types())
_REF_RE = re.compile(r"(?:^|/)([A-Z][A-Za-z]+)/([A-Za-z0-9\-.]{1,64})(?:/_history/[A-Za-z0-9\-.]{1,64})?$")


class Unsupported(Exception):
    """The expression uses FHIRPath outside the compiled subset."""


# ---------------------------------------------------------------- parsing

_TOKEN_RE = re.compile(
    r"\s*(?:(?P<str>'(?:[^'\\]|\\.)*')|(?P<num>\d+(?:\.\d+)?)|(?P<id>[A-Za-z_][A-Za-z0-9_]*)"
    r"|`(?P<qid>[^`]*)`|(?P<var>[%$][A-Za-z_][A-Za-z0-9_]*)|(?P<op>!=|<=|>=|!~|[.()\[\]|=<>~,]))"
)
_KEYWORD_OPS = ("and", "or", "xor", "implies", "is", "as", "in", "contains")


def _tokenize(expr: str) -> list[tuple[str, str]]:
    out, pos = [], 0
    while pos < len(expr):
        if expr[pos:].strip() == "":
            break
        m = _TOKEN_RE.match(expr, pos)
        if m is None:
            raise Unsupported(f"cannot tokenize at {expr[pos:]!r}")
        kind = m.lastgroup or ""
        text = m.group(kind)
        if kind == "qid":
            kind = "id"
        elif kind == "id" and text in _KEYWORD_OPS:
            kind = "op"
        out.append((kind, text))
        pos = m.end()
    return out


class _Parser:
    # Lowest binding first (https://hl7.org/fhirpath/N1/#operator-precedence).
    _LEVELS: tuple[tuple[str, ...], ...] = (
        ("implies",),
        ("or", "xor"),
        ("and",),
        ("in", "contains"),
        ("=", "~", "!=", "!~"),
        ("<", ">", "<=", ">="),
        ("|",),
    )

    def __init__(self, expr: str):
        self.toks = _tokenize(expr)
        self.i = 0

    def peek(self) -> tuple[str, str] | None:
        return self.toks[self.i] if self.i < len(self.toks) else None

    def take(self, text: str | None = None) -> tuple[str, str]:
        tok = self.peek()
        if tok is None or (text is not None and tok[1] != text):
            raise Unsupported(f"expected {text!r}, got {tok!r}")
        self.i += 1
        return tok

    def parse(self) -> tuple:
        node = self.binary(0)
        if self.peek() is not None:
            raise Unsupported(f"trailing {self.peek()!r}")
        return node

    def binary(self, level: int) -> tuple:
        if level == len(self._LEVELS):
            return self.type_expr()
        node = self.binary(level + 1)
        while (tok := self.peek()) and tok[0] == "op" and tok[1] in self._LEVELS[level]:
            self.i += 1
            node = ("op", tok[1], node, self.binary(level + 1))
        return node

    def type_expr(self) -> tuple:
        node = self.postfix()
        while (tok := self.peek()) and tok[0] == "op" and tok[1] in ("is", "as"):
            self.i += 1
            node = (tok[1], node, self.type_name())
        return node

    def type_name(self) -> str:
        name = self.take()[1]
        while (tok := self.peek()) and tok[1] == ".":
            self.i += 1
            name = self.take()[1]  # FHIR.Quantity / System.String: keep the last part
        return name

    def postfix(self) -> tuple:
        node = self.term()
        while (tok := self.peek()) and tok[1] in (".", "["):
            self.i += 1
            if tok[1] == "[":
                node = ("index", node, self.binary(0))
                self.take("]")
            else:
                node = self.invocation(node)
        return node

    def invocation(self, base: tuple | None) -> tuple:
        kind, name = self.take()
        if kind != "id" and not (kind == "op" and name in _KEYWORD_OPS):
            raise Unsupported(f"unexpected {name!r}")
        if (tok := self.peek()) and tok[1] == "(":
            self.i += 1
            args: list[tuple] = []
            while (tok := self.peek()) and tok[1] != ")":
                args.append(self.binary(0))
                if (tok := self.peek()) and tok[1] == ",":
                    self.i += 1
            self.take(")")
            return ("call", base, name, tuple(args))
        return ("member", base, name)

    def term(self) -> tuple:
        tok = self.peek()
        if tok is None:
            raise Unsupported("unexpected end")
        kind, text = tok
        if text == "(":
            self.i += 1
            node = self.binary(0)
            self.take(")")
            return node
        if kind == "str":
            self.i += 1
            return ("lit", re.sub(r"\\(.)", r"\1", text[1:-1]), "string")
        if kind == "num":
            self.i += 1
            return ("lit", float(text) if "." in text else int(text), "decimal" if "." in text else "integer")
        if kind == "var":
            self.i += 1
            return ("var", text)
        if kind == "id" and text in ("true", "false"):
            self.i += 1
            return ("lit", text == "true", "boolean")
        return self.invocation(None)


# ---------------------------------------------------------------- typing helpers


def _resolve_member(t: str | None, name: str) -> tuple[tuple[str, str | None], ...]:
    """JSON keys (with their FHIR types) that element ``name`` of type ``t`` is stored under."""
    props = TYPES.get(t) if t else None
    if props is None:
        return ((name, None),)
    if name in props:
        return ((name, props[name]),)
    keys = CHOICES.get(t, {}).get(name, ())  # type: ignore[arg-type]
    return tuple((k, props[k]) for k in keys)


def type_matches(actual: str | None, wanted: str) -> bool:
    """Whether a value of FHIR type ``actual`` is a ``wanted`` (``is``/``as``/``ofType``), subtypes included."""
    wanted = _SYSTEM_TYPES.get(wanted, wanted)
    if actual == wanted:
        return True
    if wanted in ("Resource", "DomainResource"):
        return actual in _RESOURCE_TYPES
    return actual in _SUBTYPES.get(wanted, ())


def reference_type(value: Any, root: Any = None) -> str | None:
    """The resource type a Reference (or canonical/uri string) points at, read from the reference alone."""
    if isinstance(value, dict):
        ref = value.get("reference")
        declared = value.get("type")
    else:
        ref, declared = value, None
    if isinstance(ref, str):
        if ref.startswith("#"):
            for c in (root.get("contained") if isinstance(root, dict) else None) or ():
                if isinstance(c, dict) and c.get("id") == ref[1:]:
                    return c.get("resourceType")
        elif (t := _type_in_reference(ref)) is not None:
            return t
    return declared if isinstance(declared, str) else None


@lru_cache(maxsize=65536)
def _type_in_reference(ref: str) -> str | None:
    m = _REF_RE.search(ref.split("?", 1)[0].split("|", 1)[0])
    return m.group(1) if m and m.group(1) in _RESOURCE_TYPES else None


def _typed(value: Any, t: str | None) -> Item:
    if t == "Resource" and isinstance(value, dict):
        return value, value.get("resourceType")
    return value, t


# ---------------------------------------------------------------- compiling


def _member(base: Fn | None, name: str, is_root: bool) -> Fn:
    cache: dict[str | None, tuple[tuple[str, str | None], ...]] = {}
    if is_root and name[0].isupper() and (name in TYPES or name in ("Resource", "DomainResource")):

        def type_filter(focus: list[Item], root: Item) -> list[Item]:
            return [it for it in focus if type_matches(it[1], name)]

        return type_filter

    def member(focus: list[Item], root: Item) -> list[Item]:
        out: list[Item] = []
        for v, t in base(focus, root) if base else focus:
            if type(v) is not dict:
                continue
            keys = cache.get(t)
            if keys is None:
                keys = cache[t] = _resolve_member(t, name)
            for key, ct in keys:
                c = v.get(key)
                if c is None:
                    if ct is None and t is None:
                        out.extend(_untyped_choice(v, name))
                    continue
                if type(c) is list:
                    out.extend(_typed(x, ct) for x in c)
                else:
                    out.append(_typed(c, ct))
        return out

    return member


def _untyped_choice(v: dict, name: str) -> list[Item]:
    out = []
    for k, c in v.items():
        if len(k) > len(name) and k.startswith(name) and k[len(name)].isupper():
            suffix = k[len(name) :]
            lowered = suffix[0].lower() + suffix[1:]
            out.append((c, lowered if lowered in PRIMITIVES else suffix))
    return out


def _singleton_bool(items: list[Item]) -> bool | None:
    if not items:
        return None
    if len(items) == 1 and type(items[0][0]) is bool:
        return items[0][0]
    return True  # a non-empty collection is "true" in a boolean context


def _equal(a: list[Item], b: list[Item]) -> bool:
    if len(a) != len(b):
        return False
    for (x, _), (y, _) in zip(a, b, strict=True):
        if (type(x) is bool) != (type(y) is bool) or x != y:
            return False
    return True


_BOOL = "boolean"


Step = tuple[tuple[str, str], ...]  # the JSON keys (with types) one FHIRPath step may read


def _static_path(node: tuple) -> tuple[str, list[Step]] | None:
    """``Type.a.b`` (with ``as`` casts) as statically typed steps from the root type, if every type is known."""
    kind = node[0]
    if kind == "member" and node[1] is None:
        return (node[2], []) if node[2] in _RESOURCE_TYPES else None
    if kind == "member":
        inner = _static_path(node[1])
        if inner is None:
            return None
        rtype, steps = inner
        t = steps[-1][0][1] if steps else rtype
        if steps and len({ct for _, ct in steps[-1]}) != 1:
            return None  # a choice without a cast: the next step's type depends on the value
        keys = _resolve_member(t, node[2])
        if not keys or any(ct is None or ct == "Resource" for _, ct in keys):
            return None
        return rtype, [*steps, keys]  # type: ignore[list-item]
    is_cast = kind == "as" or (
        kind == "call"
        and node[2] in ("as", "ofType")
        and len(node[3]) == 1
        and node[3][0][0] == "member"
        and node[3][0][1] is None
    )
    if is_cast:
        inner = _static_path(node[1])
        tname = node[2] if kind == "as" else node[3][0][2]
        if inner is None or not inner[1]:
            return None
        rtype, steps = inner
        return rtype, [*steps[:-1], tuple(kc for kc in steps[-1] if type_matches(kc[1], tname))]
    return None


def _fused(rtype: str, steps: list[Step]) -> Fn:
    """One closure for a whole static path: no per-step typing, only dict walks."""
    *inner, last = steps
    inner_keys = [tuple(k for k, _ in step) for step in inner]

    def path(focus: list[Item], root: Item) -> list[Item]:
        cur = [v for v, t in focus if t == rtype and type(v) is dict]
        for keys in inner_keys:
            nxt: list[Any] = []
            for v in cur:
                for k in keys:
                    c = v.get(k)
                    if c is None:
                        continue
                    if type(c) is list:
                        nxt.extend(x for x in c if type(x) is dict)
                    elif type(c) is dict:
                        nxt.append(c)
            if not nxt:
                return []
            cur = nxt
        out: list[Item] = []
        for v in cur:
            for k, ct in last:
                c = v.get(k)
                if c is None:
                    continue
                if type(c) is list:
                    out.extend([(x, ct) for x in c])
                else:
                    out.append((c, ct))
        return out

    return path


class _Compiler:
    def compile(self, node: tuple, is_root: bool = True) -> Fn:
        kind = node[0]
        if is_root and (static := _static_path(node)) is not None and static[1]:
            return _fused(*static)
        if kind == "member":
            base = self.compile(node[1], is_root) if node[1] is not None else None
            return _member(base, node[2], is_root and base is None)
        if kind == "call":
            return self.call(node[1], node[2], node[3], is_root)
        if kind in ("as", "is"):
            return self.type_op(kind, self.compile(node[1], is_root), node[2])
        if kind == "lit":
            item = (node[1], node[2])
            return lambda focus, root: [item]
        if kind == "var":
            if node[1] in ("%resource", "%context", "%rootResource"):
                return lambda focus, root: [root]
            if node[1] == "$this":
                return lambda focus, root: focus
            raise Unsupported(node[1])
        if kind == "index":
            base = self.compile(node[1], is_root)
            idx = node[2]
            if idx[0] != "lit" or type(idx[1]) is not int:
                raise Unsupported("non-literal index")
            n = idx[1]
            return lambda focus, root: (lambda r: r[n : n + 1])(base(focus, root))
        if kind == "op":
            return self.op(node[1], self.compile(node[2], is_root), self.compile(node[3], is_root))
        raise Unsupported(kind)

    def type_op(self, kind: str, base: Fn, tname: str) -> Fn:
        if kind == "as":
            return lambda focus, root: [it for it in base(focus, root) if type_matches(it[1], tname)]

        def is_(focus: list[Item], root: Item) -> list[Item]:
            r = base(focus, root)
            if len(r) != 1:
                return []
            return [(type_matches(r[0][1], tname), _BOOL)]

        return is_

    def op(self, op: str, a: Fn, b: Fn) -> Fn:
        if op == "|":
            return lambda focus, root: a(focus, root) + b(focus, root)
        if op in ("=", "!="):
            negate = op == "!="

            def eq(focus: list[Item], root: Item) -> list[Item]:
                x, y = a(focus, root), b(focus, root)
                if not x or not y:
                    return []
                return [(_equal(x, y) != negate, _BOOL)]

            return eq
        if op in ("and", "or"):
            is_and = op == "and"

            def logic(focus: list[Item], root: Item) -> list[Item]:
                x, y = _singleton_bool(a(focus, root)), _singleton_bool(b(focus, root))
                if is_and:
                    r = False if (x is False or y is False) else (True if (x and y) else None)
                else:
                    r = True if (x is True or y is True) else (False if (x is False and y is False) else None)
                return [] if r is None else [(r, _BOOL)]

            return logic
        raise Unsupported(op)

    def call(self, base_node: tuple | None, name: str, args: tuple, is_root: bool) -> Fn:
        base = self.compile(base_node, is_root) if base_node is not None else (lambda focus, root: focus)
        if name == "where" and len(args) == 1:
            cond = self.compile(args[0], False)

            def where(focus: list[Item], root: Item) -> list[Item]:
                return [it for it in base(focus, root) if _singleton_bool(cond([it], root))]

            return where
        if name in ("as", "ofType") and len(args) == 1 and args[0][0] == "member" and args[0][1] is None:
            return self.type_op("as", base, args[0][2])
        if name == "is" and len(args) == 1 and args[0][0] == "member" and args[0][1] is None:
            return self.type_op("is", base, args[0][2])
        if args:
            raise Unsupported(f"{name}() with arguments")
        if name == "exists":
            return lambda focus, root: [(bool(base(focus, root)), _BOOL)]
        if name == "empty":
            return lambda focus, root: [(not base(focus, root), _BOOL)]
        if name == "not":

            def not_(focus: list[Item], root: Item) -> list[Item]:
                r = _singleton_bool(base(focus, root))
                return [] if r is None else [(not r, _BOOL)]

            return not_
        if name == "first":
            return lambda focus, root: base(focus, root)[:1]
        if name == "resolve":

            def resolve(focus: list[Item], root: Item) -> list[Item]:
                out: list[Item] = []
                for v, _ in base(focus, root):
                    t = reference_type(v, root[0])
                    if t is not None:
                        out.append(({"resourceType": t}, t))
                return out

            return resolve
        raise Unsupported(f"{name}()")


def _first_keys(node: tuple, is_root: bool = True) -> frozenset[str] | None:
    """Top-level JSON keys an expression can read; None when it may yield values without them."""
    kind = node[0]
    if kind == "op" and node[1] == "|":
        a, b = _first_keys(node[2]), _first_keys(node[3])
        return None if a is None or b is None else a | b
    if kind in ("as", "index") or (
        kind == "call" and node[2] in ("where", "as", "ofType", "first", "resolve")
    ):
        return _first_keys(node[1]) if node[1] is not None else None
    if kind == "member" and node[1] is not None:
        inner = node[1]
        if inner[0] == "member" and inner[1] is None and inner[2] in TYPES:
            return frozenset(k for k, _ in _resolve_member(inner[2], node[2]))
        return _first_keys(inner)
    return None


@dataclass(frozen=True, slots=True)
class Expression:
    """A compiled FHIRPath expression; call it on a resource dict to get ``(value, fhir_type)`` items."""

    source: str
    fn: Fn
    first_keys: frozenset[str] | None  # skip the expression when the resource has none of these
    compiled: bool  # False: evaluated by fhirpathpy

    def __call__(self, resource: dict) -> list[Item]:
        root = (resource, resource.get("resourceType"))
        return self.fn([root], root)

    def evaluate(self, focus: list[Item], resource: dict) -> list[Item]:
        """Evaluate relative to ``focus`` (e.g. a composite's element), ``%resource`` being ``resource``."""
        return self.fn(focus, (resource, resource.get("resourceType")))


def compile_expression(expr: str) -> Expression:
    """Compile ``expr`` once; outside the supported subset, wrap fhirpathpy instead (total coverage)."""
    try:
        node = _Parser(expr).parse()
        return Expression(expr, _Compiler().compile(node), _first_keys(node), True)
    except Unsupported:
        return Expression(expr, _fhirpathpy_fn(expr), None, False)


def _fhirpathpy_resolve(inputs: list[Any]) -> list[Any]:
    from fhirpathpy.engine.nodes import ResourceNode

    out = []
    for v in inputs:
        t = reference_type(v)
        if t is not None:
            out.append(ResourceNode.create_node({"resourceType": t}, t))
    return out


FHIRPATHPY_OPTIONS = {"userInvocationTable": {"resolve": {"fn": _fhirpathpy_resolve, "arity": {0: []}}}}


def _fhirpathpy_fn(expr: str) -> Fn:
    import fhirpathpy
    from fhirpathpy.models import models

    compiled = fhirpathpy.compile(expr, model=models["r4"], options=FHIRPATHPY_OPTIONS)

    def run(focus: list[Item], root: Item) -> list[Item]:
        out: list[Item] = []
        for v, _ in focus:
            try:
                results = compiled(v, {"resource": root[0], "rootResource": root[0]})
            except Exception as e:  # fhirpathpy raises bare Exceptions for type errors in the data
                raise Unprocessable(f"cannot evaluate {expr!r}: {e}", expression=expr) from e
            for r in results:
                out.append((r if isinstance(r, (dict, str, bool, int, float, Decimal)) else str(r), None))
        return out

    return run
