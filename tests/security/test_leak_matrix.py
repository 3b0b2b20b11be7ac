"""The security leak matrix (issue 4): every scope kind against every path where servers leak.

A world of two patients is stored; each principal below may see only part of it. Every path is
tried with every principal, and the answer — status, body, headers, every page followed — must
not contain one id of a resource the principal may not read, nor count one (totals,
``_summary=count``, ``_has`` and chain criteria answer as if those resources did not exist).
The requests go through the real router, guard and SmartPolicy on SQLite and PostgreSQL; the
HTTP edge that turns tokens into these principals is tested in test_edge_auth.py.
"""

from __future__ import annotations

import base64
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qsl, urlsplit

import orjson
import pytest

from medcloud.fhir import router
from medcloud.fhir.exchange import SYSTEM, FhirRequest, FhirResponse, Principal

LAB = "http://terminology.hl7.org/CodeSystem/observation-category|laboratory"


_requests_made: list[Any] = []


def _call(services: Any, method: str, path: str, body: Any = None, query: Any = (), principal: Principal = SYSTEM,
          headers: dict[str, str] | None = None) -> FhirResponse:
    if principal is not SYSTEM:
        _requests_made.append([method, path, list(query), body, headers])
    req = FhirRequest(method, path, list(query), headers=headers or {}, body=body, principal=principal)
    return router.handle(services.fhir, req)


def _text(resp: FhirResponse) -> str:
    body = resp.raw if resp.raw is not None else orjson.dumps(resp.resource) if resp.resource is not None else b""
    if resp.file is not None:
        body += resp.file.read_bytes()
    return body.decode() + orjson.dumps(resp.headers).decode()


def _json(resp: FhirResponse) -> Any:
    return orjson.loads(_text_body(resp))


def _text_body(resp: FhirResponse) -> bytes:
    return resp.raw if resp.raw is not None else orjson.dumps(resp.resource)


@dataclass
class World:
    ids: dict[str, str]

    def __getitem__(self, k: str) -> str:
        return self.ids[k]


def _observation(pid: str, code: str, category: str) -> dict[str, Any]:
    return {"resourceType": "Observation", "status": "final",
            "category": [{"coding": [{"system": "http://terminology.hl7.org/CodeSystem/observation-category",
                                      "code": category}]}],
            "code": {"coding": [{"system": "http://loinc.org", "code": code}]},
            "subject": {"reference": f"Patient/{pid}"}, "identifier": [{"system": "urn:obs", "value": f"{pid}-{code}"}]}


@pytest.fixture
def world(services: Any) -> World:
    ids: dict[str, str] = {}

    def create(key: str, resource: dict[str, Any]) -> str:
        if resource["resourceType"] == "Binary":
            resource["data"] = base64.b64encode(_mark(key).encode()).decode()
        else:
            resource["text"] = {"status": "generated",
                                "div": f'<div xmlns="http://www.w3.org/1999/xhtml">{_mark(key)}</div>'}
        r = _call(services, "POST", resource["resourceType"], resource)
        assert r.status == 201, r.resource
        ids[key] = _json(r)["id"]
        return ids[key]

    create("org", {"resourceType": "Organization", "name": "General Hospital"})
    for p, family in (("me", "Mine"), ("other", "Secretson")):
        pid = create(p, {"resourceType": "Patient", "name": [{"family": family}], "gender": "female",
                         "identifier": [{"system": "urn:mrn", "value": f"mrn-{p}"}],
                         "managingOrganization": {"reference": f"Organization/{ids['org']}"}})
        create(f"{p}-lab", _observation(pid, "2345-7", "laboratory"))
        create(f"{p}-vital", _observation(pid, "8867-4", "vital-signs"))
        create(f"{p}-cond", {"resourceType": "Condition", "subject": {"reference": f"Patient/{pid}"},
                             "code": {"coding": [{"system": "http://snomed.info/sct", "code": "44054006"}]}})
        create(f"{p}-enc", {"resourceType": "Encounter", "status": "finished",
                            "class": {"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": "AMB"},
                            "subject": {"reference": f"Patient/{pid}"}})
        create(f"{p}-bin", {"resourceType": "Binary", "contentType": "text/plain",
                            "securityContext": {"reference": f"Patient/{pid}"}})
    create("group", {"resourceType": "Group", "type": "person", "actual": True,
                     "member": [{"entity": {"reference": f"Patient/{ids['me']}"}},
                                {"entity": {"reference": f"Patient/{ids['other']}"}}]})
    # A second version of the other patient's observation: history must not show it either.
    upd = _observation(ids["other"], "2345-7", "laboratory")
    upd["id"] = ids["other-lab"]
    upd["status"] = "amended"
    upd["text"] = {"status": "generated", "div": f'<div xmlns="http://www.w3.org/1999/xhtml">{_mark("other-lab")}</div>'}
    assert _call(services, "PUT", f"Observation/{ids['other-lab']}", upd).status == 200
    return World(ids)


