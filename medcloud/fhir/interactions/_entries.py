"""Bundle entries of a batch or transaction: parsing, sub-requests, and response entries.

https://hl7.org/fhir/R4/http.html#transaction, https://hl7.org/fhir/R4/bundle.html#transaction
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http import HTTPStatus
from typing import Any
from urllib.parse import parse_qsl

import orjson

from medcloud.errors import Invalid, MedcloudError
from medcloud.fhir.definitions import resource_types
from medcloud.fhir.exchange import FhirRequest, FhirResponse, outcome_message
from medcloud.fhir.resource_meta import instant, parse_http_date
from medcloud.storage.resources import NewVersion, Stored

# Processing order of http.html#trules (batches too: "it is considered that servers execute the batch
# in the same order as that specified below for transactions").
ORDER = {"DELETE": 0, "POST": 1, "PUT": 2, "PATCH": 2, "GET": 3, "HEAD": 3}

_HEADERS = {"ifMatch": "if-match", "ifNoneMatch": "if-none-match", "ifNoneExist": "if-none-exist",
            "ifModifiedSince": "if-modified-since"}
_SYSTEM_PATHS = frozenset({"metadata", "_history", "_search"})
_TYPES = frozenset(resource_types())
JSON_PATCH = "application/json-patch+json"
FHIR_JSON = "application/fhir+json"


@dataclass(slots=True)
class Entry:
    """One parsed ``Bundle.entry``; ``target`` and friends are filled in while a transaction runs."""

    index: int
    method: str
    path: str  # relative to the base, no query: "Patient", "Patient/1", "metadata", ""
    query: list[tuple[str, str]]
    full_url: str | None
    resource: dict[str, Any] | None
    headers: dict[str, str]
    body: Any = None  # what the interaction receives (the resource, or a decoded patch document)
    content_type: str | None = None
    target: tuple[str, str] | None = None  # (type, id) the entry acts on, once resolved
    existing: Stored | None = None  # the match of a conditional create
    same_as: int | None = None  # an identical earlier conditional create this one resolves to
    version: NewVersion | None = field(default=None, repr=False)  # a prepared create
    response: FhirResponse | None = field(default=None, repr=False)
    last_updated: int | None = None  # microseconds, when known exactly (bulk creates)
    rtype: str | None = field(init=False)  # the type the URL names, if any
    rid_id: str | None = field(init=False)  # the id of a [type]/[id] URL
    is_create: bool = field(init=False)  # POST [type]

    def __post_init__(self) -> None:
        parts = self.path.split("/")
        self.rtype = parts[0] if parts[0] in _TYPES else None
        self.rid_id = parts[1] if len(parts) == 2 and self.rtype is not None else None
        self.is_create = self.method == "POST" and self.rtype is not None and len(parts) == 1

    def request(self, outer: FhirRequest, *, path: str | None = None, query: list[tuple[str, str]] | None = None,
                body: Any = ..., headers: dict[str, str] | None = None) -> FhirRequest:
        """The request this entry stands for, as the router would receive it over HTTP."""
        return FhirRequest(
            method=self.method,
            path=self.path if path is None else path,
            query=self.query if query is None else query,
            headers=self.headers if headers is None else headers,
            body=self.body if body is ... else body,
            content_type=self.content_type,
            base_url=outer.base_url,
            principal=outer.principal,
            in_bundle=True,
        )


def parse_entry(raw: Any, index: int, base_url: str) -> Entry:
    """Check one ``Bundle.entry`` and turn it into an ``Entry``; raises Invalid naming the element."""
    at = f"Bundle.entry[{index}]"
    if not isinstance(raw, dict):
        raise Invalid(f"{at} must be an object", expression=at)
    request = raw.get("request")
    if not isinstance(request, dict):
        raise Invalid(f"{at} has no request (method and url)", expression=f"{at}.request")
    method = request.get("method")
    if not isinstance(method, str) or method.upper() not in ORDER:
        raise Invalid(f"{at}.request.method must be one of GET HEAD POST PUT PATCH DELETE, not {method!r}",
                      expression=f"{at}.request.method")
    method = method.upper()
    url = request.get("url")
    if not isinstance(url, str) or not url.strip():
        raise Invalid(f"{at}.request.url is missing", expression=f"{at}.request.url")
    path, query = _split_url(url.strip(), base_url, f"{at}.request.url")
    full_url = raw.get("fullUrl")
    if full_url is not None and not isinstance(full_url, str):
        raise Invalid(f"{at}.fullUrl must be a string", expression=f"{at}.fullUrl")
    resource = raw.get("resource")
    if resource is not None and not (isinstance(resource, dict) and isinstance(resource.get("resourceType"), str)):
        raise Invalid(f"{at}.resource must be a FHIR resource", expression=f"{at}.resource")
    headers = {}
    for key, name in _HEADERS.items():
        value = request.get(key)
        if value is not None:
            if not isinstance(value, str):
                raise Invalid(f"{at}.request.{key} must be a string", expression=f"{at}.request.{key}")
            headers[name] = value
    entry = Entry(index, method, path, query, full_url, resource, headers, body=resource)
    _check_target(entry, at)
    if method == "PATCH":
        entry.body, entry.content_type = _patch_document(resource, at)
    elif method in ("POST", "PUT"):
        entry.content_type = FHIR_JSON
    return entry


def _split_url(url: str, base_url: str, at: str) -> tuple[str, list[tuple[str, str]]]:
    if url.startswith(base_url + "/") or url == base_url:
        url = url[len(base_url):]
    elif "://" in url.split("?", 1)[0]:
        raise Invalid(f"{at} {url!r} is not on this server (base {base_url})", expression=at)
    path, _, qs = url.partition("?")
    return path.strip("/"), parse_qsl(qs, keep_blank_values=True)


def _check_target(e: Entry, at: str) -> None:
    parts = [p for p in e.path.split("/") if p]
    head = parts[0] if parts else ""
    if head and head not in _TYPES and head not in _SYSTEM_PATHS and not head.startswith("$"):
        raise Invalid(f"{at}.request.url names an unknown resource type {head!r}", expression=f"{at}.request.url")
    where = f"{at}.request.url"
    if e.method == "POST":
        if not head:
            raise Invalid(f"{at}: a batch or transaction cannot be nested inside another one", expression=where)
        if e.is_create and e.resource is None:
            raise Invalid(f"{at}: a create needs the resource", expression=f"{at}.resource")
    elif e.method in ("PUT", "PATCH", "DELETE"):
        conditional = len(parts) == 1 and head in _TYPES and e.query
        if not (conditional or (len(parts) == 2 and head in _TYPES)):
            raise Invalid(f"{at}: {e.method} needs [type]/[id] or [type]?[search parameters], not {e.path!r}",
                          expression=where)
        if e.method != "DELETE" and e.resource is None:
            raise Invalid(f"{at}: {e.method} needs a resource", expression=f"{at}.resource")


def _patch_document(resource: dict[str, Any] | None, at: str) -> tuple[Any, str]:
    """A PATCH entry carries a Binary (JSON Patch) or a Parameters resource (FHIRPath Patch)."""
    assert resource is not None
    if resource["resourceType"] == "Parameters":
        return resource, FHIR_JSON
    if resource["resourceType"] == "Binary":
        ctype = str(resource.get("contentType", "")).split(";")[0].strip().lower()
        if ctype != JSON_PATCH:
            raise Invalid(f"{at}: a PATCH Binary must have contentType {JSON_PATCH}", expression=f"{at}.resource")
        try:
            return orjson.loads(base64.b64decode(resource.get("data", ""), validate=True)), JSON_PATCH
        except (binascii.Error, ValueError, TypeError) as err:
            raise Invalid(f"{at}: the Binary does not hold a JSON Patch document: {err}",
                          expression=f"{at}.resource.data") from err
    raise Invalid(f"{at}: a PATCH entry must carry a Binary (JSON Patch) or Parameters (FHIRPath Patch)",
                  expression=f"{at}.resource")


@contextmanager
def at_entry(e: Entry) -> Iterator[None]:
    """Re-raise a domain error with the entry's position in the Bundle, keeping its category."""
    try:
        yield
    except MedcloudError as err:
        raise relabel(err, e) from err


