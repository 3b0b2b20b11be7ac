"""FHIRPath Patch (https://hl7.org/fhir/R4/fhirpatch.html) applied to a resource's JSON.

Paths are evaluated by a small location-aware FHIRPath subset: element names (choice elements by
their base name, ``Observation.value``), ``[n]``, ``where(...)`` (its criteria evaluated by
fhirpathpy), ``first()``, ``last()``, ``tail()``, ``single()``, ``ofType(T)`` and
``extension('url')``. Each result remembers where it lives, so it can be replaced or deleted.
Cardinality and types come from the R4 JSON schema, so ``add`` knows to create an array.

A malformed Parameters document raises Invalid (400); a well-formed operation that does not fit the
resource (no match, several matches, an index out of range) raises Unprocessable (422). Both name
the operation's position.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from fhirpathpy import evaluate

from medcloud.errors import Invalid, MedcloudError, Unprocessable
from medcloud.fhir.definitions import elements

OPERATIONS = ("add", "insert", "delete", "replace", "move")
_SEGMENT = re.compile(r"^(`[^`]+`|[A-Za-z_][A-Za-z0-9_]*)(\((.*)\))?((?:\[\d+\])*)$", re.S)
_INDEX = re.compile(r"\[(\d+)\]")


def _element(owner: str | None, key: str) -> tuple[str | None, bool] | None:
    if owner is None:
        return None
    return elements().get(owner, {}).get(key)


@dataclass(slots=True)
class _Node:
    value: Any
    container: dict[str, Any] | list[Any] | None  # where the value is stored
    key: str | int | None  # its key in the container (an index for list items)
    type: str | None  # schema definition of the value, when known
    owner: dict[str, Any] | None = None  # for list items: the object holding the list
    name: str | None = None  # for list items: the list's key; otherwise the element name (choice base)
    owner_type: str | None = None  # type of the object holding this element


def apply(resource: dict[str, Any], parameters: Any) -> dict[str, Any]:
    """Apply a FHIRPath Patch Parameters resource to ``resource`` in place and return it."""
    if not isinstance(parameters, dict) or parameters.get("resourceType") != "Parameters":
        raise Invalid("a FHIRPath Patch is a Parameters resource", expression="Parameters")
    params = parameters.get("parameter")
    if not isinstance(params, list) or not params:
        raise Invalid("the FHIRPath Patch has no operation", expression="Parameters.parameter")
    for i, param in enumerate(params):
        at = f"Parameters.parameter[{i}]"
        if not isinstance(param, dict) or param.get("name") != "operation":
            raise Invalid(f"{at} is not an operation (FHIRPath Patch parameters are all named 'operation')",
                          expression=at)
        try:
            _operation(resource, _parts(param, at))
        except MedcloudError as err:
            raise type(err)(f"FHIRPath Patch operation {i} ({at}): {err.message}", expression=at) from err
    return resource


def _parts(param: dict[str, Any], at: str) -> dict[str, dict[str, Any]]:
    parts = param.get("part")
    if not isinstance(parts, list):
        raise Invalid("the operation has no parts")
    out: dict[str, dict[str, Any]] = {}
    for p in parts:
        if not isinstance(p, dict) or not isinstance(p.get("name"), str):
            raise Invalid("every part of an operation needs a name")
        if p["name"] in out:
            raise Invalid(f"part {p['name']!r} is repeated")
        out[p["name"]] = p
    return out


def _primitive(parts: dict[str, dict[str, Any]], name: str, kind: type, required: bool = True) -> Any:
    part = parts.get(name)
    if part is None:
        if required:
            raise Invalid(f"the {name!r} part is missing")
        return None
    values: list[Any] = [v for k, v in part.items() if k.startswith("value")]
    value = values[0] if len(values) == 1 else None
    if not isinstance(value, kind) or isinstance(value, bool) is not (kind is bool):
        raise Invalid(f"the {name!r} part needs one {kind.__name__} value")
    if isinstance(value, int) and value < 0:
        raise Invalid(f"the {name!r} part must not be negative")
    return value


def _operation(resource: dict[str, Any], parts: dict[str, dict[str, Any]]) -> None:
    op = _primitive(parts, "type", str)
    if op not in OPERATIONS:
        raise Invalid(f"unknown operation type {op!r} (one of {', '.join(OPERATIONS)})")
    path = _primitive(parts, "path", str)
    segments = _segments(path)
    if op == "add":
        name = _primitive(parts, "name", str)
        value = _value_part(parts)
        target = _one(_evaluate(resource, segments), path)
        if not isinstance(target.value, dict):
            raise Unprocessable(f"{path!r} is not an element that can hold {name!r}")
        _add(target, name, value)
    elif op == "insert":
        index = _primitive(parts, "index", int)
        value = _value_part(parts)
        owner, name, items = _collection(resource, segments, path)
        if index > len(items):
            raise Unprocessable(f"index {index} is beyond the end of {path!r} ({len(items)} items)")
        items.insert(index, _convert(value, _element_type(owner, name)))
        owner.value[name] = items
    elif op == "delete":
        found = _evaluate(resource, segments)
        if len(found) > 1:
            raise Unprocessable(f"{path!r} matches {len(found)} elements; delete removes one")
        if found:
            _delete(found[0])
    elif op == "replace":
        value = _value_part(parts)
        _replace(_one(_evaluate(resource, segments), path), value)
    else:  # move
        source = _primitive(parts, "source", int)
        destination = _primitive(parts, "destination", int)
        owner, name, items = _collection(resource, segments, path)
        if source >= len(items) or destination >= len(items):
            raise Unprocessable(f"move {source} -> {destination} is out of range for {path!r} ({len(items)} items)")
        items.insert(destination, items.pop(source))


# -- values --------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Value:
    suffix: str | None  # the datatype of value[x] ("String", "Quantity"), None for an anonymous part value
    data: Any  # JSON of a value[x], or the parts of an anonymous (backbone) value


def _value_part(parts: dict[str, dict[str, Any]]) -> _Value:
    part = parts.get("value")
    if part is None:
        raise Invalid("the 'value' part is missing")
    return _value_of(part)


def _value_of(part: dict[str, Any]) -> _Value:
    keys = [k for k in part if k.startswith("value") and len(k) > 5 and k[5].isupper()]
    if len(keys) == 1 and "part" not in part:
        return _Value(keys[0][5:], part[keys[0]])
    sub = part.get("part")
    if not keys and isinstance(sub, list) and sub:
        return _Value(None, sub)
    raise Invalid(f"part {part.get('name')!r} needs exactly one value[x] or nested parts")


def _convert(value: _Value, type_name: str | None) -> Any:
    if value.suffix is not None:
        return value.data
    out: dict[str, Any] = {}
    for p in value.data:
        if not isinstance(p, dict) or not isinstance(p.get("name"), str):
            raise Invalid("every nested part needs a name")
        sub = _value_of(p)
        key = _key_for(type_name, p["name"], sub)
        info = _element(type_name, key)
        item = _convert(sub, info[0] if info else None)
        if info is not None and info[1]:
            out.setdefault(key, []).append(item)
        elif key in out:
            raise Invalid(f"element {p['name']!r} does not repeat but is given twice")
        else:
            out[key] = item
    return out


def _key_for(owner: str | None, name: str, value: _Value) -> str:
    """The JSON key for element ``name`` given a value: choice elements get the type suffix."""
    if owner is None or _element(owner, name) is not None or value.suffix is None:
        return name
    choice = name + value.suffix[0].upper() + value.suffix[1:]
    if _element(owner, choice) is not None:
        return choice
    raise Unprocessable(f"{owner} has no element {name!r} of type {value.suffix}")


def _element_type(node: _Node, key: str) -> str | None:
    info = _element(node.type, key)
    return info[0] if info else None


# -- operations on located nodes -----------------------------------------------------------------


def _add(target: _Node, name: str, value: _Value) -> None:
    obj = target.value
    key = _key_for(target.type, name, value)
    info = _element(target.type, key)
    if target.type is not None and target.type in elements() and info is None:
        raise Unprocessable(f"{target.type} has no element {name!r}")
    item = _convert(value, info[0] if info else None)
    if info is not None and info[1] or isinstance(obj.get(key), list):
        obj.setdefault(key, []).append(item)
    elif key in obj:
        raise Unprocessable(f"{name!r} already has a value and does not repeat; use replace")
    else:
        obj[key] = item


def _replace(node: _Node, value: _Value) -> None:
    container = node.container
    if container is None:
        raise Unprocessable("the whole resource cannot be replaced by a patch")
    if isinstance(container, list):
        assert isinstance(node.key, int)
        container[node.key] = _convert(value, node.type)
        return
    assert isinstance(node.key, str)
    key = node.key
    if value.suffix is not None and node.name and node.name != key:  # a choice element: the type may change
        new_key = _key_for(node.owner_type, node.name, value) if node.owner_type else key
        if new_key != key:
            del container[key]
            container.pop("_" + key, None)
            key = new_key
    container[key] = _convert(value, node.type)


def _delete(node: _Node) -> None:
    container = node.container
    if container is None:
        raise Unprocessable("the whole resource cannot be deleted by a patch")
    if isinstance(container, list):
        assert isinstance(node.key, int)
        del container[node.key]
        if not container and node.owner is not None and node.name is not None:
            del node.owner[node.name]
            node.owner.pop("_" + node.name, None)
        return
    assert isinstance(node.key, str)
    del container[node.key]
    container.pop("_" + node.key, None)


def _collection(resource: dict[str, Any], segments: list[_Segment], path: str) -> tuple[_Node, str, list[Any]]:
    last = segments[-1] if segments else None
    if last is None or last.args is not None or last.indexes:
        raise Invalid(f"{path!r} must end with the name of a repeating element")
    owner = _one(_evaluate(resource, segments[:-1]), path)
    if not isinstance(owner.value, dict):
        raise Unprocessable(f"{path!r} is not a list")
    items = owner.value.get(last.name, [])
    info = _element(owner.type, last.name)
    if not isinstance(items, list) or (info is not None and not info[1]):
        raise Unprocessable(f"{path!r} is not a repeating element")
    return owner, last.name, items


def _one(found: list[_Node], path: str) -> _Node:
    if len(found) != 1:
        raise Unprocessable(f"{path!r} matches {len(found)} elements; the operation needs exactly one")
    return found[0]


# -- the path subset ---------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Segment:
    name: str
    args: str | None  # None: an element name; else a function call's argument text
    indexes: tuple[int, ...]


def _segments(path: str) -> list[_Segment]:
    out = []
    for text in _split(path):
        m = _SEGMENT.match(text.strip())
        if not m:
            raise Invalid(f"cannot parse the path {path!r} at {text!r}")
        name = m.group(1).strip("`")
        indexes = tuple(int(x) for x in _INDEX.findall(m.group(4) or ""))
        out.append(_Segment(name, m.group(3) if m.group(2) else None, indexes))
    if not out:
        raise Invalid("the path is empty")
    return out


def _split(path: str) -> list[str]:
    parts: list[str] = []
    cur: list[str] = []
    depth, quote = 0, ""
    for ch in path:
        if quote:
            quote = "" if ch == quote else quote
        elif ch in "'`":
            quote = ch
        elif ch in "([":
            depth += 1
        elif ch in ")]":
            depth -= 1
        elif ch == "." and depth == 0:
            parts.append("".join(cur))
            cur = []
            continue
        cur.append(ch)
    parts.append("".join(cur))
    return parts


def _evaluate(resource: dict[str, Any], segments: list[_Segment]) -> list[_Node]:
    rtype = resource.get("resourceType")
    nodes = [_Node(resource, None, None, rtype if isinstance(rtype, str) else None)]
    if segments and segments[0].args is None and segments[0].name in (rtype, "Resource", "DomainResource"):
        nodes = _indexed(nodes, segments[0].indexes)
        segments = segments[1:]
    for seg in segments:
        nodes = _step(nodes, seg) if seg.args is None else _function(nodes, seg)
        nodes = _indexed(nodes, seg.indexes)
    return nodes


def _indexed(nodes: list[_Node], indexes: tuple[int, ...]) -> list[_Node]:
    for i in indexes:
        nodes = [nodes[i]] if i < len(nodes) else []
    return nodes


def _step(nodes: list[_Node], seg: _Segment) -> list[_Node]:
    out: list[_Node] = []
    for node in nodes:
        obj = node.value
        if not isinstance(obj, dict):
            continue
        key = seg.name if seg.name in obj else _choice_key(node, obj, seg.name)
        if key is None:
            continue
        value = obj[key]
        info = _element(node.type, key)
        vtype = info[0] if info else (value.get("resourceType") if isinstance(value, dict) else None)
        if isinstance(value, list):
            for i, item in enumerate(value):
                t = vtype if vtype else (item.get("resourceType") if isinstance(item, dict) else None)
                out.append(_Node(item, value, i, t, owner=obj, name=key))
        else:
            out.append(_Node(value, obj, key, vtype, name=seg.name, owner_type=node.type))
    return out


def _choice_key(node: _Node, obj: dict[str, Any], name: str) -> str | None:
    for key in obj:
        if (key.startswith(name) and len(key) > len(name) and key[len(name)].isupper()
                and (node.type is None or _element(node.type, key) is not None)):
            return key
    return None


def _function(nodes: list[_Node], seg: _Segment) -> list[_Node]:
    fn, args = seg.name, (seg.args or "").strip()
    if fn == "where":
        if not args:
            raise Invalid("where() needs criteria")
        try:
            return [n for n in nodes if evaluate(n.value, args) == [True]]
        except Exception as err:  # fhirpathpy raises plain exceptions for bad expressions
            raise Invalid(f"cannot evaluate where({args}): {err}") from err
    if args and fn in ("first", "last", "tail", "single"):
        raise Invalid(f"{fn}() takes no arguments")
    if fn == "first":
        return nodes[:1]
    if fn == "last":
        return nodes[-1:]
    if fn == "tail":
        return nodes[1:]
    if fn == "single":
        if len(nodes) > 1:
            raise Unprocessable("single() found several elements")
        return nodes
    if fn == "ofType":
        wanted = args.strip("`")
        return [n for n in nodes if _is_type(n, wanted)]
    if fn == "extension":
        url = args.strip()
        if len(url) < 2 or url[0] != "'" or url[-1] != "'":
            raise Invalid("extension() needs a quoted url")
        url = url[1:-1]
        found = _step(nodes, _Segment("extension", None, ()))
        return [n for n in found if isinstance(n.value, dict) and n.value.get("url") == url]
    raise Invalid(f"the function {fn}() is not supported in a FHIRPath Patch path")


def _is_type(node: _Node, wanted: str) -> bool:
    if node.type is not None and node.type.lower() == wanted.lower():
        return True
    if isinstance(node.value, dict) and node.value.get("resourceType") == wanted:
        return True
    return isinstance(node.key, str) and node.name is not None and node.key == node.name + wanted[:1].upper() + wanted[1:]
