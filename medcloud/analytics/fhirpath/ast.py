"""FHIRPath abstract syntax tree (https://hl7.org/fhirpath/N1/#grammar), the subset views use."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Literal:
    value: object
    type: str  # "string" | "integer" | "decimal" | "boolean" | "date" | "dateTime" | "time" | "empty"


@dataclass(frozen=True, slots=True)
class Identifier:
    """A bare name at the start of a path: a member of the focus (or the resource type)."""

    name: str


@dataclass(frozen=True, slots=True)
class Variable:
    """``$this``, ``$index`` or ``$total``."""

    name: str


@dataclass(frozen=True, slots=True)
class External:
    """``%name``: a ViewDefinition constant or an environment variable such as ``%rowIndex``."""

    name: str


@dataclass(frozen=True, slots=True)
class Member:
    target: Node
    name: str


@dataclass(frozen=True, slots=True)
class Call:
    """A function invocation; ``target`` is None when called on the focus (``exists()``)."""

    target: Node | None
    name: str
    args: tuple[Node, ...]


@dataclass(frozen=True, slots=True)
class Indexer:
    target: Node
    index: Node


@dataclass(frozen=True, slots=True)
class Unary:
    op: str  # "+" | "-"
    operand: Node


@dataclass(frozen=True, slots=True)
class Binary:
    op: str
    left: Node
    right: Node


@dataclass(frozen=True, slots=True)
class TypeOp:
    op: str  # "is" | "as"
    operand: Node
    type_name: str


Node = Literal | Identifier | Variable | External | Member | Call | Indexer | Unary | Binary | TypeOp


def type_name_of(node: Node) -> str | None:
    """The type specifier spelled by an argument such as ``Quantity`` or ``FHIR.string``."""
    if isinstance(node, Identifier):
        return node.name
    if isinstance(node, Member) and isinstance(node.target, Identifier):
        return node.name  # namespace-qualified: FHIR.string, System.String
    return None
