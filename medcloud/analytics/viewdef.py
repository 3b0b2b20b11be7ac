"""Parse and validate a SQL-on-FHIR v2 ViewDefinition
(https://sql-on-fhir.org/ig/StructureDefinition-ViewDefinition.html).

``parse_view`` turns the JSON into frozen dataclasses or raises ``ViewDefinitionError`` whose
``location`` points into the JSON, e.g. ``select[0].column[2].path``. It checks the structure, the
sql-name and sql-expressions invariants, every FHIRPath expression's syntax, constants, and the
column rules of the processing algorithm (ValidateColumns: unique names, consistent unionAll branches).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from medcloud.analytics.errors import FhirPathSyntaxError, ViewDefinitionError
from medcloud.analytics.fhirpath.parser import parse

__all__ = ["Column", "Constant", "Select", "ViewDefinition", "Where", "parse_view"]

_SQL_NAME = re.compile(r"^[A-Za-z][A-Za-z0-9_]*$")
_RESOURCE_TYPE = re.compile(r"^[A-Z][A-Za-z]+$")
# ViewDefinition.constant.value[x] (models.fsh): the FHIR primitive types a constant may carry.
CONSTANT_TYPES: dict[str, type | tuple[type, ...]] = {
    "Base64Binary": str,
    "Boolean": bool,
    "Canonical": str,
    "Code": str,
    "Date": str,
    "DateTime": str,
    "Decimal": (int, float),
    "Id": str,
    "Instant": str,
    "Integer": int,
    "Integer64": (int, str),
    "Oid": str,
    "String": str,
    "PositiveInt": int,
    "Time": str,
    "UnsignedInt": int,
    "Uri": str,
    "Url": str,
    "Uuid": str,
}


@dataclass(frozen=True, slots=True)
class Column:
    name: str
    path: str
    location: str
    collection: bool = False
    type: str | None = None
    tags: tuple[tuple[str, str], ...] = ()


@dataclass(frozen=True, slots=True)
class Select:
    location: str
    columns: tuple[Column, ...] = ()
    selects: tuple[Select, ...] = ()
    union_all: tuple[Select, ...] = ()
    for_each: str | None = None
    for_each_or_null: str | None = None
    repeat: tuple[str, ...] = ()

    @property
    def iterates(self) -> bool:
        return self.for_each is not None or self.for_each_or_null is not None or bool(self.repeat)


@dataclass(frozen=True, slots=True)
class Constant:
    name: str
    value_type: str  # the [x] of value[x], e.g. "String", "Integer"
    value: Any


@dataclass(frozen=True, slots=True)
class Where:
    path: str
    location: str


@dataclass(frozen=True, slots=True)
class ViewDefinition:
    resource: str
    root: Select  # a synthetic select holding ``select`` as nested selects
    constants: tuple[Constant, ...] = ()
    where: tuple[Where, ...] = ()
    name: str | None = None

    @property
    def columns(self) -> tuple[Column, ...]:
        """Output columns in the order the spec's column-ordering rules give."""
        return tuple(_columns(self.root))


def _columns(sel: Select) -> list[Column]:
    out = list(sel.columns)
    for child in sel.selects:
        out.extend(_columns(child))
    if sel.union_all:
        out.extend(_columns(sel.union_all[0]))
    return out


def _fail(location: str, message: str) -> ViewDefinitionError:
    return ViewDefinitionError(location, message)


def _fhirpath(value: Any, location: str) -> str:
    if not isinstance(value, str):
        raise _fail(location, f"must be a FHIRPath string, got {type(value).__name__}")
    try:
        parse(value)
    except FhirPathSyntaxError as exc:
        raise _fail(location, exc.message) from exc
    return value


def _list(raw: Mapping[str, Any], key: str, location: str) -> list[Any]:
    value = raw.get(key, [])
    if isinstance(value, dict):  # the spec's prose writes a lone select as an object
        value = [value]
    if not isinstance(value, list):
        raise _fail(f"{location}{key}", f"must be a list, got {type(value).__name__}")
    return value


def _object(value: Any, location: str) -> Mapping[str, Any]:
    if not isinstance(value, dict):
        raise _fail(location, f"must be an object, got {type(value).__name__}")
    return value


def _column(raw: Any, loc: str) -> Column:
    raw = _object(raw, loc)
    path = _fhirpath(raw.get("path"), f"{loc}.path") if "path" in raw else None
    if path is None:
        raise _fail(f"{loc}.path", "is required")
    name = raw.get("name")
    if name is None and _SQL_NAME.match(path.rsplit(".", 1)[-1]):
        name = path.rsplit(".", 1)[-1]  # the spec's own examples write {"path": "active"}
    if not isinstance(name, str) or not _SQL_NAME.match(name):
        raise _fail(
            f"{loc}.name", f"{name!r} is not a valid column name (letters, digits, _; a letter first)"
        )
    collection = raw.get("collection", False)
    if not isinstance(collection, bool):
        raise _fail(f"{loc}.collection", "must be true or false")
    col_type = raw.get("type")
    if col_type is not None and not isinstance(col_type, str):
        raise _fail(f"{loc}.type", "must be a string")
    tags = []
    for t, tag in enumerate(_list(raw, "tag", f"{loc}.")):
        tag = _object(tag, f"{loc}.tag[{t}]")
        if not isinstance(tag.get("name"), str) or not isinstance(tag.get("value"), str):
            raise _fail(f"{loc}.tag[{t}]", "needs a string name and value")
        tags.append((tag["name"], tag["value"]))
    return Column(name, path, loc, collection, col_type, tuple(tags))


