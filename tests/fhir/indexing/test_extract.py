from __future__ import annotations

import json
import math
import re
from functools import partial
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from medcloud.fhir import definitions
from medcloud.fhir.indexing import IndexEntries, Indexer
from medcloud.fhir.indexing._element_types import TYPES
from medcloud.fhir.primitives import MAX_US, MIN_US, date_range, number_range


def test_package_exports_only_the_indexer_api() -> None:
    import medcloud.fhir.indexing as pkg

    assert sorted(pkg.__all__) == ["IndexEntries", "Indexer"]


@pytest.fixture(scope="module")
def indexer() -> Indexer:
    return Indexer()


def rows(entries: IndexEntries, table: str, param: str) -> list[tuple]:
    return [r[1:] for r in getattr(entries, table) if r[0] == param]


PATIENT = {
    "resourceType": "Patient",
    "id": "p1",
    "active": True,
    "gender": "female",
    "birthDate": "1980-05",
    "name": [
        {"family": "Gómez", "given": ["Ana", "María"], "prefix": ["Dr."], "text": "Dr. Ana María Gómez"}
    ],
    "address": [
        {"line": ["1 Main St"], "city": "Boston", "state": "MA", "postalCode": "02115", "country": "US"}
    ],
    "telecom": [{"system": "email", "value": "ana@example.org"}, {"system": "phone", "value": "555"}],
    "identifier": [
        {
            "system": "http://hospital.org/mrn",
            "value": "M-1",
            "type": {
                "coding": [{"system": "http://terminology.hl7.org/CodeSystem/v2-0203", "code": "MR"}],
                "text": "Medical Record",
            },
        }
    ],
    "generalPractitioner": [
        {"reference": "Practitioner/dr1"},
        {"identifier": {"system": "npi", "value": "42"}},
    ],
    "link": [{"other": {"reference": "Patient/p0"}, "type": "seealso"}],
}


def test_patient_names_and_addresses_index_each_part_normalised(indexer: Indexer) -> None:
    e = indexer.extract(PATIENT)
    assert rows(e, "string", "family") == [(0, "gomez", "Gómez")]
    assert rows(e, "string", "given") == [(0, "ana", "Ana"), (0, "maria", "María")]
    assert ("dr.", "Dr.") in [r[1:] for r in rows(e, "string", "name")]
    assert ("dr. ana maria gomez", "Dr. Ana María Gómez") in [r[1:] for r in rows(e, "string", "name")]
    assert {r[1] for r in rows(e, "string", "address")} == {"1 main st", "boston", "ma", "02115", "us"}
    assert rows(e, "string", "address-postalcode") == [(0, "02115", "02115")]


def test_patient_tokens_cover_codes_booleans_contact_points_and_identifier_types(indexer: Indexer) -> None:
    e = indexer.extract(PATIENT)
    assert rows(e, "token", "gender") == [(0, None, "female", None)]
    assert rows(e, "token", "active") == [(0, None, "true", None)]
    assert rows(e, "token", "deceased") == [(0, None, "false", None)]
    assert rows(e, "token", "email") == [(0, "email", "ana@example.org", None)]
    assert rows(e, "token", "phone") == [(0, "phone", "555", None)]
    assert rows(e, "token", "telecom") == [(0, "email", "ana@example.org", None), (0, "phone", "555", None)]
    assert rows(e, "token", "identifier") == [(0, "http://hospital.org/mrn", "M-1", "medical record")]
    assert rows(e, "token", "identifier:of-type") == [
        (0, "http://terminology.hl7.org/CodeSystem/v2-0203", "MR|M-1", None)
    ]


def test_patient_dates_references_and_own_compartment(indexer: Indexer) -> None:
    e = indexer.extract(PATIENT)
    assert rows(e, "date", "birthdate") == [(0, *date_range("1980-05"))]
    assert rows(e, "reference", "general-practitioner") == [(0, "Practitioner", "dr1", None, None)]
    assert rows(e, "token", "general-practitioner:identifier") == [(0, "npi", "42", None)]
    assert rows(e, "reference", "link") == [(0, "Patient", "p0", None, None)]
    assert sorted(e.compartments) == [("Patient", "p0"), ("Patient", "p1")]


