"""SMART App Launch v2 scopes: parsing and the questions the authorization layer asks of them.

Grammar (https://hl7.org/fhir/smart-app-launch/scopes-and-launch-context.html, "Scopes for
requesting FHIR resources")::

    ( "patient" | "user" | "system" ) "/" ( resource-type | "*" ) "." permissions [ "?" param=value ( "&" param=value )* ]

``permissions`` is a non-empty subsequence of ``cruds`` in that order. SMART 1.0 suffixes are
accepted and mapped as the v2 guide's table says: ``read`` -> ``rs``, ``write`` -> ``cud``,
``*`` -> ``cruds``; ``?`` restrictions exist only in v2, so a v1 scope with one is invalid.

Which interaction each letter grants (the guide's "Scope Equivalence" table):

    c  create                       r  read, vread, history-instance
    u  update, patch                d  delete
    s  search-type, search-system, search-compartment, history-type, history-system

``openid``, ``fhirUser``, ``profile``, ``launch``, ``launch/patient``, ``launch/encounter``,
``offline_access`` and ``online_access`` are context/identity scopes: they grant no data access.
``medcloud/admin`` (medcloud's own) marks an administrator (audit search, client management); it
is a context scope too and grants no FHIR data by itself.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from functools import cache
from typing import TYPE_CHECKING

from medcloud.errors import Invalid
from medcloud.fhir.definitions import resource_types

if TYPE_CHECKING:
    from medcloud.fhir.exchange import Principal

CONTEXTS = ("patient", "user", "system")
PERMISSIONS = "cruds"
V1_PERMISSIONS = {"read": "rs", "write": "cud", "*": "cruds"}
ADMIN_SCOPE = "medcloud/admin"
CONTEXT_SCOPES = frozenset(
    {"openid", "fhirUser", "profile", "launch", "launch/patient", "launch/encounter",
     "offline_access", "online_access", ADMIN_SCOPE}
)

# interaction (as the router names it) -> permission letter it needs
INTERACTION_PERMISSION: dict[str, str] = {
    "create": "c",
    "read": "r",
    "vread": "r",
    "history-instance": "r",
    "update": "u",
    "patch": "u",
    "delete": "d",
    "search": "s",
    "search-type": "s",
    "search-system": "s",
    "search-compartment": "s",
    "history": "s",  # type or system history: a listing, so a search
    "history-type": "s",
    "history-system": "s",
}

_RESOURCE_SCOPE = re.compile(r"(patient|user|system)/(\*|[A-Za-z]+)\.([a-z*]+)(?:\?(.*))?", re.DOTALL)
_V2_PERMISSIONS = re.compile(r"c?r?u?d?s?")
_PARAM_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_\-.:]*")
_FORBIDDEN_IN_VALUE = re.compile(r"[\s&=?\"\\]")  # scopes are space-delimited (RFC 6749 §3.3)


@cache
def _types() -> frozenset[str]:
    # ViewDefinition (SQL-on-FHIR, analytics/server/views.py) is stored and authorised like a resource type.
    return frozenset(resource_types()) | {"ViewDefinition"}


@dataclass(frozen=True, slots=True)
class Scope:
    """One resource scope, always in v2 form; ``params`` are the ``?name=value`` restrictions, in order."""

    context: str  # patient | user | system
    resource_type: str  # a resource type or "*"
    permissions: str  # subsequence of "cruds"
    params: tuple[tuple[str, str], ...] = ()

    def __str__(self) -> str:
        q = "&".join(f"{k}={v}" for k, v in self.params)
        return f"{self.context}/{self.resource_type}.{self.permissions}" + (f"?{q}" if q else "")

    def covers(self, rtype: str | None) -> bool:
        return self.resource_type == "*" or self.resource_type == rtype

    def grants(self, letter: str) -> bool:
        return letter in self.permissions


@dataclass(frozen=True, slots=True)
class ContextScope:
    """A launch-context or identity scope (``openid``, ``launch/patient``...): no data access."""

    name: str

    def __str__(self) -> str:
        return self.name


def is_admin(principal: Principal) -> bool:
    """Whether ``principal`` is an administrator: its token carries ``medcloud/admin``."""
    return ADMIN_SCOPE in principal.scopes


def parse_scope(text: str) -> Scope | ContextScope:
    """Parse one scope token; raises ``Invalid`` naming what is wrong."""
    if not isinstance(text, str) or not text:
        raise Invalid("empty scope")
    if text in CONTEXT_SCOPES:
        return ContextScope(text)
    m = _RESOURCE_SCOPE.fullmatch(text)
    if m is None:
        raise Invalid(f"invalid scope {text!r}: expected (patient|user|system)/(Type|*).(c?r?u?d?s?) "
                      f"or one of {', '.join(sorted(CONTEXT_SCOPES))}")
    context, rtype, perms, query = m.group(1), m.group(2), m.group(3), m.group(4)
    if rtype != "*" and rtype not in _types():
        raise Invalid(f"invalid scope {text!r}: {rtype!r} is not an R4 resource type")
    if perms in V1_PERMISSIONS:
        if query is not None:
            raise Invalid(f"invalid scope {text!r}: ?param restrictions need v2 permissions (c?r?u?d?s?)")
        perms = V1_PERMISSIONS[perms]
    elif not perms or not _V2_PERMISSIONS.fullmatch(perms):
        raise Invalid(f"invalid scope {text!r}: permissions {perms!r} must be a non-empty subset of "
                      "'cruds' in that order (or v1 read/write/*)")
    return Scope(context, rtype, perms, _parse_params(text, query) if query is not None else ())


def _parse_params(text: str, query: str) -> tuple[tuple[str, str], ...]:
    out = []
    for part in query.split("&"):
        name, eq, value = part.partition("=")
        if not eq or not _PARAM_NAME.fullmatch(name) or not value or _FORBIDDEN_IN_VALUE.search(value):
            raise Invalid(f"invalid scope {text!r}: restriction {part!r} must be name=value")
        out.append((name, value))
    return tuple(out)


def parse_scopes(scopes: str | Iterable[str], *, strict: bool = True) -> ScopeSet:
    """A space-delimited scope string (or tokens) -> ``ScopeSet``; ``strict=False`` drops invalid tokens."""
    tokens = scopes.split() if isinstance(scopes, str) else list(scopes)
    parsed: list[Scope | ContextScope] = []
    for t in tokens:
        try:
            parsed.append(parse_scope(t))
        except Invalid:
            if strict:
                raise
    return ScopeSet(tuple(parsed))


@dataclass(frozen=True, slots=True)
class ScopeSet:
    """The scopes granted to one token. Questions about data access are answered from resource scopes only."""

    scopes: tuple[Scope | ContextScope, ...] = ()

    @property
    def resource_scopes(self) -> tuple[Scope, ...]:
        return tuple(s for s in self.scopes if isinstance(s, Scope))

    def has(self, name: str) -> bool:
        return any(isinstance(s, ContextScope) and s.name == name for s in self.scopes)

    def granting(self, interaction: str, rtype: str | None) -> tuple[Scope, ...]:
        """The resource scopes that allow ``interaction`` on ``rtype`` (before restrictions/compartments)."""
        letter = INTERACTION_PERMISSION.get(interaction)
        if letter is None:
            return ()
        if rtype is None:
            # System-level search/history: each match is still filtered by type, so any
            # scope with the letter lets the request start.
            return tuple(s for s in self.resource_scopes if s.grants(letter))
        return tuple(s for s in self.resource_scopes if s.grants(letter) and s.covers(rtype))

    def may(self, interaction: str, rtype: str | None) -> bool:
        """Whether some scope allows ``interaction`` on ``rtype``; unknown interactions are refused."""
        if interaction == "capabilities":
            return True  # /metadata is public (SMART: discovery before authorization)
        if interaction in ("batch", "transaction"):
            return bool(self.resource_scopes)  # every entry is authorised on its own
        if interaction == "operation":
            # The operation authorises what it touches through the same policy; to start it
            # needs read or search on its type (any type at system level).
            return bool(self.granting("read", rtype) or self.granting("search", rtype))
        return bool(self.granting(interaction, rtype))

    def restrictions(self, interaction: str, rtype: str) -> tuple[tuple[tuple[str, str], ...], ...] | None:
        """Alternatives (OR) of ``?param=value`` sets (AND) that apply; () = unrestricted, None = refused."""
        granting = self.granting(interaction, rtype)
        if not granting:
            return None
        if any(not s.params for s in granting):
            return ()
        return tuple(dict.fromkeys(s.params for s in granting))
