"""SmartPolicy decision matrix: scope kind x resource (in/out of compartment, restriction) x interaction."""

from __future__ import annotations

import itertools

import orjson
import pytest

from medcloud.errors import NotFound
from medcloud.fhir.exchange import Principal
from medcloud.security.guard import Guard
from medcloud.security.policy import SmartPolicy
from medcloud.storage.resources import Stored

LAB = "http://terminology.hl7.org/CodeSystem/observation-category|laboratory"
CAT = "http://terminology.hl7.org/CodeSystem/observation-category"


def _obs(oid: str, patient: str, category: str) -> dict:
    return {"resourceType": "Observation", "id": oid, "status": "final",
            "category": [{"coding": [{"system": CAT, "code": category}]}],
            "code": {"text": "x"}, "subject": {"reference": f"Patient/{patient}"}}


# name -> (resource, in p1's compartment, matches the laboratory restriction)
RESOURCES = {
    "obs-p1-lab": (_obs("o1", "p1", "laboratory"), True, True),
    "obs-p1-vital": (_obs("o2", "p1", "vital-signs"), True, False),
    "obs-p2-lab": (_obs("o3", "p2", "laboratory"), False, True),
    "obs-p2-vital": (_obs("o4", "p2", "vital-signs"), False, False),
    "patient-p1": ({"resourceType": "Patient", "id": "p1"}, True, False),
    "patient-p2": ({"resourceType": "Patient", "id": "p2"}, False, False),
    "organization": ({"resourceType": "Organization", "id": "org1", "name": "x"}, False, False),
}

# name -> (scope string, launch patient, context, types covered, permissions, restricted)
SCOPES = {
    "patient-v2": ("patient/Observation.rs", "p1", "patient", {"Observation"}, "rs", False),
    "patient-v1-read": ("patient/Observation.read", "p1", "patient", {"Observation"}, "rs", False),
    "patient-v1-write": ("patient/Observation.write", "p1", "patient", {"Observation"}, "cud", False),
    "patient-wildcard": ("patient/*.cruds", "p1", "patient", None, "cruds", False),
    "patient-v1-wildcard": ("patient/*.*", "p1", "patient", None, "cruds", False),
    "patient-restricted": (f"patient/Observation.cruds?category={LAB}", "p1", "patient", {"Observation"}, "cruds", True),
    "patient-no-launch": ("patient/*.cruds", None, "patient", None, "cruds", False),
    "user-v2": ("user/Observation.rs", None, "user", {"Observation"}, "rs", False),
    "user-v1-write": ("user/Observation.write", None, "user", {"Observation"}, "cud", False),
    "user-wildcard": ("user/*.cruds", None, "user", None, "cruds", False),
    "user-restricted": (f"user/Observation.rs?category={LAB}", None, "user", {"Observation"}, "rs", True),
    "system-v2": ("system/Patient.rs", None, "system", {"Patient"}, "rs", False),
    "system-v1-wildcard": ("system/*.*", None, "system", None, "cruds", False),
    "system-restricted": (f"system/Observation.cruds?category={LAB}", None, "system", {"Observation"}, "cruds", True),
    "identity-only": ("openid fhirUser launch/patient", "p1", None, set(), "", False),
}

INTERACTIONS = ("read", "search", "create", "update", "delete")
LETTER = {"read": "r", "search": "s", "create": "c", "update": "u", "delete": "d"}


def _expected(scope: str, resource: str, interaction: str) -> bool:
    _, launch, context, types, perms, restricted = SCOPES[scope]
    res, in_p1, lab = RESOURCES[resource]
    if context is None or LETTER[interaction] not in perms:
        return False
    if types is not None and res["resourceType"] not in types:
        return False
    if context == "patient" and (launch is None or not in_p1):
        return False
    return not (restricted and not lab)


def _stored(res: dict) -> Stored:
    return Stored(rid=1, type=res["resourceType"], id=res["id"], version=1, last_updated=0, deleted=False,
                  content=orjson.dumps(res))


def _decide(policy: SmartPolicy, p: Principal, res: dict, interaction: str) -> bool:
    rtype = res["resourceType"]
    if interaction == "read":
        return policy.may(p, "read", rtype) and policy.may_read(p, _stored(res))
    if interaction == "search":
        # a search starts (may), then every match passes may_read (which admits `r` or `s`)
        return policy.may(p, "search-type", rtype) and policy.may_read(p, _stored(res))
    if interaction in ("create", "update"):
        return policy.may(p, interaction, rtype) and policy.may_write(p, rtype, res, interaction)
    return policy.may(p, "delete", rtype) and policy.may_delete(p, _stored(res))


CASES = list(itertools.product(SCOPES, RESOURCES, INTERACTIONS))


@pytest.fixture(scope="module")
def policy() -> SmartPolicy:
    return SmartPolicy()


@pytest.mark.parametrize(("scope", "resource", "interaction"), CASES, ids=["-".join(c) for c in CASES])
def test_decision_matrix(policy, scope, resource, interaction):
    text, launch = SCOPES[scope][0], SCOPES[scope][1]
    p = Principal(subject="u", scopes=tuple(text.split()), patient=launch)
    assert _decide(policy, p, RESOURCES[resource][0], interaction) is _expected(scope, resource, interaction)