OBSERVATION = {
    "resourceType": "Observation",
    "id": "o1",
    "status": "final",
    "contained": [{"resourceType": "Device", "id": "d"}],
    "code": {
        "coding": [{"system": "http://loinc.org", "code": "85354-9", "display": "Blood Pressure"}],
        "text": "BP",
    },
    "subject": {"reference": "Patient/p1"},
    "performer": [
        {"reference": "https://other.org/fhir/Practitioner/x/_history/3"},
        {"reference": "Practitioner?identifier=npi|1"},
    ],
    "device": {"reference": "#d"},
    "effectivePeriod": {"start": "2021-03-04T10:00:00Z"},
    "valueQuantity": {
        "value": 120.0,
        "unit": "mmHg",
        "system": "http://unitsofmeasure.org",
        "code": "mm[Hg]",
    },
    "component": [
        {
            "code": {"coding": [{"system": "http://loinc.org", "code": "8480-6"}]},
            "valueQuantity": {
                "value": 120,
                "unit": "mmHg",
                "system": "http://unitsofmeasure.org",
                "code": "mm[Hg]",
            },
        },
        {
            "code": {"coding": [{"system": "http://loinc.org", "code": "8462-4"}]},
            "valueQuantity": {
                "value": 80.5,
                "unit": "mmHg",
                "system": "http://unitsofmeasure.org",
                "code": "mm[Hg]",
            },
        },
    ],
}


def test_codeable_concept_gives_coding_rows_plus_a_text_row(indexer: Indexer) -> None:
    e = indexer.extract(OBSERVATION)
    assert rows(e, "token", "code") == [
        (0, "http://loinc.org", "85354-9", "blood pressure"),
        (0, None, None, "bp"),
    ]


def test_quantities_carry_units_and_implicit_precision(indexer: Indexer) -> None:
    e = indexer.extract(OBSERVATION)
    unit = ("http://unitsofmeasure.org", "mm[Hg]", "mmHg")
    assert rows(e, "quantity", "value-quantity") == [(0, *unit, *number_range(120.0))]
    assert rows(e, "quantity", "component-value-quantity") == [
        (0, *unit, *number_range(120)),
        (0, *unit, *number_range(80.5)),
    ]


def test_period_with_open_end_runs_to_max(indexer: Indexer) -> None:
    e = indexer.extract(OBSERVATION)
    assert rows(e, "date", "date") == [(0, date_range("2021-03-04T10:00:00Z")[0], MAX_US)]


def test_references_parse_absolute_urls_and_skip_contained_and_conditional(indexer: Indexer) -> None:
    e = indexer.extract(OBSERVATION)
    assert rows(e, "reference", "performer") == [
        (0, "Practitioner", "x", "https://other.org/fhir/Practitioner/x", "3")
    ]
    assert rows(e, "reference", "device") == []
    assert rows(e, "reference", "subject") == [(0, "Patient", "p1", None, None)]
    assert rows(e, "reference", "patient") == [(0, "Patient", "p1", None, None)]
    assert e.compartments == [("Patient", "p1")]


def test_composite_components_share_the_ordinal_of_their_element(indexer: Indexer) -> None:
    e = indexer.extract(OBSERVATION)
    codes = rows(e, "token", "component-code-value-quantity#0")
    values = rows(e, "quantity", "component-code-value-quantity#1")
    assert [(r[0], r[2]) for r in codes] == [(1, "8480-6"), (2, "8462-4")]
    assert [(r[0], r[4]) for r in values] == [(1, 120.0), (2, 80.5)]
    # combo-code-value-quantity's base is `Observation | Observation.component`: the resource is element 1.
    assert [(r[0], r[4]) for r in rows(e, "quantity", "combo-code-value-quantity#1")] == [
        (1, 120.0),
        (2, 120.0),
        (3, 80.5),
    ]


def test_identical_rows_are_deduplicated(indexer: Indexer) -> None:
    obs = {**OBSERVATION, "category": [{"text": "Vital"}, {"text": "vital"}]}
    e = indexer.extract(obs)
    assert rows(e, "token", "category") == [(0, None, None, "vital")]
    for table in ("string", "token", "date", "number", "quantity", "reference", "uri", "compartments"):
        assert len(getattr(e, table)) == len(set(getattr(e, table)))


def test_money_and_range_quantities(indexer: Indexer) -> None:
    invoice = {
        "resourceType": "Invoice",
        "status": "issued",
        "totalGross": {"value": 10.5, "currency": "EUR"},
    }
    e = indexer.extract(invoice)
    assert rows(e, "quantity", "totalgross") == [
        (0, "urn:iso:std:iso:4217", "EUR", None, *number_range(10.5))
    ]
    vs = {
        "resourceType": "ValueSet",
        "url": "http://x.org/vs",
        "useContext": [
            {
                "code": {"system": "http://terminology.hl7.org/CodeSystem/usage-context-type", "code": "age"},
                "valueRange": {"low": {"value": 18, "unit": "a"}, "high": {"value": 65, "unit": "a"}},
            },
            {"code": {"code": "age"}, "valueRange": {"low": {"value": 70, "unit": "a"}}},
        ],
    }
    e = indexer.extract(vs)
    assert rows(e, "quantity", "context-quantity") == [
        (0, None, None, "a", 18.0, 17.5, 65.5),
        (0, None, None, "a", 70.0, 69.5, math.inf),
    ]
    assert rows(e, "uri", "url") == [(0, "http://x.org/vs")]
    assert [r[0] for r in rows(e, "token", "context-type-quantity#0")] == [1, 2]


