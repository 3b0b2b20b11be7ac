"""The dialect-neutral half of the FHIRPath -> SQL compilers.

``to_duckdb.Compiler`` and ``to_spark.SparkCompiler`` compile the same AST with the same static
kinds (COLL / ONE / BOOL / STR / NUM / INT) and the same FHIRPath rules; they differ only in SQL
spelling (``len`` vs ``size``, ``list_concat`` vs ``concat``, 1- vs 0-based lists, JSON vs VARIANT).
So the AST walk, variables and constants, unary minus, ``is``/``as``/``ofType`` on choice
elements, and function dispatch (arity checks, the ``getResourceKey()`` root rule) live here once;
each dialect class supplies the few SQL-text hooks below (``EMPTY``, ``size``, ``concat``,
``filter``/``transform``/``lambda_index`` for list lambdas, ``quote``, ``member``, ``of_type_filter``,
the kind conversions) and its own function table; functions whose SQL differs only in those hooks
are written once in ``_common_functions.py``.
"""

from __future__ import annotations

import itertools
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from typing import ClassVar, Generic, TypeVar
from typing import Literal as TLiteral

from medcloud.analytics.errors import ViewDefinitionError
from medcloud.analytics.fhirpath import ast
from medcloud.analytics.fhirpath.parser import parse
from medcloud.fhir.definitions import elements

__all__ = ["CompilerCore", "FunctionTable", "Kind", "Scope", "Sql", "lambda_scope"]

Kind = TLiteral["COLL", "ONE", "BOOL", "STR", "NUM", "INT"]
SCALARS = ("BOOL", "STR", "NUM", "INT")


@dataclass(frozen=True, slots=True)
class Sql:
    text: str
    kind: Kind
    # The static FHIR type of the items, when known: a schema definition ("HumanName",
    # "Patient_Contact"), a primitive ("dateTime"), or a hint such as "dateTime" after ofType(dateTime).
    fhir_type: str | None = None
    # (JSON, JSONPath) when the value is exactly ``json_extract(JSON, JSONPath)`` (a COLL when the path
    # has a wildcard): a member of it extends the path instead of mapping a lambda over it.
    path: tuple[str, str] | None = None


@dataclass(frozen=True, slots=True)
class Scope:
    focus: Sql  # $this; a ONE
    resource: str  # SQL for %resource
    row_index: str  # SQL for %rowIndex
    constants: Mapping[str, Sql] = field(default_factory=dict)
    index: str | None = None  # $index inside where()/select()
    at_root: bool = False  # focus is the resource itself (so ``Patient.name`` may name the type)
    resource_type: str | None = None


def lambda_scope(s: Scope, var: str, index: str | None = None, fhir_type: str | None = None) -> Scope:
    """The scope inside a per-item argument (where/select/exists criteria): $this is the item."""
    return Scope(Sql(var, "ONE", fhir_type), s.resource, s.row_index, s.constants, index, False, s.resource_type)


C = TypeVar("C", bound="CompilerCore")
Impl = Callable[[C, Sql, tuple[ast.Node, ...], Scope], Sql]
_TYPE_FUNCTIONS = ("ofType", "as", "is")


