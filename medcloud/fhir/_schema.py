"""The FHIR R4 JSON schema, tightened, and its compiled validators (used by medcloud.fhir.validation).

The official schema (https://hl7.org/fhir/R4/json.html#schema) is the base; ``definitions`` lists
what it lacks and how each gap is closed. FHIR-specific primitive rules are JSON-schema ``format``
checks so that fastjsonschema (the accept path) and jsonschema (every error, with paths) share them.
"""

from __future__ import annotations

import binascii
import calendar
import contextvars
import gzip
import json
import re
from collections.abc import Callable
from functools import cache
from importlib import resources as pkg_resources
from typing import Any

import fastjsonschema
import jsonschema

from medcloud.fhir._element_rules import CHOICE_LOOKALIKES, CHOICES, NOT_R4, REQUIRED
from medcloud.fhir.definitions import resource_types

# -- primitive formats (https://hl7.org/fhir/R4/datatypes.html#primitive) ----------------------------

_YEAR = r"([0-9]([0-9]([0-9][1-9]|[1-9]0)|[1-9]00)|[1-9]000)"
_TZ = r"(Z|(\+|-)((0[0-9]|1[0-3]):[0-5][0-9]|14:00))"
_TIME = r"([01][0-9]|2[0-3]):[0-5][0-9]:([0-5][0-9]|60)(\.[0-9]+)?"
_DATE_RE = re.compile(rf"{_YEAR}(-(0[1-9]|1[0-2])(-(0[1-9]|[1-2][0-9]|3[0-1]))?)?\Z")
_DATETIME_RE = re.compile(rf"{_YEAR}(-(0[1-9]|1[0-2])(-(0[1-9]|[1-2][0-9]|3[0-1])(T{_TIME}{_TZ})?)?)?\Z")
_INSTANT_RE = re.compile(rf"{_YEAR}-(0[1-9]|1[0-2])-(0[1-9]|[1-2][0-9]|3[0-1])T{_TIME}{_TZ}\Z")
_TIME_RE = re.compile(rf"{_TIME}\Z")
_ID_RE = re.compile(r"[A-Za-z0-9\-.]{1,64}\Z")
_UUID_RE = re.compile(
    r"urn:uuid:[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}\Z"
)
_OID_RE = re.compile(r"urn:oid:[0-2](\.(0|[1-9][0-9]*))+\Z")
_ABSOLUTE_RE = re.compile(r"https?://[^\s/?#]+[^\s]*\Z")


def _real_calendar_date(value: str) -> bool:
    if len(value) < 10:
        return True  # year or year-month: the regex is enough
    year, month, day = int(value[0:4]), int(value[5:7]), int(value[8:10])
    return day <= calendar.monthrange(year, month)[1]


def _is_date(value: str) -> bool:
    return _DATE_RE.match(value) is not None and _real_calendar_date(value)


def _is_datetime(value: str) -> bool:
    return _DATETIME_RE.match(value) is not None and _real_calendar_date(value)


def _is_instant(value: str) -> bool:
    return _INSTANT_RE.match(value) is not None and _real_calendar_date(value)


def _is_time(value: str) -> bool:
    return _TIME_RE.match(value) is not None


def _is_base64(value: str) -> bool:
    try:
        binascii.a2b_base64("".join(value.split()), strict_mode=True)
    except (binascii.Error, ValueError):
        return False
    return bool(value.strip())


def _is_xhtml(value: str) -> bool:
    # Narrative.div must be a single <div> element (https://hl7.org/fhir/R4/narrative.html#xhtml).
    return value.lstrip().startswith("<div") and value.rstrip().endswith(">")


# Ids of the contained resources that ``#id`` references in the resource being checked may point to.
CONTAINED_IDS: contextvars.ContextVar[frozenset[str]] = contextvars.ContextVar("CONTAINED_IDS")


def reference_problem(value: str) -> str | None:
    """Why ``value`` is not a valid ``Reference.reference`` (https://hl7.org/fhir/R4/references.html)."""
    if value.startswith("#"):
        if value == "#" or value[1:] in CONTAINED_IDS.get(frozenset()):
            return None
        return f"no contained resource has id '{value[1:]}'"
    if value.startswith(("urn:uuid:", "urn:oid:")):
        if _UUID_RE.match(value) or _OID_RE.match(value):
            return None
        return "not a valid urn:uuid: or urn:oid: reference"
    if value.startswith(("http://", "https://")):
        return None if _ABSOLUTE_RE.match(value) else "not a valid absolute URL"
    type_, _, rest = value.partition("/")
    if type_ not in resource_type_set():
        return (
            f"'{type_}' is not a FHIR R4 resource type"
            if rest
            else "expected Type/id, an absolute URL or #id"
        )
    id_, _, history = rest.partition("/")
    if not _ID_RE.match(id_):
        return f"'{id_}' is not a valid resource id"
    if history:
        marker, _, vid = history.partition("/")
        if marker != "_history" or not _ID_RE.match(vid):
            return "expected Type/id or Type/id/_history/vid"
    return None


