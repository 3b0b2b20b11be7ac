from __future__ import annotations

import copy
import functools
import gzip
import json
import random
import re
from collections import defaultdict
from decimal import Decimal
from pathlib import Path
from typing import Any

import fhirpathpy
import pytest
from fhirpathpy.engine.nodes import ResourceNode
from fhirpathpy.models import models

from medcloud.fhir import definitions
from medcloud.fhir.indexing import Indexer
from medcloud.fhir.indexing._element_types import CHOICES, TYPES
from medcloud.fhir.indexing.fhirpath import (
    FHIRPATHPY_OPTIONS,
    compile_expression,
    reference_type,
    type_matches,
)

# Where the compiled evaluator deliberately differs from fhirpathpy; the parity test rewrites the
# expression given to fhirpathpy accordingly.
INTENTIONAL = [
    # R4's Observation code-value-date composite writes value.as(DateTime) (the System type); the
    # intent is FHIR dateTime, which fhirpathpy's strict typing does not match.
    (r"\.as\(DateTime\)", ".as(dateTime)"),
    # FHIRPath N1 makes `X as T` an error when X has several items; R4 search expressions apply it
    # to repeating elements ((Observation.component.value as Quantity)), so `as` filters like ofType.
    (r"([A-Za-z.]+) as ([A-Za-z]+)", r"\1.ofType(\2)"),
]


# ---------------------------------------------------------------- Synthea data


def _rewrite_bundle_references(bundle: dict[str, Any]) -> list[dict[str, Any]]:
    """Resources of a transaction bundle with urn:uuid references turned into Type/id, as a server would."""
    ids = {e["fullUrl"]: f"{e['resource']['resourceType']}/{e['resource']['id']}" for e in bundle["entry"]}

    def walk(node: Any) -> Any:
        if isinstance(node, dict):
            return {
                k: (ids.get(v, v) if k == "reference" and isinstance(v, str) else walk(v))
                for k, v in node.items()
            }
        if isinstance(node, list):
            return [walk(x) for x in node]
        return node

    return [walk(e["resource"]) for e in bundle["entry"]]


@pytest.fixture(scope="session")
def synthea_resources(synthea_dir: Path) -> list[dict[str, Any]]:
    resources: list[dict[str, Any]] = []
    for f in sorted(synthea_dir.glob("*.json")):
        resources.extend(_rewrite_bundle_references(json.loads(f.read_text())))
    assert resources
    return resources


# ---------------------------------------------------------------- unit behaviour

OBS: dict[str, Any] = {
    "resourceType": "Observation",
    "id": "o1",
    "contained": [{"resourceType": "Patient", "id": "p"}],
    "subject": {"reference": "Patient/1"},
    "performer": [
        {"reference": "https://example.org/fhir/Practitioner/9/_history/2"},
        {"reference": "#p"},
        {"reference": "urn:uuid:abc", "type": "Organization"},
    ],
    "effectivePeriod": {"start": "2020-01-01"},
    "valueQuantity": {"value": 1.5, "unit": "mg"},
    "code": {"coding": [{"system": "http://loinc.org", "code": "1-8"}], "text": "x"},
    "component": [
        {"code": {"text": "a"}, "valueString": "hi"},
        {"code": {"text": "b"}, "valueQuantity": {"value": 2}},
    ],
}


def values(expr: str, resource: dict[str, Any] = OBS) -> list[tuple[Any, str | None]]:
    compiled = compile_expression(expr)
    assert compiled.compiled, f"{expr} fell back to fhirpathpy"
    return compiled(resource)


def test_plain_path_carries_the_element_type() -> None:
    assert values("Observation.code") == [(OBS["code"], "CodeableConcept")]
    assert values("Observation.code.coding.system") == [("http://loinc.org", "uri")]


def test_choice_path_without_cast_yields_every_present_choice_typed_by_key_suffix() -> None:
    assert values("Observation.value") == [({"value": 1.5, "unit": "mg"}, "Quantity")]
    assert values("Observation.effective") == [({"start": "2020-01-01"}, "Period")]
    assert values("Observation.component.value") == [("hi", "string"), ({"value": 2}, "Quantity")]


def test_as_selects_one_choice_in_both_spellings() -> None:
    assert values("(Observation.value as Quantity)") == [({"value": 1.5, "unit": "mg"}, "Quantity")]
    assert values("Observation.value.as(CodeableConcept)") == []
    assert values("(Observation.effective as dateTime) | (Observation.effective as Period)") == [
        ({"start": "2020-01-01"}, "Period")
    ]


