"""``SmartPolicy``: the ``guard.Policy`` that decides from SMART v2 scopes and the launch patient.

Rules (default deny: no scope that matches -> refused, and the guard answers 404):

- ``user/`` and ``system/`` scopes: by resource type and permission letter.
- ``patient/`` scopes additionally confine every resource to the launch patient's compartment
  (https://hl7.org/fhir/R4/compartmentdefinition-patient.html). Membership is read from the
  resource JSON by the search indexer, which evaluates the CompartmentDefinition's parameters
  (only relative ``Patient/<id>`` references count, as in the ``compartments`` table). Types
  outside the Patient compartment (Organization, Medication...) are refused under ``patient/``
  unless listed in ``shared_types``. Without a launch patient, ``patient/`` scopes grant nothing.
- ``?param=value`` restrictions are evaluated against the resource's token index rows
  (``system|code``, ``code``, ``system|``, ``|code``); a restriction on a non-token parameter
  cannot be checked on a single resource, so such a scope never admits one (it still lets a
  search start; ``search_restrictions`` hands the parameter to the search engine).

A read (``may_read``) is admitted by a scope with ``r`` or ``s`` on the type: the guard uses
it both for direct reads and to filter search matches and includes.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

import orjson

from medcloud.errors import NotFound
from medcloud.fhir.definitions import patient_compartment, search_params
from medcloud.fhir.exchange import Principal
from medcloud.fhir.indexing import IndexEntries, Indexer
from medcloud.security.scopes import Scope, ScopeSet, is_admin, parse_scopes
from medcloud.storage.resources import Stored

# Looks up the Patient compartments of a stored resource in the ``compartments`` table
# (rid -> patient ids), so reads need not re-index the JSON.
CompartmentLookup = Callable[[Stored], Iterable[str]]
# Looks up the Patient compartments of the resource a reference ("Type/id") points at; Binary
# resources are judged by their securityContext (R4 binary.html#security).
ReferenceLookup = Callable[[str, str], Iterable[str]]


@dataclass(frozen=True, slots=True)
class Grant:
    """One way a principal may see resources of a type in searches: a declarative SQL restriction.

    ``patient`` confines matches to that patient's compartment (None: not confined); ``params`` are
    ``?param=value`` restrictions ANDed into the search. A principal's grants on a type are ORed.
    """

    patient: str | None
    params: tuple[tuple[str, str], ...] = ()


# ``None``: unrestricted; ``()``: nothing is visible; otherwise the alternatives (OR).
ReadFilter = tuple[Grant, ...] | None

_WRITE_LETTERS = {"create": "c", "update": "u", "patch": "u"}


class SmartPolicy:
    def __init__(
        self,
        *,
        indexer: Indexer | None = None,
        compartments_of: CompartmentLookup | None = None,
        reference_compartments: ReferenceLookup | None = None,
        shared_types: Iterable[str] = (),
    ):
        self._indexer = indexer or Indexer()
        self._compartments_of = compartments_of
        self._reference_compartments = reference_compartments
        # ViewDefinitions are definitions, not patient data: a patient/ scope on them is not confined.
        self._shared = frozenset(shared_types) | {"ViewDefinition"}
        self._compartment_types = frozenset(patient_compartment()) | {"Patient"}

    # ------------------------------------------------------------ guard.Policy

    def may(self, principal: Principal, interaction: str, rtype: str | None) -> bool:
        if rtype == "AuditEvent" and interaction in ("read", "search-type") and is_admin(principal):
            return True  # the audit trail's own API (security/audit_api.py) serves administrators
        scopes = self._scopes(principal)
        if interaction in ("capabilities", "batch", "transaction"):
            return scopes.may(interaction, rtype)
        usable = [s for s in self._granting(scopes, interaction, rtype) if self._context_usable(principal, s, rtype)]
        return bool(usable)

    def may_read(self, principal: Principal, stored: Stored) -> bool:
        if stored.deleted or stored.content is None:
            # A deleted version carries no content to judge: admit only unconfined scopes.
            return any(not s.params and s.context != "patient"
                       for s in self._read_scopes(self._scopes(principal), stored.type))
        scopes = self._read_scopes(self._scopes(principal), stored.type)
        if not scopes:
            return False
        if any(not s.params and s.context != "patient" for s in scopes):
            return True  # a user/ or system/ scope on the type without restrictions: no need to look inside
        resource = orjson.loads(stored.content)
        patients = None
        if self._compartments_of is not None and any(s.context == "patient" for s in scopes):
            patients = frozenset(self._compartments_of(stored))
        return self._admits_any(principal, scopes, resource, patients)

    def may_write(self, principal: Principal, rtype: str, resource: dict[str, Any] | None,
                  interaction: str | None = None) -> bool:
        """Create/update/patch (``resource`` given) or delete (``resource`` None).

        Without ``interaction`` (the guard's call), every write letter the principal holds on
        ``rtype`` must admit the resource, so a narrow ``patient/...c`` cannot borrow a wide
        ``user/...u`` — conservative, never wider than the exact answer.
        """
        scopes = self._scopes(principal)
        if resource is None:
            # Delete: the guard checked the stored version with may_read first; see may_delete.
            return any(self._context_usable(principal, s, rtype) for s in scopes.granting("delete", rtype))
        if resource.get("resourceType") != rtype:
            return False
        letters = [_WRITE_LETTERS[interaction]] if interaction in _WRITE_LETTERS else ["c", "u"]
        checked = False
        for letter in letters:
            granting = [s for s in scopes.resource_scopes if s.grants(letter) and s.covers(rtype)]
            if not granting and interaction is None:
                continue
            checked = True
            if not self._admits_any(principal, granting, resource, None):
                return False
        return checked

    def read_filter(self, principal: Principal, rtype: str) -> ReadFilter:
        """What of ``rtype`` a search (or a chain or ``_has`` through ``rtype``) may see, as SQL-able grants.

        Searches apply it in SQL so that totals, ``_summary=count``, paging, chains and ``_has`` see
        exactly what ``may_read`` would admit, and nothing answers for resources the principal cannot
        read (no existence oracle). Needs the ``s`` permission on ``rtype``.
        """
        return _read_filter(self, principal.scopes, principal.patient, rtype)

    # ------------------------------------------------------------ extras for the lead

    def may_delete(self, principal: Principal, stored: Stored) -> bool:
        """Delete of ``stored``: a ``d`` scope that admits the current version."""
        if stored.content is None:
            return False
        granting = list(self._scopes(principal).granting("delete", stored.type))
        return self._admits_any(principal, granting, orjson.loads(stored.content), None)

    def search_restrictions(self, principal: Principal, rtype: str) -> list[tuple[str, str]]:
        """Search parameters to AND into a search of ``rtype``; raises NotFound when search is refused.

        Patient context adds the compartment as one reference parameter (``patient`` when the
        type has it, else the first compartment parameter; ``_id`` for Patient): for types with
        several compartment parameters this is narrower than the compartment, never wider, and
        ``may_read`` remains the exact filter. Several scopes with different ``?`` restrictions
        (an OR) are merged when they restrict the same single parameter (``category=a,b``);
        otherwise the first alternative is used — again narrower, never wider.
        """
        scopes = self._scopes(principal)
        granting = [s for s in self._granting(scopes, "search-type", rtype)
                    if self._context_usable(principal, s, rtype)]
        if not granting:
            raise NotFound(f"{rtype} is not available")
        unconfined = [s for s in granting if s.context != "patient"]
        pool = unconfined or granting
        if any(not s.params for s in pool):
            restriction: tuple[tuple[str, str], ...] = ()
        else:
            restriction = _merge([s.params for s in pool])
        out = list(restriction)
        if not unconfined and rtype not in self._shared:
            out.append(self._compartment_param(rtype, principal.patient or ""))
        return out

    # ------------------------------------------------------------ internals

    def _scopes(self, principal: Principal) -> ScopeSet:
        return _parsed(tuple(principal.scopes))

    def _granting(self, scopes: ScopeSet, interaction: str, rtype: str | None) -> tuple[Scope, ...]:
        if interaction == "operation":
            return scopes.granting("read", rtype) + scopes.granting("search", rtype)
        return scopes.granting(interaction, rtype)

    def _read_scopes(self, scopes: ScopeSet, rtype: str) -> list[Scope]:
        return [s for s in scopes.resource_scopes if (s.grants("r") or s.grants("s")) and s.covers(rtype)]

    def _context_usable(self, principal: Principal, scope: Scope, rtype: str | None) -> bool:
        if scope.context != "patient":
            return True
        if not principal.patient:
            return False
        return rtype is None or rtype in self._compartment_types or rtype in self._shared or rtype == "Binary"

    def _binary_in_compartment(self, patient: str | None, ref: Any) -> bool:
        """A Binary is the launch patient's when its securityContext is (in) that patient's compartment."""
        if not patient or not isinstance(ref, str) or ref.count("/") != 1:
            return False
        rtype, rid = ref.split("/")
        if rtype == "Patient" and rid == patient:
            return True
        return self._reference_compartments is not None and patient in self._reference_compartments(rtype, rid)

    def _admits_any(self, principal: Principal, scopes: Iterable[Scope], resource: dict[str, Any],
                    patients: frozenset[str] | None) -> bool:
        index: IndexEntries | None = None
        rtype = resource.get("resourceType")
        for s in scopes:
            if not s.covers(rtype) or not self._context_usable(principal, s, rtype):
                continue
            if s.context == "patient" and rtype == "Binary":
                ref = (resource.get("securityContext") or {}).get("reference")
                if not self._binary_in_compartment(principal.patient, ref):
                    continue
            elif s.context == "patient" and rtype not in self._shared:
                if patients is None:
                    index = index or self._indexer.extract(resource)
                    patients = frozenset(pid for comp, pid in index.compartments if comp == "Patient")
                if principal.patient not in patients:
                    continue
            if s.params:
                index = index or self._indexer.extract(resource)
                if not all(_token_matches(index, rtype, name, value) for name, value in s.params):
                    continue
            return True
        return False

    def _compartment_param(self, rtype: str, patient: str) -> tuple[str, str]:
        if rtype == "Patient":
            return ("_id", patient)
        params = patient_compartment()[rtype]
        code = "patient" if "patient" in params else params[0]
        return (code, f"Patient/{patient}")


@lru_cache(maxsize=65536)
def _read_filter(policy: SmartPolicy, scopes: tuple[str, ...], patient: str | None, rtype: str) -> ReadFilter:
    granting = _parsed(scopes).granting("search-type", rtype)
    grants: list[Grant] = []
    for s in granting:
        if s.context == "patient":
            if not patient or not (rtype in policy._compartment_types or rtype in policy._shared):
                continue
            confined = None if rtype in policy._shared else patient
        else:
            confined = None
        if confined is None and not s.params:
            return None
        g = Grant(confined, s.params)
        if g not in grants:
            grants.append(g)
    return tuple(grants)


@lru_cache(maxsize=4096)
def _parsed(scopes: tuple[str, ...]) -> ScopeSet:
    # A search asks may_read once per match: parse a token's scopes once, not per resource.
    # Invalid tokens grant nothing (the token issuer validates them; here they are only ignored).
    return parse_scopes(scopes, strict=False)


def _merge(alternatives: list[tuple[tuple[str, str], ...]]) -> tuple[tuple[str, str], ...]:
    first = alternatives[0]
    if all(len(a) == 1 and a[0][0] == first[0][0] for a in alternatives) and len(first) == 1:
        values = dict.fromkeys(v for a in alternatives for v in a[0][1].split(","))
        return ((first[0][0], ",".join(values)),)
    return first


def _token_matches(index: IndexEntries, rtype: str | None, name: str, value: str) -> bool:
    sp = search_params(rtype or "").get(name)
    if sp is None or sp.type != "token":
        return False
    for alt in value.split(","):  # a comma is an OR, as in a search
        if "|" in alt:
            system, _, code = alt.partition("|")
            want_system: str | None = system or None
            any_code = code == ""
            no_system = system == ""
        else:
            want_system, code, any_code, no_system = None, alt, False, False
        for param, _grp, rsystem, rcode, _text in index.token:
            if param != name:
                continue
            if no_system and rsystem is not None:
                continue
            if want_system is not None and rsystem != want_system:
                continue
            if any_code or rcode == code:
                return True
    return False