def _is_reference(value: str) -> bool:
    return reference_problem(value) is None


_FORMATS: dict[str, Callable[[str], bool]] = {
    "fhir-date": _is_date,
    "fhir-dateTime": _is_datetime,
    "fhir-instant": _is_instant,
    "fhir-time": _is_time,
    "fhir-base64Binary": _is_base64,
    "fhir-xhtml": _is_xhtml,
    "fhir-reference": _is_reference,
}

_INT32 = {"type": "integer", "minimum": -(2**31), "maximum": 2**31 - 1}
_PRIMITIVES: dict[str, dict[str, Any]] = {
    "boolean": {"type": "boolean"},
    "integer": _INT32,
    "positiveInt": {**_INT32, "minimum": 1},
    "unsignedInt": {**_INT32, "minimum": 0},
    "decimal": {"type": "number"},
    "string": {"type": "string", "pattern": r"^[ \r\n\t\S]+\Z"},
    "markdown": {"type": "string", "pattern": r"^[ \r\n\t\S]+\Z"},
    "uri": {"type": "string", "pattern": r"^\S+\Z"},
    "url": {"type": "string", "pattern": r"^\S+\Z"},
    "canonical": {"type": "string", "pattern": r"^\S+\Z"},
    "code": {"type": "string", "pattern": r"^[^\s]+(\s[^\s]+)*\Z"},
    "id": {"type": "string", "pattern": r"^[A-Za-z0-9\-.]{1,64}\Z"},
    "oid": {"type": "string", "pattern": r"^urn:oid:[0-2](\.(0|[1-9][0-9]*))+\Z"},
    "uuid": {
        "type": "string",
        "pattern": r"^urn:uuid:[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}\Z",
    },
    "date": {"type": "string", "format": "fhir-date"},
    "dateTime": {"type": "string", "format": "fhir-dateTime"},
    "instant": {"type": "string", "format": "fhir-instant"},
    "time": {"type": "string", "format": "fhir-time"},
    "base64Binary": {"type": "string", "format": "fhir-base64Binary"},
    "xhtml": {"type": "string", "format": "fhir-xhtml"},
}


@cache
def resource_type_set() -> frozenset[str]:
    return frozenset(resource_types())


@cache
def choice_groups() -> dict[str, str]:
    """JSON key of a choice variant (``valueQuantity``) -> its choice element (``value``).

    One map for all types, so the validator's pre-pass need not know where it is. That is exact because choice
    elements never repeat (array-valued lookalikes such as DeviceDefinition.property.valueQuantity are
    skipped by value) and the one non-array clash, ClinicalImpression.finding.itemCodeableConcept /
    itemReference, is left to the schema (CHOICE_LOOKALIKES); tests check both facts.
    """
    return {
        key: group
        for groups in CHOICES.values()
        for group, keys in groups.items()
        for key in keys
        if key not in CHOICE_LOOKALIKES
    }


@cache
def choice_keys() -> frozenset[str]:
    return frozenset(choice_groups()) | frozenset(f"_{key}" for key in choice_groups())


@cache
def definitions() -> dict[str, Any]:
    """The R4 schema's definitions, tightened to what FHIR JSON requires.

    The schema as published: sets ``additionalProperties: false`` and lists required complex elements,
    but has no ``"type": "object"`` on complex types (so a string passes as a CodeableConcept), no
    minItems/minProperties (empty arrays and objects pass), ``type: number`` for integers, no required
    primitives or choices, Medplum's non-R4 additions (``NOT_R4``: Meta.project...), a broken
    unsignedInt regex, ``$``-anchored patterns that accept a trailing newline, and regexes only for
    dates (2023-02-30 passes).
    """
    raw = json.loads(
        gzip.decompress((pkg_resources.files("medcloud.fhir") / "_spec" / "fhir.schema.json.gz").read_bytes())
    )["definitions"]
    by_signature = {
        (d.get("type"), d.get("pattern")): name
        for name, d in raw.items()
        if name in _PRIMITIVES and "pattern" in d and name not in ("markdown", "url", "canonical")
    }
    by_signature[("string", r"^(\s*([0-9a-zA-Z\+/=]){4}\s*)+$")] = "base64Binary"
    complex_types = {name for name, d in raw.items() if "properties" in d}
    defs: dict[str, Any] = {name: {**schema, "x-fhir-type": name} for name, schema in _PRIMITIVES.items()}
    for name in complex_types:
        props: dict[str, Any] = {}
        not_r4 = NOT_R4.get(name, ())
        for key, prop in raw[name]["properties"].items():
            if key not in not_r4:
                props[key] = _tighten(name, key, prop, by_signature, complex_types)
        definition: dict[str, Any] = {
            "type": "object",
            "minProperties": 1,
            "properties": props,
            "additionalProperties": False,
        }
        if raw[name].get("required"):
            definition["required"] = raw[name]["required"]
        rules: list[dict[str, Any]] = [
            {
                "anyOf": [{"required": [key]} for key in alternatives],
                "x-fhir-required": _element_name(name, alternatives),
            }
            for alternatives in REQUIRED.get(name, ())
        ]
        for group, keys in CHOICES.get(name, {}).items():
            rules += [
                {"not": {"required": [a, b]}, "x-fhir-choice": group}
                for a in keys
                for b in keys
                if a < b and CHOICE_LOOKALIKES & {a, b}
            ]
        if rules:
            definition["allOf"] = rules
        defs[name] = definition
    return defs