def test_timing_indexes_the_span_of_its_events_and_bounds(indexer: Indexer) -> None:
    mr = {
        "resourceType": "MedicationRequest",
        "dosageInstruction": [{"timing": {"event": ["2020-01-05", "2020-01-01T08:00:00Z"]}}],
    }
    assert rows(indexer.extract(mr), "date", "date") == [
        (0, *date_range("2020-01-05")),
        (0, *date_range("2020-01-01T08:00:00Z")),
    ]
    cp = {
        "resourceType": "CarePlan",
        "activity": [
            {"detail": {"scheduledTiming": {"repeat": {"boundsPeriod": {"end": "2020-02"}}}}},
            {"detail": {"scheduledString": "daily"}},
        ],
    }
    assert rows(indexer.extract(cp), "date", "activity-date") == [(0, MIN_US, date_range("2020-02")[1])]


def test_canonical_references_split_the_version(indexer: Indexer) -> None:
    pd = {
        "resourceType": "PlanDefinition",
        "library": ["http://x.org/Library/lib|2.0"],
        "relatedArtifact": [
            {"type": "depends-on", "resource": "http://x.org/Library/other"},
            {"type": "citation", "resource": "http://x.org/Library/no"},
        ],
    }
    assert sorted(rows(indexer.extract(pd), "reference", "depends-on")) == [
        (0, None, None, "http://x.org/Library/lib", "2.0"),
        (0, None, None, "http://x.org/Library/other", None),
    ]


def test_number_and_composite_with_percent_resource(indexer: Indexer) -> None:
    ms = {
        "resourceType": "MolecularSequence",
        "type": "dna",
        "coordinateSystem": 0,
        "referenceSeq": {"chromosome": {"coding": [{"system": "http://x", "code": "1"}]}},
        "variant": [{"start": 100, "end": 101}],
    }
    e = indexer.extract(ms)
    assert rows(e, "number", "variant-start") == [(0, 100.0, 99.5, 100.5)]
    assert rows(e, "token", "chromosome-variant-coordinate#0") == [(1, "http://x", "1", None)]
    assert rows(e, "number", "chromosome-variant-coordinate#2") == [(1, 101.0, 100.5, 101.5)]
    ra = {"resourceType": "RiskAssessment", "status": "final", "prediction": [{"probabilityDecimal": 0.25}]}
    assert rows(indexer.extract(ra), "number", "probability") == [(0, 0.25, 0.245, 0.255)]


def test_bundle_first_entry_is_indexed_as_a_reference_to_it(indexer: Indexer) -> None:
    bundle = {
        "resourceType": "Bundle",
        "type": "document",
        "entry": [{"resource": {"resourceType": "Composition", "id": "c1"}}],
    }
    assert rows(indexer.extract(bundle), "reference", "composition") == [(0, "Composition", "c1", None, None)]


def test_document_reference_relationship_survives_swapped_r4_component_types(indexer: Indexer) -> None:
    doc = {
        "resourceType": "DocumentReference",
        "status": "current",
        "relatesTo": [{"code": "replaces", "target": {"reference": "DocumentReference/old"}}],
    }
    e = indexer.extract(doc)
    assert rows(e, "token", "relationship#0") == [(1, None, "replaces", None)]
    assert rows(e, "reference", "relationship#1") == [(1, "DocumentReference", "old", None, None)]


def test_meta_parameters_are_indexed_but_id_and_last_updated_are_not(indexer: Indexer) -> None:
    res = {
        "resourceType": "Basic",
        "id": "b",
        "meta": {
            "lastUpdated": "2020-01-01T00:00:00Z",
            "profile": ["http://x/p"],
            "tag": [{"system": "s", "code": "t"}],
            "security": [{"code": "R"}],
            "source": "http://src",
        },
    }
    e = indexer.extract(res)
    assert rows(e, "uri", "_profile") == [(0, "http://x/p")]
    assert rows(e, "token", "_tag") == [(0, "s", "t", None)]
    assert rows(e, "token", "_security") == [(0, None, "R", None)]
    assert rows(e, "uri", "_source") == [(0, "http://src")]
    assert not [r for t in ("token", "date") for r in getattr(e, t) if r[0] in ("_id", "_lastUpdated")]