# ------------------------------------------------------------------ the scope kinds


@dataclass(frozen=True)
class Kind:
    name: str
    scopes: str
    patient: bool  # launched with the "me" patient
    hidden: Callable[[World], set[str]]  # keys (of World.ids) of the resources the principal may not see

    def principal(self, w: World) -> Principal:
        return Principal(subject=f"app-{self.name}", client_id="app", scopes=tuple(self.scopes.split()),
                         patient=w["me"] if self.patient else None)


def _others(w: World) -> set[str]:
    return {k for k in w.ids if k.startswith("other")}


KINDS = [
    Kind("patient-v2-wildcard", "launch/patient patient/*.rs", True, _others),
    Kind("patient-v1-read", "launch/patient patient/*.read", True, _others),
    Kind("patient-typed", "patient/Observation.rs patient/Patient.rs", True,
         lambda w: _others(w) | {k for k in w.ids if k.endswith(("-cond", "-enc", "-bin"))} | {"group"}),
    Kind("patient-restricted", f"patient/Observation.rs?category={LAB} patient/Patient.r", True,
         lambda w: _others(w) | {"me-vital", "me-cond", "me-enc", "me-bin", "group"}),
    Kind("user-restricted", f"user/Observation.rs?category={LAB}", False,
         lambda w: {k for k in w.ids if not k.endswith("-lab")}),
    Kind("system-typed", "system/Patient.rs", False, lambda w: {k for k in w.ids if k not in ("me", "other")}),
    Kind("no-data-scopes", "openid fhirUser launch/patient", True, lambda w: set(w.ids)),
]

def _mark(key: str) -> str:
    """A string only the content of resource ``key`` holds (its narrative, or a Binary's data)."""
    return f"secret-mark-of-{key}!"


def _marks(w: World, keys: set[str]) -> set[str]:
    """What betrays hidden resources: their content marks, and their ids (those of resources nobody
    else references: patients and the organization are named by resources one may read)."""
    out = {_mark(k) for k in keys} | {base64.b64encode(_mark(k).encode()).decode() for k in keys if k.endswith("-bin")}
    return out | {w[k] for k in keys if k not in ("me", "other", "org")}


# ------------------------------------------------------------------ the leak paths


def _pages(services: Any, first: FhirResponse, p: Principal) -> list[FhirResponse]:
    """``first`` and every page its ``next`` links lead to (followed as the same principal)."""
    out = [first]
    while first.status == 200:
        body = _json(first)
        nxt = [link["url"] for link in body.get("link", []) if link.get("relation") == "next"]
        if not nxt:
            break
        url = urlsplit(nxt[0])
        path = url.path.split("/fhir", 1)[1].strip("/")
        first = _call(services, "GET", path, query=parse_qsl(url.query), principal=p)
        out.append(first)
    return out


def _search(services: Any, p: Principal, path: str, **query: str) -> list[FhirResponse]:
    q = [(k.replace("__", ":").replace("_dot_", "."), v) for k, v in query.items()]
    return _pages(services, _call(services, "GET", path, query=[*q, ("_count", "2")], principal=p), p)


def _export(services: Any, p: Principal, path: str) -> list[FhirResponse]:
    r = _call(services, "GET", path, principal=p, headers={"prefer": "respond-async"})
    if r.status != 202:
        return [r]
    status_path = r.headers["Content-Location"].split("/fhir/", 1)[1]
    path_, _, query = status_path.partition("?")
    deadline = time.monotonic() + 60
    while True:
        s = _call(services, "GET", path_, query=[tuple(query.split("=", 1))], principal=p)
        if s.status != 202:
            break
        assert time.monotonic() < deadline, "export did not finish"
        time.sleep(0.05)
    out = [s]
    if s.status == 200:
        for f in _json(s)["output"]:
            fpath, _, fq = f["url"].split("/fhir/", 1)[1].partition("?")
            out.append(_call(services, "GET", fpath, query=[tuple(x.split("=", 1)) for x in fq.split("&") if x],
                             principal=p, headers={"accept": "application/fhir+ndjson"}))
    return out


def _batch(kind: str, entries: list[dict[str, Any]]) -> dict[str, Any]:
    return {"resourceType": "Bundle", "type": kind, "entry": entries}


