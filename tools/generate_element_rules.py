"""Generate medcloud/fhir/_element_rules.py: the min-cardinality and choice rules the R4 JSON schema lacks.

Run: python tools/generate_element_rules.py   (needs the dev extra: fhirclient 4.x, FHIR 4.0.1 models)

The official fhir.schema.json lists a ``required`` array only for complex-typed elements: a required
primitive (Observation.status, Bundle.type) may legally appear as ``_status`` alone, which a plain
``required`` cannot say, and choice elements (``value[x]``) are flattened into independent optional
keys. fhirclient's models are generated from the R4 StructureDefinitions and keep both facts
(``not_optional`` and ``of_many`` in ``elementProperties()``), so we pair each fhirclient class with
the schema definition it corresponds to (walking both from every resource type) and write:

- REQUIRED: definition -> tuple of alternatives per min>=1 element the schema does not already require;
  one alternative set is ("status", "_status") or, for a required choice, every key of the choice.
- CHOICES: definition -> choice name -> JSON keys of that choice.
- CHOICE_LOOKALIKES: plain elements named like another choice's variants (see below).
- NOT_R4: definition -> schema keys with no R4 element behind them. The schema we ship comes from
  Medplum's packaging and adds Meta.project/author/account/compartment, OperationOutcome.status/resource,
  Reference.resource, some R5 elements, and modifierExtension on datatype parts that are plain Elements.
"""

from __future__ import annotations

import gzip
import importlib
import json
import pprint
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SCHEMA = ROOT / "medcloud" / "fhir" / "_spec" / "fhir.schema.json.gz"
TYPES = ROOT / "medcloud" / "fhir" / "_spec" / "resource_types.json"
OUT = ROOT / "medcloud" / "fhir" / "_element_rules.py"


def _ref(prop: dict) -> str | None:
    ref = prop.get("$ref") or prop.get("items", {}).get("$ref")
    return ref.rsplit("/", 1)[-1] if ref else None


def _is_complex(typ: object) -> bool:
    return hasattr(typ, "elementProperties") and not getattr(typ, "__module__", "").endswith(
        ("fhirdate", "fhirdatetime", "fhirinstant", "fhirtime")
    )


def main() -> None:
    from fhirclient.models.fhirabstractbase import FHIRAbstractBase

    defs = json.loads(gzip.decompress(SCHEMA.read_bytes()))["definitions"]
    resource_types = json.loads(TYPES.read_text())["resource_types"]
    pairs: dict[str, type] = {}
    todo: list[tuple[str, type]] = []
    for rt in resource_types:
        todo.append((rt, getattr(importlib.import_module(f"fhirclient.models.{rt.lower()}"), rt)))
    while todo:
        name, cls = todo.pop()
        if name in pairs or name == "ResourceList":
            continue
        pairs[name] = cls
        props = defs[name]["properties"]
        for _, jsname, typ, _, _, _ in cls().elementProperties():
            if jsname not in props:
                raise SystemExit(f"{name}.{jsname}: in fhirclient, not in the schema")
            target = _ref(props[jsname])
            if _is_complex(typ) and target and issubclass(typ, FHIRAbstractBase):
                todo.append((target, typ))

    not_r4: dict[str, tuple[str, ...]] = {}
    for name, cls in sorted(pairs.items()):
        known = {p[1] for p in cls().elementProperties()} | {"resourceType"}
        extra = tuple(k for k in defs[name]["properties"] if k.removeprefix("_") not in known)
        if extra:
            not_r4[name] = extra

    required: dict[str, tuple[tuple[str, ...], ...]] = {}
    choices: dict[str, dict[str, tuple[str, ...]]] = {}
    for name, cls in sorted(pairs.items()):
        schema_required = set(defs[name].get("required", ()))
        groups: dict[str, list[str]] = {}
        req: list[tuple[str, ...]] = []
        for _, jsname, typ, _, of_many, not_optional in cls().elementProperties():
            if of_many:
                groups.setdefault(of_many, []).append(jsname)
            elif not_optional and jsname not in schema_required:
                req.append((jsname, f"_{jsname}") if not _is_complex(typ) else (jsname,))
        for of_many, keys in groups.items():
            if any(ne for _, js, _, _, om, ne in cls().elementProperties() if om == of_many):
                keys_with_ext = [k2 for k in keys for k2 in (k, f"_{k}") if k2 in defs[name]["properties"]]
                req.append(tuple(keys_with_ext))
        if req:
            required[name] = tuple(req)
        if groups:
            choices[name] = {g: tuple(ks) for g, ks in groups.items()}

    # Keys that are a choice variant somewhere but a plain single element next to a same-named
    # "variant" elsewhere (R4: ClinicalImpression.finding.itemCodeableConcept / itemReference). The
    # validator's key-name choice check skips these; the schema checks their real choices instead.
    group_of = {k: g for groups in choices.values() for g, ks in groups.items() for k in ks}
    lookalikes: set[str] = set()
    for cls in pairs.values():
        plain = [
            js
            for _, js, _, is_list, of_many, _ in cls().elementProperties()
            if not of_many and not is_list and js in group_of
        ]
        for key in plain:
            if any(group_of[other] == group_of[key] for other in plain if other != key):
                lookalikes.add(key)

    body = [
        "# generated by tools/generate_element_rules.py from fhirclient's FHIR 4.0.1 models; do not edit",
        '"""FHIR R4 min-cardinality, choice and element-set rules that fhir.schema.json does not express."""',
        "",
        "REQUIRED: dict[str, tuple[tuple[str, ...], ...]] = "
        + pprint.pformat(required, width=110, compact=True),
        "",
        "CHOICES: dict[str, dict[str, tuple[str, ...]]] = "
        + pprint.pformat(choices, width=110, compact=True),
        "",
        "NOT_R4: dict[str, tuple[str, ...]] = " + pprint.pformat(not_r4, width=110, compact=True),
        "",
        "CHOICE_LOOKALIKES: frozenset[str] = "
        + pprint.pformat(frozenset(lookalikes), width=110, compact=True),
        "",
    ]
    OUT.write_text("\n".join(body))


if __name__ == "__main__":
    main()
