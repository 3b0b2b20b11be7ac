"""patch and conditional patch (http.html#patch): JSON Patch and FHIRPath Patch.

The patched resource is written like an update: validated, a new version, If-Match honoured. A patch
may not change the resource's type or id. JSON Patch (RFC 6902, ``application/json-patch+json``) is
applied by ``jsonpatch`` one operation at a time so an error names the failing operation; FHIRPath
Patch (a Parameters resource, https://hl7.org/fhir/R4/fhirpatch.html) by ``_fhirpatch``.
"""

from __future__ import annotations

from typing import Any

import jsonpatch
import jsonpointer
import orjson
from sqlalchemy import Connection

from medcloud.errors import (
    Gone,
    Invalid,
    MultipleMatches,
    NotFound,
    PreconditionFailed,
    Unprocessable,
    UnsupportedMedia,
)
from medcloud.fhir import search
from medcloud.fhir.context import FhirContext
from medcloud.fhir.exchange import FhirRequest, FhirResponse
from medcloud.fhir.interactions import _fhirpatch
from medcloud.fhir.interactions._write import new_version, write_one, written
from medcloud.fhir.resource_meta import parse_etag

JSON_PATCH = "application/json-patch+json"
FHIR_TYPES = ("application/fhir+json", "application/json", "text/json")
_OPS = {"add": ("value",), "remove": (), "replace": ("value",), "move": ("from",), "copy": ("from",),
        "test": ("value",)}


def patch(ctx: FhirContext, conn: Connection, req: FhirRequest, rtype: str, rid_id: str) -> FhirResponse:
    current = ctx.store.read(conn, rtype, rid_id, lock=True)
    if current is None:
        raise NotFound(f"{rtype}/{rid_id} is not known")
    ctx.guard.check_read(req.principal, current)
    if current.deleted or current.content is None:
        raise Gone(f"{rtype}/{rid_id} was deleted (version {current.version})")
    if_match = req.header("if-match")
    if if_match is not None and parse_etag(if_match) != current.version:
        raise PreconditionFailed(f"If-Match {if_match} does not match the current version ({current.version})")
    resource = apply_patch(orjson.loads(current.content), req.body, req.content_type)
    if resource.get("resourceType") != rtype:
        raise Unprocessable("a patch may not change the resourceType", expression="resourceType")
    if resource.get("id") != rid_id:
        raise Unprocessable("a patch may not change the resource id", expression=f"{rtype}.id")
    ctx.guard.check_write(req.principal, rtype, resource)
    v = new_version(ctx, resource, rid_id, current.version + 1, "PATCH", ctx.clock())
    return written(req, write_one(ctx, conn, v), 200)


def conditional_patch(ctx: FhirContext, conn: Connection, req: FhirRequest, rtype: str) -> FhirResponse:
    found = search.matches(ctx, conn, req.principal, rtype, req.query, limit=2)
    if len(found) > 1:
        raise MultipleMatches(f"the conditional patch matches more than one {rtype}")
    if not found:
        raise NotFound(f"the conditional patch matches no {rtype}")
    return patch(ctx, conn, req, rtype, found[0].id)


def apply_patch(resource: dict[str, Any], document: Any, content_type: str | None) -> dict[str, Any]:
    """``resource`` with the patch applied, by the document's media type; raises Invalid/Unprocessable."""
    ctype = (content_type or "").split(";")[0].strip().lower()
    if ctype == JSON_PATCH or (ctype in FHIR_TYPES and isinstance(document, list)):
        return json_patch(resource, document)
    if ctype in FHIR_TYPES or not ctype:
        return _fhirpatch.apply(resource, document)
    raise UnsupportedMedia(f"a patch must be {JSON_PATCH} or a FHIRPath Patch Parameters (application/fhir+json)")


def json_patch(resource: dict[str, Any], document: Any) -> dict[str, Any]:
    """RFC 6902: malformed operations are 400, operations that do not apply (incl. a failed test) 422."""
    if not isinstance(document, list):
        raise Invalid("a JSON Patch document is an array of operations")
    for i, op in enumerate(document):
        _check_operation(i, op)
    for i, op in enumerate(document):
        try:
            resource = jsonpatch.JsonPatch([op]).apply(resource, in_place=True)
        except jsonpatch.JsonPatchTestFailed as err:
            raise Unprocessable(f"JSON Patch operation {i} (test {op['path']}) failed: {err}",
                                expression=f"/{i}") from err
        except (jsonpatch.JsonPatchException, jsonpointer.JsonPointerException, TypeError, ValueError) as err:
            raise Unprocessable(f"JSON Patch operation {i} ({op['op']} {op['path']}) cannot be applied: {err}",
                                expression=f"/{i}") from err
        if not isinstance(resource, dict):
            raise Unprocessable(f"JSON Patch operation {i} replaced the whole resource with a non-object")
    return resource


def _check_operation(i: int, op: Any) -> None:
    at = f"/{i}"
    if not isinstance(op, dict):
        raise Invalid(f"JSON Patch operation {i} is not an object", expression=at)
    name = op.get("op")
    if name not in _OPS:
        raise Invalid(f"JSON Patch operation {i} has an unknown op {name!r}", expression=at)
    for member in ("path", *_OPS[name]):
        if member not in op:
            raise Invalid(f"JSON Patch operation {i} ({name}) is missing {member!r}", expression=at)
    for member in ("path", "from"):
        if member in op:
            pointer = op[member]
            if not isinstance(pointer, str) or (pointer and not pointer.startswith("/")):
                raise Invalid(f"JSON Patch operation {i}: {member} {pointer!r} is not a JSON Pointer", expression=at)
            try:
                jsonpointer.JsonPointer(pointer)
            except jsonpointer.JsonPointerException as err:
                raise Invalid(f"JSON Patch operation {i}: {member} {pointer!r} is not a JSON Pointer: {err}",
                              expression=at) from err
