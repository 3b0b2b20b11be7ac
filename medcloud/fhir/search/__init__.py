"""FHIR search (search.html). The planner turns parsed parameters into one SQL query."""

from __future__ import annotations

from typing import TYPE_CHECKING

from medcloud.errors import NotSupported

if TYPE_CHECKING:
    from sqlalchemy import Connection

    from medcloud.fhir.context import FhirContext
    from medcloud.fhir.exchange import FhirRequest, FhirResponse, Principal
    from medcloud.storage.resources import Stored


def matches(ctx: FhirContext, conn: Connection, principal: Principal, rtype: str,
            query: list[tuple[str, str]], limit: int) -> list[Stored]:
    """Resources of ``rtype`` matching ``query`` (for conditional interactions), at most ``limit``."""
    raise NotSupported("search is not available yet")


def search_type(ctx: FhirContext, conn: Connection, req: FhirRequest, rtype: str) -> FhirResponse:
    raise NotSupported("search is not available yet")


def search_system(ctx: FhirContext, conn: Connection, req: FhirRequest) -> FhirResponse:
    raise NotSupported("search is not available yet")


def search_compartment(ctx: FhirContext, conn: Connection, req: FhirRequest, ctype: str, cid: str,
                       rtype: str) -> FhirResponse:
    raise NotSupported("search is not available yet")