class FunctionTable(Generic[C]):
    """One dialect's FHIRPath functions: name -> (min args, max args, SQL builder)."""

    def __init__(self) -> None:
        self._impls: dict[str, tuple[int, int, Impl[C]]] = {}

    def fn(self, name: str, min_args: int = 0, max_args: int = 0) -> Callable[[Impl[C]], Impl[C]]:
        def register(impl: Impl[C]) -> Impl[C]:
            self._impls[name] = (min_args, max_args, impl)
            return impl

        return register

    def names(self) -> tuple[str, ...]:
        return tuple(sorted([*self._impls, *_TYPE_FUNCTIONS]))

    def call(self, c: C, n: ast.Call, s: Scope) -> Sql:
        """``n``'s SQL; unknown functions and wrong argument counts are ViewDefinitionErrors."""
        if n.name in _TYPE_FUNCTIONS:
            if len(n.args) != 1:
                raise ViewDefinitionError("", f"{n.name}() takes 1 argument(s), got {len(n.args)}")
            type_name = ast.type_name_of(n.args[0])
            if type_name is None:
                raise ViewDefinitionError("", f"{n.name}() needs a type name")
            if n.name == "is":
                return c.node(ast.TypeOp("is", n.target or ast.Variable("this"), type_name), s)
            return c.of_type(n.target, type_name, s)
        if n.name not in self._impls:
            raise ViewDefinitionError("", f"unsupported FHIRPath function {n.name}()")
        lo, hi, impl = self._impls[n.name]
        if not lo <= len(n.args) <= hi:
            expected = str(lo) if lo == hi else f"{lo} to {hi}"
            raise ViewDefinitionError("", f"{n.name}() takes {expected} argument(s), got {len(n.args)}")
        if n.target is None and n.name == "getResourceKey":
            # Invoked "at the root of a FHIR Resource"; inside forEach the focus is an element, but
            # the key a user wants there is still the resource's.
            base = Sql(s.resource, "ONE", s.resource_type)
        else:
            base = s.focus if n.target is None else c.node(n.target, s)
        return impl(c, base, n.args, s)