def test_matrix_size_is_reported():
    assert len(CASES) == len(SCOPES) * len(RESOURCES) * len(INTERACTIONS) == 525


def test_patient_scope_reads_use_the_injected_compartment_lookup(policy):
    calls = []

    def lookup(stored):
        calls.append(stored.id)
        return ["p2"]  # the table says p2, whatever the JSON says

    pol = SmartPolicy(compartments_of=lookup)
    p = Principal(scopes=("patient/Observation.rs",), patient="p1")
    res = RESOURCES["obs-p1-lab"][0]
    assert not pol.may_read(p, _stored(res))
    assert calls == ["o1"]
    assert policy.may_read(p, _stored(res))


def test_narrow_patient_create_cannot_borrow_a_wide_user_update(policy):
    p = Principal(scopes=("patient/Observation.c", "user/Observation.u"), patient="p1")
    out = RESOURCES["obs-p2-lab"][0]
    assert not policy.may_write(p, "Observation", out, "create")
    assert not policy.may_write(p, "Observation", out)  # the guard's call, without the interaction
    assert policy.may_write(p, "Observation", out, "update")
    assert policy.may_write(p, "Observation", RESOURCES["obs-p1-lab"][0])


def test_write_of_a_resource_of_another_type_than_the_route_is_refused(policy):
    p = Principal(scopes=("user/Observation.cruds",))
    assert not policy.may_write(p, "Observation", RESOURCES["patient-p1"][0], "create")


def test_restriction_on_a_non_token_parameter_admits_no_single_resource(policy):
    p = Principal(scopes=("user/Observation.rs?subject=Patient/p1",))
    assert policy.may(p, "search-type", "Observation")
    assert not policy.may_read(p, _stored(RESOURCES["obs-p1-lab"][0]))


def test_restriction_forms_system_code_code_system_only_and_or(policy):
    res = _stored(RESOURCES["obs-p1-lab"][0])
    for value, ok in [(LAB, True), ("laboratory", True), (f"{CAT}|", True), ("|laboratory", False),
                      ("vital-signs", False), ("vital-signs,laboratory", True), ("other|laboratory", False)]:
        p = Principal(scopes=(f"user/Observation.rs?category={value}",))
        assert policy.may_read(p, res) is ok, value


def test_search_restrictions_for_patient_context_add_the_compartment(policy):
    p = Principal(scopes=("patient/*.rs",), patient="p1")
    assert policy.search_restrictions(p, "Observation") == [("subject", "Patient/p1")]
    assert policy.search_restrictions(p, "Condition") == [("patient", "Patient/p1")]
    assert policy.search_restrictions(p, "Patient") == [("_id", "p1")]
    with pytest.raises(NotFound):
        policy.search_restrictions(p, "Organization")


def test_search_restrictions_merge_or_of_one_parameter_and_user_scope_dominates(policy):
    p = Principal(scopes=("patient/Observation.rs?category=laboratory", "patient/Observation.s?category=vital-signs"),
                  patient="p1")
    assert policy.search_restrictions(p, "Observation") == [
        ("category", "laboratory,vital-signs"), ("subject", "Patient/p1")]
    p2 = Principal(scopes=("patient/Observation.rs", "user/Observation.s?category=laboratory"), patient="p1")
    assert policy.search_restrictions(p2, "Observation") == [("category", "laboratory")]
    assert policy.search_restrictions(Principal(scopes=("system/*.rs",)), "Observation") == []
    with pytest.raises(NotFound):
        policy.search_restrictions(Principal(scopes=("user/Observation.r",)), "Observation")


def test_shared_types_are_readable_under_patient_scopes_only_when_configured():
    p = Principal(scopes=("patient/*.rs",), patient="p1")
    org = _stored(RESOURCES["organization"][0])
    assert not SmartPolicy().may_read(p, org)
    assert SmartPolicy(shared_types={"Organization"}).may_read(p, org)


def test_deleted_versions_are_readable_only_under_unconfined_scopes(policy):
    gone = Stored(rid=1, type="Observation", id="o1", version=2, last_updated=0, deleted=True, content=None)
    assert not policy.may_read(Principal(scopes=("patient/*.rs",), patient="p1"), gone)
    assert not policy.may_read(Principal(scopes=(f"user/Observation.rs?category={LAB}",)), gone)
    assert policy.may_read(Principal(scopes=("user/Observation.rs",)), gone)


def test_guard_with_smart_policy_answers_refusals_as_not_found():
    guard = Guard(SmartPolicy(), None)
    p = Principal(scopes=("patient/Observation.rs",), patient="p1")
    guard.check_read(p, _stored(RESOURCES["obs-p1-lab"][0]))
    with pytest.raises(NotFound):
        guard.check_read(p, _stored(RESOURCES["obs-p2-lab"][0]))
    with pytest.raises(NotFound):
        guard.authorize(p, "create", "Observation")
    guard.authorize(p, "capabilities", None)


def test_garbage_scopes_on_a_principal_grant_nothing(policy):
    p = Principal(scopes=("patient/*.rs?", "admin", "user/NotAType.cruds"), patient="p1")
    assert not policy.may(p, "read", "Patient")
    assert not policy.may_read(p, _stored(RESOURCES["patient-p1"][0]))