def test_malformed_values_are_skipped_not_fatal(indexer: Indexer) -> None:
    obs: dict[str, Any] = {
        "resourceType": "Observation",
        "effectiveDateTime": "yesterday",
        "valueQuantity": {"value": "lots"},
        "code": "not-a-concept",
        "subject": {"reference": 5},
    }
    e = indexer.extract(obs)
    assert e.date == [] and e.quantity == []
    obs = {
        "resourceType": "Observation",
        "code": {"coding": [{"system": {"x": 1}, "code": ["c"]}, "junk"], "text": 7},
        "identifier": [{"value": {"v": 1}, "type": {"coding": [{"code": {"c": 1}}]}}],
        "valueQuantity": {"value": 1, "code": {"c": 1}},
    }
    e = indexer.extract(obs)
    assert e.token == []
    assert rows(e, "quantity", "value-quantity") == [(0, None, None, None, 1.0, 0.5, 1.5)]
    assert indexer.extract({"no": "type"}) == IndexEntries()


# ---------------------------------------------------------------- Synthea


_URN_UUID = re.compile(r'"(urn:uuid:[^"]+)"')


def _relative(ids: dict[str, str], m: re.Match[str]) -> str:
    return json.dumps(ids.get(m.group(1), m.group(1)))


def _resources(directory: Path) -> list[dict[str, Any]]:
    out = []
    for f in sorted(directory.glob("*.json")):
        bundle = json.loads(f.read_text())
        ids = {
            e["fullUrl"]: f"{e['resource']['resourceType']}/{e['resource']['id']}" for e in bundle["entry"]
        }
        text = json.dumps([e["resource"] for e in bundle["entry"]])
        text = _URN_UUID.sub(partial(_relative, ids), text)
        out.extend(json.loads(text))
    return out


@pytest.fixture(scope="module")
def synthea(synthea_dir: Path) -> list[dict[str, Any]]:
    return _resources(synthea_dir)


_COLUMN_TYPES = {
    "string": (str, int, str, str),
    "date": (str, int, int, int),
}


def test_synthea_resources_index_with_well_formed_rows(
    indexer: Indexer, synthea: list[dict[str, Any]]
) -> None:
    for resource in synthea:
        e = indexer.extract(resource)
        for table in ("string", "token", "date", "number", "quantity", "reference", "uri"):
            for row in getattr(e, table):
                assert isinstance(row[0], str) and isinstance(row[1], int)
        for row in e.date:
            assert MIN_US <= row[2] <= row[3] <= MAX_US
        for row in e.number + [r[:2] + r[5:] for r in e.quantity]:
            assert row[3] <= row[2] <= row[4]
        assert all(r[2] or r[4] for r in e.reference)
        assert all(r[2] or r[3] or r[4] for r in e.token)


def test_synthea_clinical_resources_land_in_their_patient_compartment(
    indexer: Indexer, synthea: list[dict[str, Any]]
) -> None:
    patients = {r["id"] for r in synthea if r["resourceType"] == "Patient"}
    compartment_types = definitions.patient_compartment()
    for resource in synthea:
        rtype = resource["resourceType"]
        subject = (resource.get("subject") or resource.get("patient") or {}).get("reference", "")
        if rtype in compartment_types and subject.startswith("Patient/"):
            comps = indexer.extract(resource).compartments
            assert comps and all(c[0] == "Patient" and c[1] in patients for c in comps), (rtype, comps)


# Element names that the R4 search expressions and the extractor read, to reach deep paths.
_FIELD_NAMES = [
    "coding",
    "system",
    "code",
    "display",
    "text",
    "value",
    "unit",
    "currency",
    "reference",
    "identifier",
    "type",
    "start",
    "end",
    "low",
    "high",
    "event",
    "repeat",
    "boundsPeriod",
    "family",
    "given",
    "line",
    "city",
    "resourceType",
    "id",
    "valueQuantity",
    "valueCodeableConcept",
    "valueRange",
    "chromosome",
]

_json = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=12),
    lambda children: (
        st.lists(children, max_size=3) | st.dictionaries(st.sampled_from(_FIELD_NAMES), children, max_size=4)
    ),
    max_leaves=12,
)


_FUZZ_INDEXER = Indexer()


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.sampled_from(
        ["Patient", "Observation", "Encounter", "Claim", "MolecularSequence", "ValueSet", "Invoice"]
    ),
    st.data(),
)
def test_extract_never_fails_on_malformed_json(rtype: str, data: st.DataObject) -> None:
    keys = sorted(TYPES[rtype])
    resource = {"resourceType": rtype, **data.draw(st.dictionaries(st.sampled_from(keys), _json, max_size=6))}
    e = _FUZZ_INDEXER.extract(resource)
    for table in ("string", "token", "date", "number", "quantity", "reference", "uri", "compartments"):
        for row in getattr(e, table):
            assert all(x is None or isinstance(x, (str, int, float)) for x in row), (table, row)