def relabel(err: MedcloudError, e: Entry) -> MedcloudError:
    at = f"Bundle.entry[{e.index}]"
    if err.message.startswith(at):
        return err
    rtype = e.resource.get("resourceType") if e.resource else None
    issues = []
    for issue in err.issues:
        exprs = tuple(f"{at}.resource{x[len(rtype):]}" if rtype and x.startswith(rtype) and not x.startswith("Bundle.")
                      else x for x in issue.expression)
        issues.append(dataclasses.replace(issue, diagnostics=f"{at}: {issue.diagnostics}", expression=exprs))
    return type(err)(f"{at}: {err.message}", issues=issues)


def status_line(code: int) -> str:
    try:
        return f"{code} {HTTPStatus(code).phrase}"
    except ValueError:
        return str(code)


def response_entry(base_url: str, e: Entry | None, resp: FhirResponse, prefer: str | None) -> dict[str, Any]:
    """``Bundle.entry`` of a batch-/transaction-response for one answered request entry."""
    response: dict[str, Any] = {"status": status_line(resp.status)}
    out: dict[str, Any] = {}
    if resp.location:
        response["location"] = resp.location
        out["fullUrl"] = resp.location.split("/_history/", 1)[0]
    if resp.etag:
        response["etag"] = resp.etag
    if e is not None and e.last_updated is not None:
        response["lastModified"] = instant(e.last_updated)
    elif resp.last_modified:
        us = parse_http_date(resp.last_modified)
        if us is not None:
            response["lastModified"] = instant(us)
    if resp.status >= 400:
        response["outcome"] = resp.resource
        out["response"] = response
        return out
    write = e is not None and e.method in ("POST", "PUT", "PATCH", "DELETE")
    body: Any = orjson.Fragment(resp.raw) if resp.raw is not None else resp.resource
    if e is not None and e.method == "HEAD":
        body = None
    if write and prefer == "minimal":
        body = None
    elif write and prefer == "OperationOutcome":
        response["outcome"] = outcome_message(f"{e.method} {e.path}: {response['status']}")  # type: ignore[union-attr]
        body = None
    if body is not None:
        if "fullUrl" not in out and e is not None and e.rid_id is not None and resp.status == 200:
            out["fullUrl"] = f"{base_url}/{e.path}"
        out["resource"] = body
    out["response"] = response
    return out


def preferred_return(req: FhirRequest) -> str | None:
    """The ``return`` preference of a Prefer header (http.html#ops), applied to every write entry."""
    for part in (req.header("prefer") or "").replace(" ", "").split(","):
        for item in part.split(";"):
            if item.startswith("return="):
                return item[len("return="):].strip('"')
    return None