def _tighten(
    owner: str,
    key: str,
    prop: dict[str, Any],
    by_signature: dict[tuple[Any, Any], str],
    complex_types: set[str],
) -> dict[str, Any]:
    if prop.get("items", prop).get("$ref") == "#/definitions/ResourceList":
        # Any resource: validated separately against its own type (validation._nested_resources).
        return (
            {"type": "array", "minItems": 1, "items": {"type": "object"}}
            if "items" in prop
            else {"type": "object"}
        )
    if owner == "Reference" and key == "reference":
        return {"type": "string", "format": "fhir-reference"}
    is_array = prop.get("type") == "array"
    item = prop["items"] if is_array else prop
    item = {k: v for k, v in item.items() if k != "description"}
    if "const" in item:  # resourceType; fastjsonschema 2.22 cannot compile const without detailed exceptions
        return {"enum": [item["const"]]}
    if "enum" in item:  # required bindings inlined as enums; without a type, ["male"] reads as a bad code
        item = {"type": "string", "enum": item["enum"]}
    elif "$ref" not in item:
        item = {"$ref": f"#/definitions/{by_signature[(item.get('type'), item.get('pattern'))]}"}
    if not is_array:
        return item
    target = item.get("$ref", "").rsplit("/", 1)[-1]
    if key.startswith("_") or target not in complex_types:
        # FHIR JSON aligns primitive arrays with their _extension arrays using nulls
        # (https://hl7.org/fhir/R4/json.html#primitive); validation._check_nulls checks the pairing.
        item = {"anyOf": [item, {"type": "null"}], "x-fhir-nullable": True}
    return {"type": "array", "minItems": 1, "items": item}


def _element_name(owner: str, alternatives: tuple[str, ...]) -> str:
    for group, keys in CHOICES.get(owner, {}).items():
        if alternatives[0] in keys:
            return f"{group}[x]"
    return alternatives[0]


@cache
def fast_validator(rtype: str) -> Callable[[Any], Any]:
    schema = {
        "$schema": "http://json-schema.org/draft-06/schema#",
        "definitions": definitions(),
        "$ref": f"#/definitions/{rtype}",
    }
    try:
        return _compile_without_paths(schema)
    except Exception:  # fastjsonschema internals moved: fall back to the public (slower) compile
        return fastjsonschema.compile(schema, formats=_FORMATS, use_default=False, detailed_exceptions=False)


# fastjsonschema builds each child's path string ("data.name[0].given") before descending, even when
# nothing fails; that is over half its time on FHIR resources. Failures are re-run through jsonschema
# for paths and messages anyway, so the accept path passes None and raises a bare exception; the
# shorter source also compiles ~40 % faster (first use of a type: 0.1-0.3 s).
_PATH_ARGUMENT = re.compile(r', \(name_prefix or "data"\) \+ "[^"\n]*"(?:\.format\(\*\*locals\(\)\))?\)')
_RAISE = re.compile(r"raise JsonSchemaValueException\(.*\)$", re.MULTILINE)


def _compile_without_paths(schema: dict[str, Any]) -> Callable[[Any], Any]:
    resolver, generator = fastjsonschema._factory(schema, {}, _FORMATS, False, True, False, True)
    state = generator.global_state
    source = _RAISE.sub(
        'raise JsonSchemaValueException("rejected")', _PATH_ARGUMENT.sub(", None)", generator.func_code)
    )
    exec(source, state)  # noqa: S102 - code generated from our own schema
    function = state[resolver.get_scope_name()]
    return lambda data: function(data, custom_formats=_FORMATS)


@cache
def full_validator(rtype: str) -> jsonschema.Draft6Validator:
    checker = jsonschema.FormatChecker(formats=())
    for name, check in _FORMATS.items():
        checker.checks(name)(lambda value, check=check: not isinstance(value, str) or check(value))
    return jsonschema.Draft6Validator(
        {"definitions": definitions(), "$ref": f"#/definitions/{rtype}"}, format_checker=checker
    )
