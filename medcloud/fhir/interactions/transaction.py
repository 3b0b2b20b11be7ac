"""batch and transaction Bundles (http.html#transaction): POST [base] with a Bundle.

A transaction runs in one database transaction: every entry succeeds or nothing is written, and the
failing entry's error (with its position) is the answer. Entries are processed in the order of
http.html#trules (DELETE, POST, PUT/PATCH, GET/HEAD); identities are resolved before anything is
written so that links between entries can be rewritten (``_references``).

Plain creates are the bulk of any ingest (a Synthea patient is ~2,500 of them). They are validated and
indexed one by one but written with a few bulk ``store.write`` calls, and when no identity depends on
the database (no conditional create/update/patch/delete, no conditional reference), that CPU work is
done before the write transaction opens, so a SQLite writer holds the lock only for the SQL.
Everything else goes through ``router.dispatch`` exactly as a single request would. A batch
(``batch.py``) runs each entry in its own transaction.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import parse_qsl

from sqlalchemy import Connection

from medcloud.errors import Invalid, MultipleMatches, NotFound, PreconditionFailed
from medcloud.fhir import router, search
from medcloud.fhir.bundles import bundle
from medcloud.fhir.context import FhirContext
from medcloud.fhir.definitions import resource_types
from medcloud.fhir.exchange import FhirRequest, FhirResponse
from medcloud.fhir.interactions import batch
from medcloud.fhir.interactions._entries import (
    ORDER,
    Entry,
    at_entry,
    parse_entry,
    preferred_return,
    response_entry,
)
from medcloud.fhir.interactions._references import Rewriter
from medcloud.fhir.interactions._write import new_version
from medcloud.fhir.resource_meta import check_id, etag, http_date, location
from medcloud.storage.resources import Stored

# Creates per bulk write: big enough to amortise round trips, small enough to keep statements sane.
WRITE_CHUNK = 1000
_TYPES = frozenset(resource_types())


def process(ctx: FhirContext, req: FhirRequest) -> FhirResponse:
    """Run a batch or transaction Bundle (the body of POST [base]); raises Invalid for other bodies."""
    body = req.body
    if not isinstance(body, dict) or body.get("resourceType") != "Bundle":
        raise Invalid("POST to the base URL needs a Bundle of type batch or transaction", expression="Bundle")
    kind = body.get("type")
    if kind not in ("batch", "transaction"):
        raise Invalid(f"Bundle.type must be batch or transaction, not {kind!r}", expression="Bundle.type")
    raw_entries = body.get("entry", [])
    if not isinstance(raw_entries, list):
        raise Invalid("Bundle.entry must be an array", expression="Bundle.entry")
    if kind == "batch":
        return batch.run(ctx, req, raw_entries)
    return transaction(ctx, req, raw_entries)


def transaction(ctx: FhirContext, req: FhirRequest, raw_entries: list[Any]) -> FhirResponse:
    entries = [parse_entry(raw, i, req.base_url) for i, raw in enumerate(raw_entries)]
    _check_full_urls(entries)
    now = ctx.clock()
    tx = _Transaction(ctx, req, entries, now)
    tx.prepare()
    if tx.reads:
        # A GET entry may page (search, history); the cursor codec creates its signing key on first use
        # in a write transaction of its own, which on SQLite would wait for ours forever. Create it now.
        ctx.cursors.encode({}, now)
    with ctx.db.write() as conn:
        tx.run(conn)
    for e in tx.creates:  # plain creates bypass router.dispatch, which audits every other entry
        if e.target is not None and e.response is not None:
            router.audit(ctx, req, "create", e.target[0], e.target[1], e.response.status)
    prefer = preferred_return(req)
    out = []
    for e in entries:
        assert e.response is not None
        out.append(response_entry(req.base_url, e, e.response, prefer))
        e.response = None  # the entry is in ``out`` now; let go of what it held
    return FhirResponse(resource=bundle("transaction-response", out, bundle_id=ctx.new_id(), timestamp_us=now))


def _check_full_urls(entries: list[Entry]) -> None:
    seen: dict[str, int] = {}
    for e in entries:
        if e.full_url and e.method not in ("GET", "HEAD"):
            if e.full_url in seen:
                raise Invalid(f"Bundle.entry[{seen[e.full_url]}] and Bundle.entry[{e.index}] have the same fullUrl "
                              f"{e.full_url!r}", expression=f"Bundle.entry[{e.index}].fullUrl")
            seen[e.full_url] = e.index


def _conditional_identity(e: Entry) -> bool:
    if e.method == "POST":
        return e.is_create and "if-none-exist" in e.headers
    return e.method in ("PUT", "PATCH", "DELETE") and e.rid_id is None


class _NeedsDatabase(Exception):
    """A conditional reference met before the write transaction: rewrite that entry inside it."""


def _offline(query: str) -> str:
    raise _NeedsDatabase(query)


class _Transaction:
    def __init__(self, ctx: FhirContext, req: FhirRequest, entries: list[Entry], now: int):
        self.ctx = ctx
        self.req = req
        self.now = now
        self.conn: Connection | None = None
        ordered = sorted(entries, key=lambda e: (ORDER[e.method], e.index))
        self.deletes = [e for e in ordered if e.method == "DELETE"]
        self.posts = [e for e in ordered if e.method == "POST"]
        self.creates = [e for e in self.posts if e.is_create]
        self.updates = [e for e in ordered if e.method in ("PUT", "PATCH")]
        self.reads = [e for e in ordered if e.method in ("GET", "HEAD")]
        self.conditional = any(_conditional_identity(e) for e in entries)
        self.identified = False
        self.links: dict[str, str] = {}  # fullUrl -> "Type/id"
        self.claimed: dict[tuple[str, str], int] = {}  # (type, id) -> index of the entry acting on it
        self.ccreates: dict[tuple[str, tuple[tuple[str, str], ...]], Entry] = {}
        self.pending: list[Entry] = []  # entries whose links are not rewritten yet

    def prepare(self) -> None:
        """Everything that needs no database, before the write transaction (see the module doc)."""
        if self.conditional:
            return
        for e in self.deletes:
            with at_entry(e):
                self._identify_delete(e)
        self._identify()
        self._rewrite(Rewriter(self.links, _offline))

    def run(self, conn: Connection) -> None:
        self.conn = conn
        for e in self.deletes:
            with at_entry(e):
                if not self.identified:
                    self._identify_delete(e)
                e.response = self._delete(e)
        if not self.identified:
            self._identify()
        rewriter = Rewriter(self.links, self._conditional_reference)
        self._rewrite(rewriter)
        self._create()
        for e in self.posts:
            if not e.is_create:
                with at_entry(e):
                    e.response = self._dispatch(e.request(self.req))
        for e in self.updates:
            assert e.target is not None
            with at_entry(e):
                e.response = self._dispatch(e.request(self.req, path="/".join(e.target), query=[]))
        for e in self.reads:
            query = [(k, rewriter.rewrite_value(v)) for k, v in e.query]
            with at_entry(e):
                e.response = self._dispatch(e.request(self.req, query=query))

    # -- identities ----------------------------------------------------------------------------

    def _identify(self) -> None:
        for e in self.creates:
            with at_entry(e):
                self._identify_create(e)
        for e in self.updates:
            with at_entry(e):
                self._identify_update(e)
        self.identified = True
        self.pending = [e for e in self.posts + self.updates
                        if e.body is not None and e.existing is None and e.same_as is None]

    def _claim(self, e: Entry, rtype: str, rid_id: str) -> None:
        key = (rtype, rid_id)
        other = self.claimed.get(key)
        if other is not None:
            raise Invalid(f"Bundle.entry[{other}] and Bundle.entry[{e.index}] both act on {rtype}/{rid_id}; "
                          "a transaction may touch each resource once")
        self.claimed[key] = e.index
        e.target = key
        if e.full_url:
            self.links[e.full_url] = f"{rtype}/{rid_id}"

    def _match(self, rtype: str, query: list[tuple[str, str]], what: str) -> str | None:
        assert self.conn is not None
        found = search.matches(self.ctx, self.conn, self.req.principal, rtype, query, limit=2)
        if len(found) > 1:
            raise MultipleMatches(f"the {what} matches more than one {rtype}")
        return found[0].id if found else None

    def _identify_delete(self, e: Entry) -> None:
        rtype = e.rtype
        assert rtype is not None
        rid_id = e.rid_id or self._match(rtype, e.query, "conditional delete")
        if rid_id is not None:
            self._claim(e, rtype, rid_id)

    def _identify_create(self, e: Entry) -> None:
        rtype = e.rtype
        assert rtype is not None and e.resource is not None
        self.ctx.guard.authorize(self.req.principal, "create", rtype)
        if e.resource.get("resourceType") != rtype:
            raise Invalid(f"resourceType {e.resource.get('resourceType')!r} does not match the URL's type {rtype!r}",
                          expression="resourceType")
        condition = e.headers.get("if-none-exist")
        if condition is not None:
            assert self.conn is not None
            query = parse_qsl(condition.split("?", 1)[-1], keep_blank_values=True)
            key = (rtype, tuple(sorted(query)))
            first = self.ccreates.get(key)
            if first is not None:
                # The same conditional create twice: the second is satisfied by the first.
                e.same_as = first.index
                e.target = first.target
                if e.full_url and first.target:
                    self.links[e.full_url] = "/".join(first.target)
                return
            self.ccreates[key] = e
            self.ctx.db.dialect.lock_key(self.conn, f"ccreate:{rtype}?{sorted(query)}")
            found = search.matches(self.ctx, self.conn, self.req.principal, rtype, query, limit=2)
            if len(found) > 1:
                raise MultipleMatches(f"ifNoneExist {condition!r} matches more than one {rtype}")
            if found:
                e.existing = found[0]
                self._claim(e, rtype, found[0].id)
                return
        self._claim(e, rtype, self.ctx.new_id())

    def _identify_update(self, e: Entry) -> None:
        rtype = e.rtype
        assert rtype is not None and e.resource is not None
        rid_id = e.rid_id
        if e.method == "PATCH":
            if rid_id is None:
                rid_id = self._match(rtype, e.query, "conditional patch")
                if rid_id is None:
                    raise NotFound(f"the conditional patch matches no {rtype}")
            self._claim(e, rtype, rid_id)
            return
        if e.resource.get("resourceType") != rtype:
            raise Invalid(f"resourceType {e.resource.get('resourceType')!r} does not match the URL's type {rtype!r}",
                          expression="resourceType")
        if rid_id is None:
            assert self.conn is not None
            self.ctx.db.dialect.lock_key(self.conn, f"cupdate:{rtype}?{sorted(e.query)}")
            rid_id = self._match(rtype, e.query, "conditional update")
            body_id = e.resource.get("id")
            if rid_id is not None and body_id is not None and body_id != rid_id:
                raise Invalid(f"body id {body_id!r} differs from the matched resource {rid_id!r}")
            if rid_id is None:
                rid_id = body_id if isinstance(body_id, str) else self.ctx.new_id()
                check_id(rid_id)
            e.resource["id"] = rid_id
        self._claim(e, rtype, rid_id)

    def _conditional_reference(self, query: str) -> str:
        rtype, _, qs = query.partition("?")
        if rtype not in _TYPES:
            raise Invalid(f"conditional reference {query!r} names an unknown resource type")
        assert self.conn is not None
        found = search.matches(self.ctx, self.conn, self.req.principal, rtype,
                               parse_qsl(qs, keep_blank_values=True), limit=2)
        if len(found) > 1:
            raise MultipleMatches(f"conditional reference {query!r} matches more than one {rtype}")
        if not found:
            raise PreconditionFailed(f"conditional reference {query!r} matches no {rtype}")
        return f"{rtype}/{found[0].id}"

    # -- rewriting and preparing ---------------------------------------------------------------

    def _rewrite(self, rewriter: Rewriter) -> None:
        """Rewrite the links of pending entries and prepare the versions of plain creates."""
        left = []
        for e in self.pending:
            with at_entry(e):
                try:
                    e.body = rewriter.rewrite(e.body)
                except _NeedsDatabase:
                    left.append(e)
                    continue
                if e.method != "PATCH":
                    e.resource = e.body
                if e.is_create:
                    self._prepare_create(e)
        self.pending = left

    def _prepare_create(self, e: Entry) -> None:
        assert e.resource is not None and e.target is not None
        self.ctx.guard.check_write(self.req.principal, e.target[0], e.resource)
        e.resource.pop("id", None)  # create ignores a client id (http.html#create)
        e.version = new_version(self.ctx, e.resource, e.target[1], 1, "POST", self.now)
        e.resource = e.body = None  # the version holds the serialised content now

    # -- writes and reads ----------------------------------------------------------------------

    def _delete(self, e: Entry) -> FhirResponse:
        if e.target is None:  # a conditional delete that matched nothing
            assert e.rtype is not None
            self.ctx.guard.authorize(self.req.principal, "delete", e.rtype)
            return FhirResponse(status=204)
        return self._dispatch(e.request(self.req, path="/".join(e.target), query=[]))

    def _create(self) -> None:
        assert self.conn is not None
        todo = [e for e in self.creates if e.version is not None]
        for start in range(0, len(todo), WRITE_CHUNK):
            chunk = todo[start:start + WRITE_CHUNK]
            self.ctx.store.write(self.conn, [e.version for e in chunk if e.version is not None])
            lm = http_date(self.now)
            for e in chunk:
                v = e.version
                assert v is not None
                e.response = FhirResponse(status=201, raw=v.content, etag=etag(1), last_modified=lm,
                                          location=f"{self.req.base_url}/{v.type}/{v.id}/_history/1")
                e.last_updated = self.now
                e.version = None
        by_index = {e.index: e for e in self.creates}
        for e in self.creates:
            if e.existing is not None:
                e.response = self._found(e.existing)
            elif e.same_as is not None:
                first = by_index[e.same_as]
                src = first.response
                assert src is not None
                e.response = FhirResponse(status=200, raw=src.raw, location=src.location, etag=src.etag,
                                          last_modified=src.last_modified)
                e.last_updated = first.last_updated

    def _found(self, s: Stored) -> FhirResponse:
        return FhirResponse(status=200, raw=s.content, location=location(self.req.base_url, s),
                            etag=etag(s.version), last_modified=http_date(s.last_updated))

    def _dispatch(self, sub: FhirRequest) -> FhirResponse:
        assert self.conn is not None
        route = router.resolve(sub)
        if route.own_transaction:
            raise Invalid(f"{sub.method} {sub.path} cannot run inside a transaction")
        return router.dispatch(self.ctx, self.conn, sub)
