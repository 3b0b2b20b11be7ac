"""FHIR operations ($name), one module each, registered by name and level."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from sqlalchemy import Connection

    from medcloud.fhir.context import FhirContext
    from medcloud.fhir.exchange import FhirRequest, FhirResponse


@dataclass(frozen=True, slots=True)
class Target:
    """Where an operation was invoked: system (no type), type, or instance (type and id)."""

    rtype: str | None = None
    rid_id: str | None = None


Handler = Callable[["FhirContext", "Connection", "FhirRequest", Target], "FhirResponse"]


@dataclass(frozen=True, slots=True)
class Operation:
    name: str  # without the $
    handler: Handler
    system: bool = False
    types: tuple[str, ...] | None = None  # types allowed at type level; None = all, () = none
    instance_types: tuple[str, ...] | None = None  # types allowed at instance level; None = all, () = none
    writes: bool = False  # needs a write transaction
    methods: tuple[str, ...] = ("GET", "POST")
    # True: the handler manages its own transactions (long-running, e.g. $export kick-off).
    own_transaction: bool = False
    # Canonical URL of the OperationDefinition: one URL, or per level ("*" = system, else the type).
    # None: the core spec's http://hl7.org/fhir/OperationDefinition/<name>.
    definition: str | Mapping[str, str] | None = None
    # False for helper endpoints that are not operations of their own (e.g. $export-poll-status).
    listed: bool = True

    def canonical(self, rtype: str | None = None) -> str:
        d = self.definition
        if d is None:
            return f"http://hl7.org/fhir/OperationDefinition/{self.name}"
        if isinstance(d, str):
            return d
        return d.get(rtype or "*") or d.get("*") or next(iter(d.values()))


OPERATIONS: dict[str, Operation] = {}


def register(op: Operation) -> Operation:
    OPERATIONS[op.name] = op
    return op


def load_all() -> dict[str, Operation]:
    """Import every operation module so each registers itself."""
    import importlib
    import pkgutil

    for mod in pkgutil.iter_modules(__path__):
        if not mod.name.startswith("_"):
            importlib.import_module(f"{__name__}.{mod.name}")
    return OPERATIONS