def test_where_resolve_decides_from_relative_absolute_contained_and_declared_type() -> None:
    assert values("Observation.subject.where(resolve() is Patient)") == [
        ({"reference": "Patient/1"}, "Reference")
    ]
    performers = [v["reference"] for v, _ in values("Observation.performer.where(resolve() is Practitioner)")]
    assert performers == ["https://example.org/fhir/Practitioner/9/_history/2"]
    assert [v["reference"] for v, _ in values("Observation.performer.where(resolve() is Patient)")] == ["#p"]
    assert [v["reference"] for v, _ in values("Observation.performer.where(resolve() is Organization)")] == [
        "urn:uuid:abc"
    ]


def test_where_with_equality_filters_on_a_child_value() -> None:
    patient = {
        "resourceType": "Patient",
        "telecom": [{"system": "email", "value": "a@b"}, {"system": "phone", "value": "1"}],
    }
    assert values("Patient.telecom.where(system='email')", patient) == [
        (patient["telecom"][0], "ContactPoint")
    ]


@pytest.mark.parametrize(
    ("patient", "expected"),
    [
        ({"resourceType": "Patient"}, [(False, "boolean")]),
        ({"resourceType": "Patient", "deceasedBoolean": False}, [(False, "boolean")]),
        ({"resourceType": "Patient", "deceasedBoolean": True}, [(True, "boolean")]),
        ({"resourceType": "Patient", "deceasedDateTime": "2020"}, [(True, "boolean")]),
    ],
)
def test_exists_and_not_equal_follow_fhirpath_three_valued_logic(
    patient: dict[str, Any], expected: list
) -> None:
    assert values("Patient.deceased.exists() and Patient.deceased != false", patient) == expected


def test_relative_expression_sees_percent_resource_and_its_focus() -> None:
    compiled = compile_expression("%resource.code.text | code.text")
    focus: list[tuple[Any, str | None]] = [(OBS["component"][0], "Observation_Component")]
    assert compiled.evaluate(focus, OBS) == [("x", "string"), ("a", "string")]


def test_indexer_and_resource_typed_by_resource_type() -> None:
    bundle = {
        "resourceType": "Bundle",
        "entry": [{"resource": OBS}, {"resource": {"resourceType": "Patient"}}],
    }
    assert values("Bundle.entry[0].resource", bundle) == [(OBS, "Observation")]


def test_first_keys_let_the_indexer_skip_absent_elements() -> None:
    assert compile_expression("Observation.code | Observation.component.code").first_keys == {
        "code",
        "component",
    }
    assert "valueQuantity" in (compile_expression("Observation.value as Quantity").first_keys or ())
    assert compile_expression("Patient.deceased.exists() and Patient.deceased != false").first_keys is None


def test_unsupported_expression_falls_back_to_fhirpathpy() -> None:
    compiled = compile_expression("Observation.component.code.text.select(upper())")
    assert not compiled.compiled
    assert compiled(OBS) == [("A", None), ("B", None)]


def test_type_matches_knows_quantity_profiles_and_resources() -> None:
    assert type_matches("Age", "Quantity")
    assert not type_matches("Quantity", "Age")
    assert type_matches("Patient", "Resource")
    assert type_matches("dateTime", "DateTime")


@pytest.mark.parametrize(
    ("ref", "expected"),
    [
        ({"reference": "Patient/1"}, "Patient"),
        ({"reference": "Patient/1/_history/3"}, "Patient"),
        ({"reference": "http://x.org/fhir/Encounter/e-1"}, "Encounter"),
        ({"reference": "urn:uuid:1"}, None),
        ({"reference": "Foo/1"}, None),
        ({"type": "Group"}, "Group"),
        ("http://x.org/fhir/Questionnaire/q|1.0", "Questionnaire"),
    ],
)
def test_reference_type_reads_the_reference_alone(ref: Any, expected: str | None) -> None:
    assert reference_type(ref) == expected


def test_every_r4_search_expression_compiles_without_fallback() -> None:
    fallbacks: set[str] = set()
    for rtype in definitions.resource_types():
        for sp in definitions.search_params(rtype).values():
            exprs = [sp.expression] if sp.expression else []
            exprs += [c.expression for c in sp.components]
            fallbacks.update(e for e in exprs if not compile_expression(e).compiled)
    assert fallbacks == set()


