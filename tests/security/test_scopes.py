"""SMART v2 scope parsing: a table of valid/invalid examples plus properties on random input."""

from __future__ import annotations

import contextlib

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from medcloud.errors import Invalid
from medcloud.security.scopes import ContextScope, Scope, parse_scope, parse_scopes

VALID = [
    ("patient/Observation.rs", Scope("patient", "Observation", "rs")),
    ("user/*.cruds", Scope("user", "*", "cruds")),
    ("system/Patient.c", Scope("system", "Patient", "c")),
    ("patient/Condition.s", Scope("patient", "Condition", "s")),
    ("user/Encounter.ud", Scope("user", "Encounter", "ud")),
    # SMART 1.0 suffixes map to their v2 equivalents
    ("patient/Observation.read", Scope("patient", "Observation", "rs")),
    ("user/Patient.write", Scope("user", "Patient", "cud")),
    ("system/*.*", Scope("system", "*", "cruds")),
    ("patient/*.read", Scope("patient", "*", "rs")),
    (
        "patient/Observation.rs?category=http://terminology.hl7.org/CodeSystem/observation-category|laboratory",
        Scope("patient", "Observation", "rs",
              (("category", "http://terminology.hl7.org/CodeSystem/observation-category|laboratory"),)),
    ),
    ("user/Observation.s?category=vital-signs&status=final",
     Scope("user", "Observation", "s", (("category", "vital-signs"), ("status", "final")))),
]

CONTEXT = ["openid", "fhirUser", "launch", "launch/patient", "launch/encounter", "offline_access",
           "online_access", "profile"]

INVALID = [
    "", "patient", "patient/", "patient/Observation", "patient/Observation.", "patient/Observation.sr",
    "patient/Observation.rr", "patient/Observation.x", "patient/Observation.RS", "doctor/Observation.rs",
    "Patient/Observation.rs", "patient/NotAType.rs", "patient/observation.rs", "patient/*.rs?",
    "patient/Observation.rs?category", "patient/Observation.rs?=x", "patient/Observation.rs?category=",
    "patient/Observation.read?category=x", "patient/Observation.rs?a=b&", "patient/Observation.rs?a=b c",
    "patient/Observation.rs ", " openid", "launch/", "OPENID", "patient/Observation.cruds?x=a=b",
]


@pytest.mark.parametrize(("text", "expected"), VALID, ids=[v[0][:60] for v in VALID])
def test_valid_scope_parses_to_its_v2_form(text, expected):
    assert parse_scope(text) == expected


@pytest.mark.parametrize("text", CONTEXT)
def test_context_and_identity_scopes_are_recognised(text):
    assert parse_scope(text) == ContextScope(text)


@pytest.mark.parametrize("text", INVALID)
def test_invalid_scope_raises_invalid_with_the_scope_in_the_message(text):
    with pytest.raises(Invalid) as e:
        parse_scope(text)
    assert "scope" in e.value.message


def test_v1_scope_prints_as_v2():
    assert str(parse_scope("patient/Observation.read")) == "patient/Observation.rs"
    assert str(parse_scope("user/*.*")) == "user/*.cruds"


def test_scope_set_non_strict_drops_unknown_tokens_and_strict_refuses_them():
    s = parse_scopes("openid launch/patient patient/Observation.rs bogus", strict=False)
    assert s.has("openid") and s.has("launch/patient")
    assert s.resource_scopes == (Scope("patient", "Observation", "rs"),)
    with pytest.raises(Invalid):
        parse_scopes("openid bogus")


INTERACTIONS = {
    "create": "c", "read": "r", "vread": "r", "history-instance": "r", "update": "u", "patch": "u",
    "delete": "d", "search-type": "s", "search": "s", "history-type": "s", "history": "s",
}


@pytest.mark.parametrize("interaction", sorted(INTERACTIONS))
def test_each_interaction_needs_exactly_its_permission_letter(interaction):
    letter = INTERACTIONS[interaction]
    for perms in ("c", "r", "u", "d", "s"):
        ss = parse_scopes(f"user/Observation.{perms}")
        assert ss.may(interaction, "Observation") is (perms == letter)
        assert not ss.may(interaction, "Patient")


def test_wildcard_type_covers_every_type_and_unknown_interactions_are_refused():
    ss = parse_scopes("system/*.rs")
    assert ss.may("read", "Patient") and ss.may("search-system", None)
    assert not ss.may("create", "Patient")
    assert not ss.may("frobnicate", "Patient")
    assert parse_scopes("").may("capabilities", None)
    assert not parse_scopes("openid fhirUser").may("batch", None)


def test_restrictions_are_alternatives_of_conjunctions():
    ss = parse_scopes("user/Observation.rs?category=laboratory user/Observation.rs?category=vital-signs&status=final")
    assert ss.restrictions("search-type", "Observation") == (
        (("category", "laboratory"),), (("category", "vital-signs"), ("status", "final")))
    assert parse_scopes("user/Observation.rs?category=a user/*.rs").restrictions("read", "Observation") == ()
    assert ss.restrictions("create", "Observation") is None


# ------------------------------------------------------------------ properties

@settings(max_examples=2000, deadline=None)
@given(st.text(max_size=80))
def test_parser_raises_nothing_but_invalid_on_random_strings(text):
    with contextlib.suppress(Invalid):
        parse_scope(text)


_alphabet = st.sampled_from(list("patienusrysmObvD/.*?&=|:-_crudsx ")) | st.characters()


@settings(max_examples=2000, deadline=None)
@given(st.text(alphabet=_alphabet, max_size=60))
def test_parser_raises_nothing_but_invalid_on_scope_shaped_strings(text):
    with contextlib.suppress(Invalid):
        parse_scope(text)


_perms = st.lists(st.sampled_from("cruds"), min_size=1, max_size=5, unique=True).map(
    lambda ls: "".join(c for c in "cruds" if c in ls))
_name = st.from_regex(r"[A-Za-z_][A-Za-z0-9_\-.:]{0,12}", fullmatch=True)
_value = st.text(
    alphabet=st.characters(blacklist_categories=("Cs", "Zs", "Zl", "Zp", "Cc"), blacklist_characters="&=?\"\\\x85"),
    min_size=1, max_size=20,
).filter(lambda v: not any(c.isspace() for c in v))
_scopes = st.builds(
    Scope,
    st.sampled_from(["patient", "user", "system"]),
    st.sampled_from(["*", "Patient", "Observation", "Condition", "Encounter", "MedicationRequest"]),
    _perms,
    st.lists(st.tuples(_name, _value), max_size=3).map(tuple),
)


@settings(max_examples=1000, deadline=None)
@given(_scopes)
def test_str_of_a_scope_parses_back_to_the_same_scope(scope):
    assert parse_scope(str(scope)) == scope
