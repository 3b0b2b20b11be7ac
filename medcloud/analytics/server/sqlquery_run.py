"""``$sqlquery-run`` (SQL-on-FHIR v2 OperationDefinition SQLQueryRun): a SQLQuery Library over view tables.

Levels: ``POST [base]/$sqlquery-run`` and ``POST [base]/Library/$sqlquery-run`` (``queryReference``
to a stored Library: ``Library/[id]``, ``[base]/Library/[id]`` or its canonical ``url``; or
``queryResource``, a Library sent inline) and ``POST [base]/Library/[id]/$sqlquery-run``.
Parameters: ``_format`` (csv, json, ndjson, parquet, or ``fhir`` for a Parameters resource of
``row`` parts; default json), ``header`` (csv), ``parameters`` (a nested Parameters resource binding
the Library's declared parameters by name), or repeated ``parameter`` parts (``name`` + ``value[x]``).

Each ``depends-on`` ViewDefinition is resolved on this server (by canonical URL or
``ViewDefinition/[id]``) and runs over the store as ``$run`` does: only resources the caller may
read (403 without read access to a view's resource type). The query then runs sandboxed in DuckDB
with its parameters bound (``analytics/sqlquery.py``). Errors: 400 malformed Library or
parameters, 404 Library or ViewDefinition not found, 422 SQL error or a column type with no FHIR type.
"""

from __future__ import annotations

from typing import Any

import orjson

from medcloud.analytics import sqlquery
from medcloud.errors import Invalid, NotFound, NotSupported
from medcloud.fhir.context import FhirContext
from medcloud.fhir.exchange import FhirRequest, FhirResponse
from medcloud.fhir.operations import Target

FORMATS = {"json": "application/json", "ndjson": "application/x-ndjson", "csv": "text/csv",
           "parquet": "application/vnd.apache.parquet"}
_KNOWN = frozenset({"_format", "header", "queryReference", "queryResource", "parameters", "parameter", "source"})


def run(ctx: FhirContext, conn: Any, req: FhirRequest, target: Target) -> FhirResponse:
    params = _params(req)
    if "source" in params:
        raise NotSupported("the source parameter (an external data source) is not supported; queries run over "
                           "this server's store", expression="source")
    fmt = str(_one(params, "_format") or "json").split(";")[0].strip().lower()
    if fmt not in (*FORMATS, "fhir"):
        raise NotSupported(f"Format {fmt!r} is not supported. Supported formats: fhir, json, ndjson, csv, parquet",
                           expression="_format")
    header = _one(params, "header")
    if header not in (None, True, False, "true", "false"):
        raise Invalid("header must be true or false", expression="header")
    with ctx.db.read() as rconn:
        library = _library(ctx, rconn, req, params, target)
        query = sqlquery.parse_library(library, "queryResource" if "queryResource" in params else "Library")
        values = sqlquery.bind(query, _given(params))
        views = {d.label: _view(ctx, rconn, req, d.resource) for d in query.dependencies}
    from medcloud.analytics.server.run import file_response, readable_source

    tables = {label: (view, readable_source(ctx, req, view.resource)) for label, view in views.items()}
    result = sqlquery.execute(query, tables, values)
    if fmt == "fhir":
        return FhirResponse(status=200, resource=sqlquery.to_parameters(result))
    return file_response(lambda out: sqlquery.write(result, out, fmt, header=header not in (False, "false")),
                         f"result.{fmt}", FORMATS[fmt])


def _params(req: FhirRequest) -> dict[str, list[Any]]:
    """Query parameters plus the entries of a POSTed Parameters resource (name -> entries)."""
    out: dict[str, list[Any]] = {}
    for k, v in req.query:
        out.setdefault(k, []).append({"name": k, "valueString": v})
    body = req.body
    if body is not None:
        if not isinstance(body, dict) or body.get("resourceType") != "Parameters":
            raise Invalid("the $sqlquery-run body must be a Parameters resource")
        for i, entry in enumerate(body.get("parameter") or []):
            if not isinstance(entry, dict) or not isinstance(entry.get("name"), str):
                raise Invalid("each Parameters.parameter needs a name", expression=f"parameter[{i}]")
            out.setdefault(entry["name"], []).append(entry)
    unknown = sorted(set(out) - _KNOWN)
    if unknown:
        raise Invalid(f"$sqlquery-run does not take the parameter(s) {', '.join(unknown)}", expression=unknown[0])
    for name in ("_format", "header", "queryReference", "queryResource", "parameters"):
        if len(out.get(name, [])) > 1:
            raise Invalid(f"{name} may be given once", expression=name)
    return out


