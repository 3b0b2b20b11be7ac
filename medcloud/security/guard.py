"""The one authorization seam every FHIR interaction passes through.

Issue 3 ships an allow-all policy that still records every decision in the audit trail; the
security issue replaces ``Policy`` with SMART scopes and patient compartments, without touching
interactions.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Protocol

from medcloud.errors import MethodNotAllowed, NotFound
from medcloud.fhir.exchange import Principal
from medcloud.security.audit import AuditRecord, AuditTrail
from medcloud.storage.resources import Stored

if TYPE_CHECKING:
    from medcloud.security.policy import ReadFilter


class Policy(Protocol):
    def may(self, principal: Principal, interaction: str, rtype: str | None) -> bool: ...

    def may_read(self, principal: Principal, stored: Stored) -> bool: ...

    def may_write(self, principal: Principal, rtype: str, resource: dict[str, Any] | None) -> bool: ...

    def may_delete(self, principal: Principal, stored: Stored) -> bool: ...

    def read_filter(self, principal: Principal, rtype: str) -> ReadFilter:
        """What of ``rtype`` searches may match, as SQL-able grants (None = unrestricted)."""
        ...


class AllowAll:
    def may(self, principal: Principal, interaction: str, rtype: str | None) -> bool:
        return True

    def may_read(self, principal: Principal, stored: Stored) -> bool:
        return True

    def may_write(self, principal: Principal, rtype: str, resource: dict[str, Any] | None) -> bool:
        return True

    def may_delete(self, principal: Principal, stored: Stored) -> bool:
        return True

    def read_filter(self, principal: Principal, rtype: str) -> ReadFilter:
        return None


class Guard:
    def __init__(self, policy: Policy, audit: AuditTrail | None):
        self.policy = policy
        self.audit_trail = audit

    def authorize(self, principal: Principal, interaction: str, rtype: str | None) -> None:
        if rtype == "AuditEvent" and interaction in ("create", "update", "patch", "delete"):
            # The audit trail is append-only and written by the server alone (security/audit_api.py);
            # this catches the transaction entries that do not pass through router.resolve.
            raise MethodNotAllowed("AuditEvent is read-only: audit events cannot be written through the API")
        if not self.policy.may(principal, interaction, rtype):
            # Answer as if nothing were there: refusals must not reveal existence.
            raise NotFound(f"{rtype or 'this endpoint'} is not available")

    def can_read(self, principal: Principal, stored: Stored) -> bool:
        return self.policy.may_read(principal, stored)

    def check_read(self, principal: Principal, stored: Stored) -> None:
        if not self.policy.may_read(principal, stored):
            raise NotFound(f"{stored.type}/{stored.id} is not known")

    def check_write(self, principal: Principal, rtype: str, resource: dict[str, Any] | None) -> None:
        if not self.policy.may_write(principal, rtype, resource):
            raise NotFound(f"{rtype} is not available")

    def read_filter(self, principal: Principal, rtype: str) -> ReadFilter:
        return self.policy.read_filter(principal, rtype)

    def check_delete(self, principal: Principal, stored: Stored) -> None:
        if not self.policy.may_delete(principal, stored):
            raise NotFound(f"{stored.type}/{stored.id} is not known")

    def record(self, record: AuditRecord) -> None:
        if self.audit_trail is not None:
            self.audit_trail.record(record)
