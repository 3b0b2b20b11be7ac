"""``$validate`` at type and instance level (hl7.org/fhir/R4/resource-operation-validate.html).

The body is the resource itself or a Parameters resource with ``resource``, ``mode`` (create,
update, delete; ``profile`` mode and the ``profile`` parameter are answered with a warning that
profiles are not checked). The answer is always 200 with an OperationOutcome: the problems
found, or one "All OK" information issue; a 4xx means validation itself could not be done
(operation spec: "the operation returns 200 whether or not the resource is valid").
``GET [type]/[id]/$validate`` validates the stored current version.
"""

from __future__ import annotations

from typing import Any

import orjson
from sqlalchemy import Connection

from medcloud.errors import Gone, Invalid, Issue, NotFound
from medcloud.fhir.context import FhirContext
from medcloud.fhir.exchange import FhirRequest, FhirResponse, operation_outcome
from medcloud.fhir.operations import Operation, Target, register
from medcloud.fhir.resource_meta import ID_RE
from medcloud.fhir.validation import validate_resource

MODES = ("create", "update", "delete", "profile")


def validate(ctx: FhirContext, conn: Connection, req: FhirRequest, target: Target) -> FhirResponse:
    assert target.rtype is not None
    rtype = target.rtype
    resource, mode, profile = _input(ctx, conn, req, target)
    issues: list[Issue] = []
    if mode == "delete":
        issues += _check_delete(ctx, conn, req, target)
    else:
        if resource is None:
            raise Invalid("$validate needs a resource to validate (the body, or Parameters.resource)")
        issues += validate_resource(resource, expected_type=rtype)
        if isinstance(resource, dict):
            issues += _check_mode(mode, resource, target)
    if profile is not None:
        issues.append(Issue(f"profile {profile} was not checked: this server validates against the base "
                            "R4 specification only", "not-supported", "warning"))
    if not issues:
        issues.append(Issue("All OK", "informational", "information"))
    return FhirResponse(status=200, resource=operation_outcome(issues))


def _input(ctx: FhirContext, conn: Connection, req: FhirRequest,
           target: Target) -> tuple[Any, str | None, str | None]:
    mode = req.param("mode")
    profile = req.param("profile")
    body = req.body
    if req.method == "GET" or body is None:
        if target.rid_id is None or mode == "delete":
            return None, mode, profile
        s = ctx.store.read(conn, target.rtype or "", target.rid_id)
        if s is None:
            raise NotFound(f"{target.rtype}/{target.rid_id} is not known")
        ctx.guard.check_read(req.principal, s)
        if s.deleted or s.content is None:
            raise Gone(f"{target.rtype}/{target.rid_id} was deleted")
        return orjson.loads(s.content), mode or "update", profile
    if not isinstance(body, dict):
        raise Invalid("the $validate body must be a FHIR resource or Parameters")
    resource: Any = body
    if body.get("resourceType") == "Parameters" and target.rtype != "Parameters":
        resource = None
        for p in body.get("parameter") or []:
            if not isinstance(p, dict):
                raise Invalid("Parameters.parameter entries must be objects", expression="Parameters.parameter")
            name = p.get("name")
            if name == "resource":
                resource = p.get("resource")
            elif name == "mode":
                mode = p.get("valueCode") or p.get("valueString")
            elif name == "profile":
                profile = p.get("valueUri") or p.get("valueCanonical") or p.get("valueString")
    if mode is not None and mode not in MODES:
        raise Invalid(f"mode must be one of {', '.join(MODES)}, not {mode!r}")
    return resource, mode, profile


def _check_mode(mode: str | None, resource: dict[str, Any], target: Target) -> list[Issue]:
    rtype = target.rtype
    rid = resource.get("id")
    if mode == "update":
        if rid is None:
            return [Issue("an update needs the resource id", "required", "error", (f"{rtype}.id",))]
        if target.rid_id is not None and rid != target.rid_id:
            return [Issue(f"the resource id {rid!r} does not match the URL id {target.rid_id!r}", "invalid",
                          "error", (f"{rtype}.id",))]
        if isinstance(rid, str) and not ID_RE.match(rid):
            return [Issue(f"invalid resource id {rid!r}", "value", "error", (f"{rtype}.id",))]
    if mode == "create" and rid is not None:
        return [Issue("the server assigns the id on create; the id given will be ignored", "informational",
                      "warning", (f"{rtype}.id",))]
    return []


def _check_delete(ctx: FhirContext, conn: Connection, req: FhirRequest, target: Target) -> list[Issue]:
    if target.rid_id is None:
        raise Invalid("mode=delete validates the deletion of an instance: use [type]/[id]/$validate")
    s = ctx.store.read(conn, target.rtype or "", target.rid_id)
    if s is None or s.deleted or not ctx.guard.can_read(req.principal, s):
        return [Issue(f"{target.rtype}/{target.rid_id} does not exist", "not-found", "error")]
    return []


register(Operation("validate", validate, types=None, instance_types=None, methods=("GET", "POST"),
                   definition="http://hl7.org/fhir/OperationDefinition/Resource-validate"))