def _select(raw: Any, loc: str) -> Select:
    raw = _object(raw, loc)
    iterations = [k for k in ("forEach", "forEachOrNull", "repeat") if k in raw]
    if len(iterations) > 1:
        raise _fail(loc, f"may have only one of forEach, forEachOrNull, repeat (has {', '.join(iterations)})")
    for_each = _fhirpath(raw["forEach"], f"{loc}.forEach") if "forEach" in raw else None
    for_each_or_null = (
        _fhirpath(raw["forEachOrNull"], f"{loc}.forEachOrNull") if "forEachOrNull" in raw else None
    )
    repeat: tuple[str, ...] = ()
    if "repeat" in raw:
        paths = raw["repeat"]
        if not isinstance(paths, list) or not paths:
            raise _fail(f"{loc}.repeat", "must be a non-empty list of FHIRPath strings")
        repeat = tuple(_fhirpath(p, f"{loc}.repeat[{i}]") for i, p in enumerate(paths))
    columns = tuple(_column(c, f"{loc}.column[{i}]") for i, c in enumerate(_list(raw, "column", f"{loc}.")))
    selects = tuple(_select(s, f"{loc}.select[{i}]") for i, s in enumerate(_list(raw, "select", f"{loc}.")))
    union_all = tuple(
        _select(s, f"{loc}.unionAll[{i}]") for i, s in enumerate(_list(raw, "unionAll", f"{loc}."))
    )
    return Select(loc, columns, selects, union_all, for_each, for_each_or_null, repeat)


def _constant(raw: Any, loc: str) -> Constant:
    raw = _object(raw, loc)
    name = raw.get("name")
    if not isinstance(name, str) or not _SQL_NAME.match(name):
        raise _fail(f"{loc}.name", f"{name!r} is not a valid constant name")
    values = [k for k in raw if k.startswith("value")]
    if len(values) != 1:
        raise _fail(loc, f"constant {name!r} needs exactly one value[x], found {len(values)}")
    key = values[0]
    value_type = key[len("value") :]
    if value_type not in CONSTANT_TYPES:
        raise _fail(
            f"{loc}.{key}", f"unsupported constant type; use one of value{', value'.join(CONSTANT_TYPES)}"
        )
    value = raw[key]
    expected = CONSTANT_TYPES[value_type]
    if not isinstance(value, expected) or (value_type != "Boolean" and isinstance(value, bool)):
        raise _fail(f"{loc}.{key}", f"{value!r} is not a valid {value_type[0].lower() + value_type[1:]}")
    return Constant(name, value_type, value)


def _validate_columns(sel: Select, seen: list[str]) -> list[str]:
    """ValidateColumns(S, C) of the spec's processing algorithm."""
    ret = list(seen)
    for col in sel.columns:
        if col.name in ret:
            raise _fail(f"{col.location}.name", f"column {col.name!r} is already defined")
        ret.append(col.name)
    for child in sel.selects:
        for name in _validate_columns(child, ret)[len(ret) :]:
            if name in ret:
                raise _fail(child.location, f"column {name!r} is already defined")
            ret.append(name)
    if sel.union_all:
        first = _validate_columns(sel.union_all[0], ret)[len(ret) :]
        for branch in sel.union_all[1:]:
            names = _validate_columns(branch, ret)[len(ret) :]
            if names != first:
                raise _fail(
                    branch.location,
                    f"unionAll branches must have the same columns in the same order: {first} vs {names}",
                )
        ret.extend(first)
    return ret


def parse_view(raw: Any) -> ViewDefinition:
    """Validate a ViewDefinition (a parsed JSON object); raises ViewDefinitionError."""
    view = _object(raw, "ViewDefinition")
    resource = view.get("resource")
    if resource is None:
        raise _fail("resource", "is required")
    if not isinstance(resource, str) or not _RESOURCE_TYPE.match(resource):
        raise _fail("resource", f"{resource!r} is not a FHIR resource type")
    name = view.get("name")
    if name is not None and (not isinstance(name, str) or not _SQL_NAME.match(name)):
        raise _fail("name", f"{name!r} is not a valid view name (letters, digits, _; a letter first)")
    selects = _list(view, "select", "")
    if not selects:
        raise _fail("select", "at least one select is required")
    root = Select("", selects=tuple(_select(s, f"select[{i}]") for i, s in enumerate(selects)))
    constants = tuple(_constant(c, f"constant[{i}]") for i, c in enumerate(_list(view, "constant", "")))
    names = [c.name for c in constants]
    for i, c in enumerate(constants):
        if names.index(c.name) != i:
            raise _fail(f"constant[{i}].name", f"constant {c.name!r} is defined twice")
    wheres = []
    for i, w in enumerate(_list(view, "where", "")):
        w = _object(w, f"where[{i}]")
        wheres.append(Where(_fhirpath(w.get("path"), f"where[{i}].path"), f"where[{i}].path"))
    if not _validate_columns(root, []):
        raise _fail("select", "the view defines no columns")
    return ViewDefinition(resource, root, constants, tuple(wheres), name)