class CompilerCore(ABC):
    """The AST walk shared by both dialects; one instance per view (unique lambda variable names)."""

    EMPTY: ClassVar[str]  # SQL for the empty collection
    VAR_PREFIX: ClassVar[str]

    def __init__(self) -> None:
        self._names = itertools.count(1)

    def var(self) -> str:
        return f"{self.VAR_PREFIX}{next(self._names)}"

    def compile(self, expression: str, scope: Scope) -> Sql:
        return self.node(parse(expression), scope)

    def node(self, n: ast.Node, s: Scope) -> Sql:
        method = getattr(self, "_" + type(n).__name__.lower())
        result: Sql = method(n, s)
        return result

    # -- dialect hooks: SQL text -------------------------------------------------------------
    @abstractmethod
    def quote(self, value: str) -> str: ...

    @abstractmethod
    def size(self, coll: str) -> str: ...

    @abstractmethod
    def concat(self, a: str, b: str) -> str: ...

    @abstractmethod
    def filter(self, coll: str, var: str, index: str, body: str) -> str:
        """Items of ``coll`` for which ``body`` (over ``var`` and its position ``index``) holds."""

    @abstractmethod
    def transform(self, coll: str, var: str, index: str, body: str) -> str: ...

    @abstractmethod
    def lambda_index(self, index: str) -> str:
        """A lambda's position variable as FHIRPath's 0-based ``$index`` (BIGINT)."""

    @abstractmethod
    def member(self, base: Sql, name: str) -> Sql: ...

    def knows(self, fhir_type: str | None, key: str) -> bool:
        """Whether the compiler reads ``key`` of ``fhir_type`` by the R4 schema (schema-aware dialects)."""
        return False

    @abstractmethod
    def of_type_filter(self, coll: Sql, type_name: str) -> Sql: ...

    @abstractmethod
    def let(self, value: str, body: Callable[[str], str], cast: str = "") -> str:
        """Evaluate ``value`` once and use it several times in ``body``."""

    @abstractmethod
    def to_coll(self, e: Sql) -> str: ...

    @abstractmethod
    def to_num(self, e: Sql) -> str: ...

    @abstractmethod
    def to_bool(self, e: Sql) -> str: ...

    @abstractmethod
    def to_one(self, e: Sql, what: str = "a single value") -> Sql: ...

    @abstractmethod
    def binary(self, op: str, left: Sql, right: Sql) -> Sql: ...

    @abstractmethod
    def call(self, n: ast.Call, s: Scope) -> Sql: ...

    # -- the walk ------------------------------------------------------------------------------
    def _literal(self, n: ast.Literal, s: Scope) -> Sql:
        if n.type == "empty":
            return Sql(self.EMPTY, "COLL")
        if n.type == "boolean":
            return Sql("TRUE" if n.value else "FALSE", "BOOL")
        if n.type == "integer":
            return Sql(f"CAST({n.value} AS BIGINT)", "INT")
        if n.type == "decimal":
            return Sql(f"CAST({n.value} AS DOUBLE)", "NUM", "decimal")
        return Sql(self.quote(str(n.value)), "STR", n.type)

    def _identifier(self, n: ast.Identifier, s: Scope) -> Sql:
        if s.at_root and n.name == s.resource_type:
            return Sql(self.to_coll(s.focus), "COLL")
        return self.member(s.focus, n.name)

    def _member(self, n: ast.Member, s: Scope) -> Sql:
        return self.member(self.node(n.target, s), n.name)

    def _variable(self, n: ast.Variable, s: Scope) -> Sql:
        if n.name == "this":
            return s.focus
        if n.name == "index" and s.index is not None:
            return Sql(s.index, "INT")
        raise ViewDefinitionError("", f"${n.name} is not available here")

    def _external(self, n: ast.External, s: Scope) -> Sql:
        if n.name == "rowIndex":
            return Sql(s.row_index, "INT")
        if n.name in ("resource", "rootResource", "context"):
            return Sql(s.resource, "ONE")
        if n.name in s.constants:
            return s.constants[n.name]
        raise ViewDefinitionError("", f"undefined constant %{n.name}")

    def _unary(self, n: ast.Unary, s: Scope) -> Sql:
        e = self.node(n.operand, s)
        if n.op == "+":
            return e
        if e.kind == "INT":
            return Sql(f"(-{e.text})", "INT")
        if e.kind == "NUM":
            return Sql(f"(-{e.text})", "NUM")
        return Sql(f"(-{self.to_num(e)})", "NUM")

    def _typeop(self, n: ast.TypeOp, s: Scope) -> Sql:
        if n.op == "as":
            return self.of_type(n.operand, n.type_name, s)
        # ``value is Quantity``: true when the (choice-aware) ofType() finds the value, {} when there
        # is nothing to test. Without a schema an absent choice element reads as {}.
        matches = self.to_coll(self.of_type(n.operand, n.type_name, s))
        plain = self.to_coll(self.node(n.operand, s))
        return Sql(
            f"(CASE WHEN {self.size(matches)} > 0 THEN TRUE WHEN {self.size(plain)} = 0 THEN NULL ELSE FALSE END)",
            "BOOL",
        )

    def _binary(self, n: ast.Binary, s: Scope) -> Sql:
        return self.binary(n.op, self.node(n.left, s), self.node(n.right, s))

    def _call(self, n: ast.Call, s: Scope) -> Sql:
        return self.call(n, s)

    def of_type(self, target: ast.Node | None, type_name: str, s: Scope) -> Sql:
        """``x.ofType(T)``: for a choice element ``value`` also read ``valueT`` (FHIR JSON §choice)."""
        hint = type_name if type_name in elements() else type_name[0].lower() + type_name[1:]
        if isinstance(target, ast.Identifier | ast.Member) and not (
            isinstance(target, ast.Identifier) and s.at_root and target.name == s.resource_type
        ):
            parent = s.focus if isinstance(target, ast.Identifier) else self.node(target.target, s)
            name = target.name

            key = name + type_name[0].upper() + type_name[1:]
            if self.knows(parent.fhir_type, key) and not self.knows(parent.fhir_type, name):
                # A choice element the schema knows: valid FHIR has no plain ``name`` key to test.
                return replace(self.member(parent, key), fhir_type=hint)

            def both(p: Sql) -> str:
                choice = self.to_coll(self.member(p, key))
                plain = self.of_type_filter(self.member(p, name), type_name)
                return self.concat(choice, plain.text)

            if parent.kind == "COLL":  # evaluated once, not once per branch
                return Sql(self.let(parent.text, lambda p: both(Sql(p, "COLL", parent.fhir_type))), "COLL", hint)
            return Sql(both(parent), "COLL", hint)
        base = s.focus if target is None else self.node(target, s)
        return replace(self.of_type_filter(Sql(self.to_coll(base), "COLL"), type_name), fhir_type=hint)
