"""Validate FHIR R4 resources on write: structure, cardinality, primitive formats, references.

The official R4 JSON schema (https://hl7.org/fhir/R4/json.html#schema) does most of the work once it
is tightened (see ``medcloud.fhir._schema.definitions``). Each resource type gets a fastjsonschema validator, compiled on
first use, as the accept path; only when it rejects do we run ``jsonschema``, which reports every error
with its path. A pre-pass over the raw JSON handles what a schema cannot say: nesting depth, FHIR's
null rules for primitive arrays, and "only one of value[x]". Nested resources (contained,
Bundle.entry.resource, Parameters.parameter.resource) are validated against their own type.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from typing import Any

import fastjsonschema
from jsonschema.exceptions import ValidationError, best_match

from medcloud.errors import Issue, Unprocessable
from medcloud.fhir._schema import (
    CONTAINED_IDS,
    choice_groups,
    choice_keys,
    fast_validator,
    full_validator,
    reference_problem,
    resource_type_set,
)

__all__ = ["MAX_DEPTH", "check_resource", "validate_resource"]

MAX_DEPTH = 100  # JSON nesting levels; deeper input is refused before any schema runs

_Path = tuple[str | int, ...]

# -- public API ---------------------------------------------------------------------------------------


def validate_resource(resource: object, *, expected_type: str | None = None) -> list[Issue]:
    """All problems of ``resource`` as a FHIR R4 resource (empty list: valid). Never raises.

    Each Issue's expression is a FHIRPath-style location (``Patient.name[0].given[1]``); codes follow
    OperationOutcome: structure, required, value, code-invalid, invalid.
    """
    if type(resource) is dict and _accept(resource, expected_type):
        return []
    return _detailed(resource, expected_type)


def check_resource(resource: object, *, expected_type: str | None = None) -> None:
    """Raise :class:`Unprocessable` (HTTP 422 + OperationOutcome) unless ``resource`` is valid FHIR R4."""
    issues = validate_resource(resource, expected_type=expected_type)
    errors = [i for i in issues if i.severity in ("error", "fatal")]
    if errors:
        first = errors[0]
        where = f" at {first.expression[0]}" if first.expression else ""
        more = f" (and {len(errors) - 1} more)" if len(errors) > 1 else ""
        raise Unprocessable(f"Invalid resource: {first.diagnostics}{where}{more}", issues=issues)


def _detailed(resource: object, expected_type: str | None) -> list[Issue]:
    root = expected_type if expected_type in resource_type_set() else "Resource"
    if not isinstance(resource, dict):
        return [
            Issue(
                f"A resource must be a JSON object, not {_json_type(resource)}",
                "structure",
                "error",
                (root,) if expected_type else (),
            )
        ]
    rtype = resource.get("resourceType")
    if isinstance(rtype, str) and rtype in resource_type_set():
        root = rtype
    issues: list[Issue] = []
    if not _prepass(resource, root, issues):
        return issues
    _validate_one(resource, (), root, expected_type, frozenset(), False, issues)
    seen: set[tuple[str, ...]] = set()
    unique = []
    for issue in issues:  # the pre-pass and the schema may both flag a null; keep the first word
        if issue.expression not in seen or not issue.expression:
            seen.add(issue.expression)
            unique.append(issue)
    return unique


# -- the accept path: no paths, no issue objects, stop at the first doubt -----------------------------


def _accept(resource: dict[str, Any], expected_type: str | None) -> bool:
    rtype = resource.get("resourceType")
    if type(rtype) is not str or (expected_type is not None and rtype != expected_type):
        return False
    return _plain_json(resource, 0, choice_keys()) and _schema_accepts(resource, rtype, frozenset(), False)


def _plain_json(node: dict[str, Any] | list[Any], depth: int, variants: frozenset[str]) -> bool:
    """JSON types only, no null, finite numbers, at most one key per choice element, depth <= MAX_DEPTH."""
    if depth >= MAX_DEPTH:
        return False
    choices = 0
    values: Any = node
    if type(node) is dict:
        values = node.values()
        for key, value in node.items():
            if key in variants and type(value) is not list:  # [x] never repeats; see choice_groups
                choices += 1
        if choices > 1 and not _single_choices(node):
            return False
    for value in values:
        kind = type(value)
        if kind is str or kind is int or kind is bool:
            continue
        if kind is dict or kind is list:
            if not _plain_json(value, depth + 1, variants):
                return False
        elif kind is not float or not math.isfinite(value):
            return False  # null (legal only when paired with an extension), NaN, or not JSON
    return True


def _single_choices(node: dict[str, Any]) -> bool:
    choice_of = choice_groups()
    chosen = {
        key.lstrip("_")
        for key, value in node.items()
        if (key in choice_of or key[1:] in choice_of) and type(value) is not list
    }
    return len({choice_of[key] for key in chosen}) == len(chosen)


def _schema_accepts(
    resource: dict[str, Any], rtype: str, contained_ids: frozenset[str], in_contained: bool
) -> bool:
    if rtype not in resource_type_set():
        return False
    own_ids = _contained_ids(resource)
    token = CONTAINED_IDS.set(contained_ids if in_contained else own_ids)
    try:
        fast_validator(rtype)(resource)
    except fastjsonschema.JsonSchemaValueException:
        return False
    finally:
        CONTAINED_IDS.reset(token)
    if in_contained and ("contained" in resource or _has_version_meta(resource)):
        return False
    for _, sub, contained in _nested_resources(resource, rtype):
        sub_type = sub.get("resourceType")
        if type(sub_type) is not str or not _schema_accepts(sub, sub_type, own_ids, contained):
            return False
    return True


def _has_version_meta(resource: dict[str, Any]) -> bool:
    meta = resource.get("meta")
    return isinstance(meta, dict) and ("versionId" in meta or "lastUpdated" in meta)


# -- one resource, every issue -------------------------------------------------------------------------


def _validate_one(
    resource: dict[str, Any],
    path: _Path,
    root: str,
    expected_type: str | None,
    contained_ids: frozenset[str],
    in_contained: bool,
    issues: list[Issue],
) -> None:
    rtype = resource.get("resourceType")
    if "resourceType" not in resource:
        issues.append(_issue("resourceType is missing", "required", root, path + ("resourceType",)))
        return
    if not isinstance(rtype, str) or rtype not in resource_type_set():
        issues.append(
            _issue(
                f"Unknown resource type {rtype!r} (not a FHIR R4 resource type)",
                "value",
                root,
                path + ("resourceType",),
            )
        )
        return
    if expected_type is not None and rtype != expected_type:
        issues.append(
            _issue(
                f"Expected a {expected_type} resource, got {rtype}", "invalid", root, path + ("resourceType",)
            )
        )
        return
    own_ids = _contained_ids(resource)
    token = CONTAINED_IDS.set(contained_ids if in_contained else own_ids)
    try:
        try:
            fast_validator(rtype)(resource)
        except fastjsonschema.JsonSchemaValueException as fast_error:
            found = [
                i for e in full_validator(rtype).iter_errors(resource) for i in _to_issues(e, root, path)
            ]
            # Both validators read the same schema; a disagreement is our bug, but still a rejection.
            issues.extend(
                found or [_issue(f"Schema check failed: {fast_error.message}", "invalid", root, path)]
            )
    finally:
        CONTAINED_IDS.reset(token)
    if in_contained:
        meta = resource.get("meta")
        for key in ("versionId", "lastUpdated"):
            if isinstance(meta, dict) and key in meta:
                issues.append(
                    _issue(
                        f"A contained resource must not have meta.{key}",
                        "invalid",
                        root,
                        path + ("meta", key),
                    )
                )
        if "contained" in resource:
            issues.append(
                _issue(
                    "A contained resource must not contain resources", "invalid", root, path + ("contained",)
                )
            )
    for sub_path, sub, contained in _nested_resources(resource, rtype):
        _validate_one(
            sub, path + sub_path, root, None, own_ids if contained else frozenset(), contained, issues
        )


def _contained_ids(resource: dict[str, Any]) -> frozenset[str]:
    contained = resource.get("contained")
    if not isinstance(contained, list):
        return frozenset()
    return frozenset(c["id"] for c in contained if isinstance(c, dict) and isinstance(c.get("id"), str))


def _nested_resources(resource: dict[str, Any], rtype: str) -> Iterator[tuple[_Path, dict[str, Any], bool]]:
    """(relative path, resource, is-contained) for every resource directly inside ``resource``.

    These are the places where the R4 schema refers to ``ResourceList``.
    """
    contained = resource.get("contained")
    if isinstance(contained, list):
        for i, item in enumerate(contained):
            if isinstance(item, dict):
                yield ("contained", i), item, True
    if rtype == "Bundle":
        for i, entry in _items(resource.get("entry")):
            if isinstance(entry.get("resource"), dict):
                yield ("entry", i, "resource"), entry["resource"], False
            response = entry.get("response")
            if isinstance(response, dict) and isinstance(response.get("outcome"), dict):
                yield ("entry", i, "response", "outcome"), response["outcome"], False
    elif rtype == "Parameters":
        stack: list[tuple[_Path, Any]] = [(("parameter",), resource.get("parameter"))]
        while stack:
            where, parameters = stack.pop()
            for i, parameter in _items(parameters):
                if isinstance(parameter.get("resource"), dict):
                    yield where + (i, "resource"), parameter["resource"], False
                stack.append((where + (i, "part"), parameter.get("part")))


def _items(value: Any) -> Iterator[tuple[int, dict[str, Any]]]:
    if isinstance(value, list):
        for i, item in enumerate(value):
            if isinstance(item, dict):
                yield i, item


# -- the pre-pass: what JSON schema cannot say ---------------------------------------------------------


def _prepass(resource: dict[str, Any], root: str, issues: list[Issue]) -> bool:
    """Check depth, JSON types, nulls and choices over the whole tree; False when too broken to go on."""
    stack: list[tuple[Any, _Path]] = [(resource, ())]
    choice_of = choice_groups()
    ok = True
    while stack:
        node, path = stack.pop()
        if len(path) >= MAX_DEPTH:
            issues.append(
                _issue(f"Nesting deeper than {MAX_DEPTH} levels", "structure", root, path[:MAX_DEPTH])
            )
            return False
        if type(node) is dict:
            chosen: dict[str, str] = {}
            for key, value in node.items():
                if type(key) is not str:
                    issues.append(
                        _issue(f"Object keys must be strings, not {key!r}", "structure", root, path)
                    )
                    ok = False
                    continue
                base = key[1:] if key[:1] == "_" else key
                group = choice_of.get(base)
                if group is not None and type(value) is not list:
                    other = chosen.setdefault(group, base)
                    if other != base:
                        issues.append(
                            _issue(
                                f"Only one of {group}[x] may be present ({other}, {base})",
                                "invalid",
                                root,
                                path + (key,),
                            )
                        )
                if value is None:
                    issues.append(
                        _issue(
                            "null is not allowed here (FHIR JSON has no empty values)",
                            "structure",
                            root,
                            path + (key,),
                        )
                    )
                elif type(value) is list:
                    _check_nulls(node, key, value, root, path, issues)
                    stack.append((value, path + (key,)))
                elif type(value) is dict:
                    stack.append((value, path + (key,)))
                elif not _scalar_ok(value, root, path + (key,), issues):
                    ok = False
        elif type(node) is list:
            for i, value in enumerate(node):
                if type(value) is dict or type(value) is list:
                    stack.append((value, path + (i,)))
                elif value is not None and not _scalar_ok(value, root, path + (i,), issues):
                    ok = False
    return ok


def _scalar_ok(value: Any, root: str, path: _Path, issues: list[Issue]) -> bool:
    kind = type(value)
    if kind is str or kind is bool or kind is int:
        return True
    if kind is float:
        if not math.isfinite(value):
            issues.append(_issue(f"{value} is not a valid decimal", "value", root, path))
        return True
    issues.append(_issue(f"{kind.__name__} is not a JSON value", "structure", root, path))
    return False


def _check_nulls(
    node: dict[str, Any], key: str, values: list[Any], root: str, path: _Path, issues: list[Issue]
) -> None:
    """``given: ["a", null]`` needs ``_given: [null, {...}]`` of the same length, and vice versa."""
    if None not in values and not key.startswith("_"):
        return
    partner_key = key[1:] if key.startswith("_") else f"_{key}"
    partner = node.get(partner_key)
    if type(partner) is list and len(partner) != len(values):
        if key.startswith("_"):
            issues.append(
                _issue(f"{key} must have as many entries as {partner_key}", "structure", root, path + (key,))
            )
        return
    for i, value in enumerate(values):
        if value is None and (type(partner) is not list or partner[i] is None):
            what = "a value" if key.startswith("_") else "an extension"
            issues.append(
                _issue(
                    f"null in {key} must be matched by {what} in {partner_key}",
                    "structure",
                    root,
                    path + (key, i),
                )
            )


# -- jsonschema errors -> issues -------------------------------------------------------------------------

_FORMAT_WORDS = {
    "fhir-date": "date",
    "fhir-dateTime": "dateTime",
    "fhir-instant": "instant",
    "fhir-time": "time",
    "fhir-base64Binary": "base64Binary",
    "fhir-xhtml": "xhtml (a single <div> element)",
}


def _to_issues(error: ValidationError, root: str, prefix: _Path) -> Iterator[Issue]:
    path = prefix + tuple(error.absolute_path)
    kind, instance, schema = error.validator, error.instance, error.schema
    if not isinstance(schema, dict):
        schema = {}
    if kind == "additionalProperties":
        for key in sorted(k for k in instance if k not in schema.get("properties", {})):
            yield _issue(f"Unknown element '{key}'", "structure", root, path + (key,))
    elif kind == "required":
        for key in error.validator_value:
            if key not in instance:
                yield _issue(f"Missing required element '{key}'", "required", root, path + (key,))
    elif kind == "anyOf" and "x-fhir-required" in schema:
        name = schema["x-fhir-required"]
        yield _issue(
            f"Missing required element '{name}'", "required", root, path + (name.removesuffix("[x]"),)
        )
    elif kind == "not" and "x-fhir-choice" in schema:
        a, b = error.validator_value["required"]
        yield _issue(
            f"Only one of {schema['x-fhir-choice']}[x] may be present ({a}, {b})",
            "invalid",
            root,
            path + (b,),
        )
    elif kind == "anyOf" and error.context:
        yield from _to_issues(best_match(error.context), root, prefix)
    elif kind == "type":
        yield _issue(
            f"Expected {error.validator_value}, found {_json_type(instance)}", "structure", root, path
        )
    elif kind == "minItems":
        yield _issue("Arrays must not be empty", "structure", root, path)
    elif kind == "minProperties":
        yield _issue("Objects must not be empty", "structure", root, path)
    elif kind == "format" and error.validator_value == "fhir-reference":
        yield _issue(f"Invalid reference {instance!r}: {reference_problem(instance)}", "value", root, path)
    elif kind == "format":
        word = _FORMAT_WORDS.get(error.validator_value, error.validator_value)
        yield _issue(f"{_short(instance)} is not a valid {word}", "value", root, path)
    elif kind in ("pattern", "minimum", "maximum"):
        word = schema.get("x-fhir-type", "value")
        yield _issue(f"{_short(instance)} is not a valid {word}", "value", root, path)
    elif kind in ("enum", "const"):
        yield _issue(f"{_short(instance)} is not one of the allowed codes", "code-invalid", root, path)
    else:
        yield _issue(error.message, "invalid", root, path)


def _issue(diagnostics: str, code: str, root: str, path: _Path) -> Issue:
    return Issue(diagnostics, code, "error", (_expression(root, path),))


def _expression(root: str, path: _Path) -> str:
    return root + "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in path)


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def _json_type(value: Any) -> str:
    if value is None:
        return "null"
    return {
        bool: "boolean",
        int: "number",
        float: "number",
        str: "string",
        list: "array",
        dict: "object",
    }.get(type(value), type(value).__name__)


COMMON_TYPES = (
    "Patient", "Observation", "Encounter", "Condition", "Procedure", "MedicationRequest", "Immunization",
    "DiagnosticReport", "DocumentReference", "Claim", "ExplanationOfBenefit", "CarePlan", "CareTeam",
    "AllergyIntolerance", "Practitioner", "PractitionerRole", "Organization", "Location", "Provenance",
    "Device", "ImagingStudy", "Medication", "MedicationAdministration", "SupplyDelivery", "Goal", "Bundle",
)


def warm(types: tuple[str, ...] = COMMON_TYPES) -> None:
    """Compile the validators of ``types`` now (0.1-0.5 s each) instead of on the first write."""
    from medcloud.fhir._schema import fast_validator

    for t in types:
        fast_validator(t)