# ---------------------------------------------------------------- parity with fhirpathpy


def _canon(v: Any) -> Any:
    if isinstance(v, dict):
        return tuple(sorted((k, _canon(x)) for k, x in v.items()))
    if isinstance(v, list):
        return tuple(_canon(x) for x in v)
    if isinstance(v, bool) or v is None:
        return v
    if isinstance(v, (int, float, Decimal)):
        return ("n", str(Decimal(repr(v) if isinstance(v, float) else str(v)).normalize()))
    return str(v)


def _reference_value(expr: str) -> str:
    for ours, theirs in INTENTIONAL:
        expr = re.sub(ours, theirs, expr)
    return expr


def _split_union(expr: str) -> list[str]:
    return [p.strip() for p in definitions._split_union(expr)]


def _sample(resources: list[dict[str, Any]], per_type: int = 12) -> list[dict[str, Any]]:
    by_type: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for r in resources:
        if len(by_type[r["resourceType"]]) < per_type:
            by_type[r["resourceType"]].append(r)
    return [r for rs in by_type.values() for r in rs]


@pytest.mark.slow
def test_compiled_values_equal_fhirpathpy_for_every_search_parameter_on_synthea(
    synthea_resources: list[dict[str, Any]],
) -> None:
    model = models["r4"]
    reference_fns: dict[str, Any] = {}

    def theirs(expr: str, resource: dict[str, Any]) -> set:
        fn = reference_fns.get(expr)
        if fn is None:
            fn = reference_fns[expr] = fhirpathpy.compile(
                _reference_value(expr), model=model, options=FHIRPATHPY_OPTIONS
            )
        return {_canon(v) for v in fn(copy.deepcopy(resource), {"resource": resource})}

    mismatches = []
    checked = 0
    for resource in _sample(synthea_resources):
        for sp in definitions.search_params(resource["resourceType"]).values():
            if sp.expression is None or sp.code in ("_id", "_lastUpdated"):
                continue
            compiled = compile_expression(sp.expression)
            items = compiled(resource)
            cases = [(sp.expression, {_canon(v) for v, _ in items})]
            for comp in sp.components:
                cexpr = compile_expression(comp.expression)
                ours = {_canon(v) for item in items for v, _ in cexpr.evaluate([item], resource)}
                branches = " | ".join(f"{b}.select({comp.expression})" for b in _split_union(sp.expression))
                cases.append((branches, ours))
            for expr, ours in cases:
                checked += 1
                expected = theirs(expr, resource)
                if ours != expected:
                    mismatches.append(
                        (resource["resourceType"], resource.get("id"), sp.code, expr, ours, expected)
                    )
    assert checked > 500
    assert mismatches == []


def test_compiled_items_carry_a_type_on_synthea(synthea_resources: list[dict[str, Any]]) -> None:
    untyped: set[str] = set()
    for resource in _sample(synthea_resources, per_type=5):
        for sp in definitions.search_params(resource["resourceType"]).values():
            if sp.expression:
                untyped.update(sp.code for _, t in compile_expression(sp.expression)(resource) if t is None)
    assert untyped == set()


# ---------------------------------------------------------------- parity on schema-generated resources

_SCHEMA = Path(definitions.__file__).parent / "_spec" / "fhir.schema.json.gz"
_PRIMITIVE_SAMPLES: dict[str, list[Any]] = {
    "boolean": [True, False],
    "integer": [0, 7, 42],
    "positiveInt": [1, 7],
    "unsignedInt": [0, 3],
    "decimal": [1.5, 100, 0.25, 1e-3],
    "date": ["2020-01-02", "2020-05", "2021"],
    "dateTime": ["2020-01-02T03:04:05Z", "2020-01-02", "2019-12-31T23:00:00+02:00"],
    "instant": ["2020-01-02T03:04:05.123Z"],
    "time": ["10:00:00"],
    "code": ["active", "email", "phone", "composed-of", "depends-on", "final", "male"],
    "uri": ["http://example.org/fhir/ValueSet/x", "urn:oid:1.2.3"],
    "url": ["http://example.org/x"],
    "canonical": ["http://example.org/fhir/Questionnaire/q|1.0", "http://example.org/fhir/Library/l"],
}
_REFERENCES = [
    "Patient/p1",
    "Practitioner/d1",
    "Organization/o1",
    "https://x.org/fhir/Patient/p2",
    "#c1",
    "Group/g1",
    "Device/v1",
    "Location/l1",
    "RelatedPerson/r1",
    "Encounter/e1",
]
_SKIP = {"extension", "modifierExtension", "text", "contained", "meta", "id"}