PATHS: dict[str, Callable[[Any, World, Principal], list[FhirResponse]]] = {
    "read": lambda s, w, p: [_call(s, "GET", f"{t}/{w[k]}", principal=p) for t, k in
                             (("Patient", "other"), ("Observation", "other-lab"), ("Observation", "me-vital"),
                              ("Condition", "me-cond"), ("Binary", "other-bin"), ("Group", "group"))],
    "vread": lambda s, w, p: [_call(s, "GET", f"Observation/{w['other-lab']}/_history/{v}", principal=p)
                              for v in ("1", "2")] + [_call(s, "GET", f"Observation/{w['me-vital']}/_history/1",
                                                            principal=p)],
    "history-instance": lambda s, w, p: [_call(s, "GET", f"Observation/{w['other-lab']}/_history", principal=p)],
    "history-type": lambda s, w, p: _pages(s, _call(s, "GET", "Observation/_history", [("_count", "2")], principal=p), p),
    "history-system": lambda s, w, p: _pages(s, _call(s, "GET", "_history", [("_count", "2")], principal=p), p),
    "search-type": lambda s, w, p: _search(s, p, "Observation") + _search(s, p, "Patient"),
    "search-system": lambda s, w, p: _search(s, p, "", _type="Patient,Observation,Condition,Binary"),
    "search-compartment": lambda s, w, p: _search(s, p, f"Patient/{w['other']}/Observation"),
    "total": lambda s, w, p: _search(s, p, "Observation", _total="accurate"),
    "summary-count": lambda s, w, p: [_call(s, "GET", "Observation", [("_summary", "count")], principal=p),
                                      _call(s, "GET", "Condition", [("_summary", "count")], principal=p)],
    "include": lambda s, w, p: _search(s, p, "Observation", _include="Observation:subject")
    + _search(s, p, "Patient", _include="Patient:organization"),
    "revinclude": lambda s, w, p: _search(s, p, "Patient", _revinclude="Observation:subject")
    + _search(s, p, "Patient", _revinclude="Condition:subject"),
    "include-iterate": lambda s, w, p: _search(s, p, "Encounter", _include="Encounter:subject",
                                               **{"_revinclude:iterate": "Observation:subject"}),
    "chain": lambda s, w, p: _search(s, p, "Observation", subject__Patient_dot_name="Secretson")
    + _search(s, p, "Observation", **{"subject.identifier": "urn:mrn|mrn-other"}),
    "has": lambda s, w, p: _search(s, p, "Patient", **{"_has:Observation:subject:code": "8867-4"})
    + _search(s, p, "Patient", **{"_has:Condition:subject:code": "44054006"}),
    "everything": lambda s, w, p: _pages(s, _call(s, "GET", f"Patient/{w['other']}/$everything", principal=p), p)
    + _pages(s, _call(s, "GET", f"Patient/{w['me']}/$everything", principal=p), p),
    "export-patient": lambda s, w, p: _export(s, p, "Patient/$export"),
    "export-group": lambda s, w, p: _export(s, p, f"Group/{w['group']}/$export"),
    "export-system": lambda s, w, p: _export(s, p, "$export"),
    "batch": lambda s, w, p: [_call(s, "POST", "", _batch("batch", [
        {"request": {"method": "GET", "url": f"Patient/{w['other']}"}},
        {"request": {"method": "GET", "url": f"Observation?subject=Patient/{w['other']}"}},
        {"request": {"method": "GET", "url": f"Observation/{w['me-vital']}"}},
        {"request": {"method": "DELETE", "url": f"Observation/{w['other-vital']}"}},
    ]), principal=p)],
    "transaction": lambda s, w, p: [_call(s, "POST", "", _batch("transaction", [
        {"request": {"method": "GET", "url": f"Observation/{w['other-lab']}"}},
    ]), principal=p), _call(s, "POST", "", _batch("transaction", [
        {"resource": {**_observation(w["other"], "2345-7", "laboratory"), "id": w["other-lab"], "status": "cancelled"},
         "request": {"method": "PUT", "url": f"Observation/{w['other-lab']}"}},
    ]), principal=p)],
    "conditional-create": lambda s, w, p: [_call(
        s, "POST", "Observation", _observation(w["me"], "2345-7", "laboratory"), principal=p,
        headers={"if-none-exist": f"identifier=urn:obs|{w['other']}-2345-7"})],
    "conditional-update": lambda s, w, p: [_call(
        s, "PUT", "Observation", _observation(w["other"], "2345-7", "laboratory"),
        query=[("identifier", f"urn:obs|{w['other']}-2345-7")], principal=p)],
    "conditional-delete": lambda s, w, p: [_call(
        s, "DELETE", "Observation", query=[("identifier", f"urn:obs|{w['other']}-8867-4")], principal=p)],
    "operations": lambda s, w, p: [_call(s, "GET", f"Observation/{w['other-lab']}/$meta", principal=p),
                                   _call(s, "POST", f"Observation/{w['other-lab']}/$validate", principal=p,
                                         body={"resourceType": "Parameters", "parameter": [
                                             {"name": "mode", "valueCode": "delete"}]})],
}


