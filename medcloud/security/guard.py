"""The one authorization seam every FHIR interaction passes through.

Issue 3 ships an allow-all policy that still records every decision in the audit trail; the
security issue replaces ``Policy`` with SMART scopes and patient compartments, without touching
interactions.
"""

from __future__ import annotations

from typing import Any, Protocol

from medcloud.errors import NotFound
from medcloud.fhir.exchange import Principal
from medcloud.security.audit import AuditRecord, AuditTrail
from medcloud.storage.resources import Stored


class Policy(Protocol):
    def may(self, principal: Principal, interaction: str, rtype: str | None) -> bool: ...

    def may_read(self, principal: Principal, stored: Stored) -> bool: ...

    def may_write(self, principal: Principal, rtype: str, resource: dict[str, Any] | None) -> bool: ...


class AllowAll:
    def may(self, principal: Principal, interaction: str, rtype: str | None) -> bool:
        return True

    def may_read(self, principal: Principal, stored: Stored) -> bool:
        return True

    def may_write(self, principal: Principal, rtype: str, resource: dict[str, Any] | None) -> bool:
        return True


class Guard:
    def __init__(self, policy: Policy, audit: AuditTrail | None):
        self.policy = policy
        self.audit_trail = audit

    def authorize(self, principal: Principal, interaction: str, rtype: str | None) -> None:
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

    def check_delete(self, principal: Principal, stored: Stored) -> None:
        if not self.policy.may_write(principal, stored.type, None):
            raise NotFound(f"{stored.type}/{stored.id} is not known")

    def record(self, record: AuditRecord) -> None:
        if self.audit_trail is not None:
            self.audit_trail.record(record)