@functools.cache
def _schema_shapes() -> dict[str, dict[str, tuple[str, bool]]]:
    """definition -> property -> (type, is_array), from the same schema the type table came from."""
    defs = json.loads(gzip.decompress(_SCHEMA.read_bytes()))["definitions"]
    shapes: dict[str, dict[str, tuple[str, bool]]] = {}
    for name, d in defs.items():
        props = {}
        for k, prop in d.get("properties", {}).items():
            if k.startswith("_") or k == "resourceType" or k in _SKIP:
                continue
            props[k] = (TYPES.get(name, {}).get(k, "string"), "items" in prop)
        shapes[name] = props
    return shapes


def _generate(rng: random.Random, t: str, depth: int) -> Any:
    if t in _PRIMITIVE_SAMPLES:
        return rng.choice(_PRIMITIVE_SAMPLES[t])
    if t == "Reference":
        return {"reference": rng.choice(_REFERENCES), "display": "x"}
    if t == "Resource":
        return {"resourceType": "Patient", "id": "c1"}
    shape = _schema_shapes().get(t)
    if not shape:
        return "text " + rng.choice("abc")
    out: dict[str, Any] = {}
    chosen_choices: set[str] = set()
    for k, (kt, is_array) in shape.items():
        base = next((b for b, keys in CHOICES.get(t, {}).items() if k in keys), None)
        if base is not None and (base in chosen_choices or rng.random() < 0.5):
            continue
        primitive = kt in _PRIMITIVE_SAMPLES
        if rng.random() > (0.6 if depth == 0 else 0.35) or (depth >= 3 and not primitive):
            continue
        if base is not None:
            chosen_choices.add(base)
        n = rng.choice([1, 2]) if is_array else 1
        values = [_generate(rng, kt, depth + 1) for _ in range(n)]
        out[k] = values if is_array else values[0]
    return out


@pytest.mark.slow
def test_compiled_values_equal_fhirpathpy_on_generated_resources_of_every_type() -> None:
    rng = random.Random(20250101)
    model = models["r4"]
    mismatches, checked = [], 0
    current: dict[str, Any] = {}

    def resolve(inputs: list[Any]) -> list[Any]:
        # FHIRPATHPY_OPTIONS' resolve cannot see the root resource, so #contained stays unresolved
        # there; here it gets the resource under test, as the compiled resolve() does.
        types = (reference_type(v, current["resource"]) for v in inputs)
        return [ResourceNode.create_node({"resourceType": t}, t) for t in types if t is not None]

    options = {"userInvocationTable": {"resolve": {"fn": resolve, "arity": {0: []}}}}
    reference_fns: dict[str, Any] = {}
    for rtype in definitions.resource_types():
        params = [
            sp for sp in definitions.search_params(rtype).values() if sp.expression and sp.code != "_id"
        ]
        for _ in range(4):
            resource = {"resourceType": rtype, "id": "x", **_generate(rng, rtype, 0)}
            if rng.random() < 0.3:
                resource["contained"] = [{"resourceType": "Practitioner", "id": "c1"}]
            current["resource"] = resource
            for sp in params:
                assert sp.expression is not None
                ours = {_canon(v) for v, _ in compile_expression(sp.expression)(resource)}
                fn = reference_fns.get(sp.expression)
                if fn is None:
                    fn = reference_fns[sp.expression] = fhirpathpy.compile(
                        _reference_value(sp.expression), model=model, options=options
                    )
                theirs = {_canon(v) for v in fn(copy.deepcopy(resource), {"resource": resource})}
                checked += 1
                if ours != theirs:
                    mismatches.append((rtype, sp.code, sp.expression, ours, theirs))
    assert checked > 3000
    assert mismatches == []


def test_generated_resources_of_every_type_index_without_error() -> None:
    rng = random.Random(7)
    indexer = Indexer()
    for rtype in definitions.resource_types():
        for _ in range(3):
            entries = indexer.extract({"resourceType": rtype, "id": "x", **_generate(rng, rtype, 0)})
            for table in ("string", "token", "date", "number", "quantity", "reference", "uri"):
                for row in getattr(entries, table):
                    assert all(x is None or isinstance(x, (str, int, float)) for x in row), (rtype, row)