CASES = [(k, path) for k in KINDS for path in PATHS]


@pytest.mark.parametrize(("kind", "path"), CASES, ids=[f"{k.name}-{p}" for k, p in CASES])
def test_no_path_shows_what_the_scope_hides(services: Any, world: World, client: Any, kind: Kind, path: str) -> None:
    hidden = _marks(world, kind.hidden(world))
    _requests_made.clear()
    principal = kind.principal(world)
    responses = PATHS[path](services, world, principal)
    asked = orjson.dumps(_requests_made).decode()
    for resp in responses:
        assert resp.status < 500, _text(resp)
        text = _text(resp)
        # an id the request itself named may be echoed in an error message; content marks may not
        leaked = {i for i in hidden if i in text and (i.startswith("secret-") or i not in asked)}
        assert not leaked, f"{kind.name} / {path}: {resp.status} shows {leaked}"
    # Nothing the principal may not write was changed: the hidden resources are as stored.
    for key in ("other-lab", "other-vital"):
        r = _call(services, "GET", f"Observation/{world[key]}")
        assert r.status == 200
        assert _json(r)["status"] == ("amended" if key == "other-lab" else "final")


def test_counts_answer_only_for_what_the_principal_sees(services: Any, world: World) -> None:
    """``_summary=count`` / ``_total`` / ``_has`` / chains: no existence oracle."""
    me = KINDS[0].principal(world)
    lab_only = Kind("lab", f"patient/Observation.rs?category={LAB} patient/Patient.rs", True, _others).principal(world)

    def count(p: Principal, path: str, *query: tuple[str, str]) -> int:
        r = _call(services, "GET", path, query=[*query, ("_summary", "count")], principal=p)
        assert r.status == 200
        return int(_json(r)["total"])

    assert count(me, "Observation") == 2
    assert count(me, "Patient") == 1
    assert count(lab_only, "Observation") == 1
    assert count(lab_only, "Observation", ("code", "8867-4")) == 0  # my own vital sign, outside the scope
    assert count(me, "Observation", ("subject:Patient.name", "Secretson")) == 0
    # _has through a type the scope does not cover answers nothing, even for my own record
    assert count(lab_only, "Patient", ("_has:Observation:subject:code", "8867-4")) == 0
    assert count(lab_only, "Patient", ("_has:Observation:subject:code", "2345-7")) == 1
    assert count(lab_only, "Patient", ("_has:Condition:subject:code", "44054006")) == 0
    assert count(me, "Patient", ("_has:Condition:subject:code", "44054006")) == 1
    r = _call(services, "GET", "Observation", query=[("_total", "accurate"), ("_count", "1")], principal=me)
    assert _json(r)["total"] == 2


def test_binary_follows_its_security_context(services: Any, world: World) -> None:
    me = KINDS[0].principal(world)
    assert _call(services, "GET", f"Binary/{world['me-bin']}", principal=me).status == 200
    assert _call(services, "GET", f"Binary/{world['other-bin']}", principal=me).status == 404


def test_paging_link_replayed_by_another_principal_is_refused(services: Any, world: World) -> None:
    me = KINDS[0].principal(world)
    first = _call(services, "GET", "Observation", query=[("_count", "1")], principal=me)
    nxt = next(lk["url"] for lk in _json(first)["link"] if lk["relation"] == "next")
    cursor = nxt.split("_cursor=")[1]
    again = _call(services, "GET", "Observation", query=[("_cursor", cursor)], principal=me)
    assert again.status == 200
    for thief in (Principal(subject="app-patient-v2-wildcard", client_id="app", scopes=me.scopes, patient=world["other"]),
                  Principal(subject="someone", client_id="app", scopes=me.scopes, patient=world["me"]),
                  Principal(subject=me.subject, client_id="app", scopes=("system/*.rs",))):
        r = _call(services, "GET", "Observation", query=[("_cursor", cursor)], principal=thief)
        assert r.status == 403 and world["me-lab"] not in _text(r) and world["me-vital"] not in _text(r)


def test_matrix_size_is_reported() -> None:
    # The issue asks for the count of paths x scopes tried; keep it visible in the test output.
    assert len(CASES) == len(KINDS) * len(PATHS) >= 150


def test_audit_trail_is_for_administrators_only(services: Any, world: World) -> None:
    admin = Principal(subject="root", client_id="admin", scopes=("medcloud/admin",))
    r = _call(services, "GET", "AuditEvent", query=[("_count", "5")], principal=admin)
    assert r.status == 200 and _json(r)["resourceType"] == "Bundle"
    for kind in KINDS:
        r = _call(services, "GET", "AuditEvent", principal=kind.principal(world))
        assert r.status == 404, kind.name