def _value(entry: dict[str, Any]) -> tuple[str, Any] | None:
    return next(((k, v) for k, v in entry.items() if k.startswith("value")), None)


def _one(params: dict[str, list[Any]], name: str) -> Any:
    entries = params.get(name) or []
    if not entries:
        return None
    entry = entries[0]
    if "resource" in entry:
        return entry["resource"]
    kv = _value(entry)
    if kv is None:
        raise Invalid(f"{name} needs a value", expression=name)
    return kv[1]["reference"] if kv[0] == "valueReference" and isinstance(kv[1], dict) else kv[1]


def _given(params: dict[str, list[Any]]) -> dict[str, tuple[str, Any]]:
    """Query parameter values: the nested ``parameters`` resource and/or ``parameter`` (name, value) parts."""
    given: dict[str, tuple[str, Any]] = {}

    def add(name: Any, kv: tuple[str, Any] | None, where: str) -> None:
        if not isinstance(name, str) or kv is None:
            raise Invalid("each query parameter needs a name and a value[x]", expression=where)
        if name in given:
            raise Invalid(f"parameter {name} is given twice", expression=where)
        given[name] = kv

    nested = _one(params, "parameters")
    if nested is not None:
        if not isinstance(nested, dict) or nested.get("resourceType") != "Parameters":
            raise Invalid("parameters must be a Parameters resource", expression="parameters")
        for i, p in enumerate(nested.get("parameter") or []):
            add(p.get("name") if isinstance(p, dict) else None, _value(p) if isinstance(p, dict) else None,
                f"parameters.parameter[{i}]")
    for i, entry in enumerate(params.get("parameter") or []):
        parts = {p.get("name"): p for p in entry.get("part") or [] if isinstance(p, dict)}
        name = _value(parts.get("name") or {})
        add(name[1] if name else None, _value(parts.get("value") or {}), f"parameter[{i}]")
    return given


def _library(ctx: FhirContext, conn: Any, req: FhirRequest, params: dict[str, list[Any]], target: Target) -> Any:
    ref, inline = _one(params, "queryReference"), _one(params, "queryResource")
    if target.rid_id is not None:
        if ref is not None or inline is not None:
            raise Invalid(f"queryReference and queryResource are not allowed at the instance level (the query is "
                          f"Library/{target.rid_id})", expression="queryReference" if ref else "queryResource")
        ref = f"Library/{target.rid_id}"
    elif (ref is None) == (inline is None):
        raise Invalid("give exactly one of queryReference and queryResource")
    if inline is not None:
        return inline
    ref = str(ref).strip()
    local = ref[len(req.base_url) + 1:] if ref.startswith(req.base_url + "/") else ref
    parts = local.split("/")
    if len(parts) == 2 and parts[0] == "Library":
        s = ctx.store.read(conn, "Library", parts[1])
        if s is None or s.deleted or s.content is None or not ctx.guard.can_read(req.principal, s):
            raise NotFound(f"Library with id {parts[1]!r} not found", expression="queryReference")
        return orjson.loads(s.content)
    from medcloud.analytics.cohorts import matching

    url, _, version = ref.partition("|")
    query = [("url", url)] + ([("version", version)] if version else [])
    found = [orjson.loads(s.content) for s in matching(ctx, conn, req.principal, "Library", query) if s.content]
    if not found:
        raise NotFound(f"no Library with url {ref!r} on this server", expression="queryReference")
    if len(found) > 1:
        raise Invalid(f"{len(found)} Libraries have url {ref!r}; add |version or use Library/[id]",
                      expression="queryReference")
    return found[0]


def _view(ctx: FhirContext, conn: Any, req: FhirRequest, ref: str) -> Any:
    from medcloud.analytics.server import views
    from medcloud.analytics.viewdef import parse_view

    try:
        stored = views.resolve_reference(ctx, conn, req, ref)
    except NotFound as e:
        raise NotFound(f"the query depends on a ViewDefinition not on this server: {e.message}",
                       expression="relatedArtifact") from e
    views.validate(stored, "relatedArtifact.")
    return parse_view(stored)
