"""Authentication for medcloud's HTTP edges (FHIR, DICOMweb): one helper, one 401 shape.

Each edge asks ``EdgeAuth.principal(request)`` before it reads the body, so an unauthenticated
client cannot make the server read (or parse) a large upload. Refusals are answered by
``unauthorized_response``: an OperationOutcome (issue code ``login``) with the RFC 6750 §3
``WWW-Authenticate`` challenge, and are written to the audit trail.

Routes outside these edges (``/``, ``/healthz``, ``/auth/*``, ``/.well-known/*``) never call
this helper and stay public; so does the FHIR ``metadata`` interaction (``PUBLIC_FHIR``), which
SMART clients read before they have a token.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

import orjson
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import Response

from medcloud.errors import Unauthorized
from medcloud.fhir.exchange import ANONYMOUS_SCOPES, Principal, operation_outcome
from medcloud.security.audit import AuditRecord
from medcloud.security.authn import Authenticator, InvalidToken, MissingToken
from medcloud.security.startup import is_loopback

if TYPE_CHECKING:
    from medcloud.fhir.context import FhirContext

log = logging.getLogger("medcloud.security")

REALM = "medcloud"
# FHIR paths (relative to the base) answered without a token, for GET and HEAD.
PUBLIC_FHIR = frozenset({"metadata", ".well-known/smart-configuration"})


class EdgeAuth:
    """Who is asking, for one app: anonymous when ``Settings.auth`` is off, else the token's Principal."""

    def __init__(self, ctx: FhirContext, authenticator: Authenticator | None = None):
        if not ctx.settings.auth and not is_loopback(ctx.settings.host):
            # ``medcloud serve`` refuses this already; an app built another way (uvicorn
            # factory, embedding) must not serve everything to everyone either.
            raise ValueError(f"auth = false is only allowed on a loopback host, not {ctx.settings.host!r}")
        self.ctx = ctx
        self.enabled = ctx.settings.auth
        self.authenticator = authenticator or Authenticator(ctx.settings, ctx.db)

    @classmethod
    def of(cls, ctx: FhirContext) -> EdgeAuth:
        """The context's EdgeAuth, built on first use, so every edge of an app shares one token cache."""
        if ctx.edge_auth is None:
            ctx.edge_auth = cls(ctx)
        return ctx.edge_auth

    async def principal(self, request: Request) -> Principal:
        """The caller's Principal; raises Unauthorized (MissingToken / InvalidToken) and records it."""
        ip = request.client.host if request.client else None
        if not self.enabled:
            return Principal(subject="anonymous", scopes=ANONYMOUS_SCOPES, source_ip=ip)
        headers = request.headers.getlist("authorization")
        header = headers[0] if len(headers) == 1 else None
        # The hot path: a token verified moments ago is a dictionary lookup, done on the event loop.
        hit = self.authenticator.cached(header, ip) if header else None
        if hit is not None:
            return hit
        try:
            if len(headers) > 1:
                raise InvalidToken("send one Authorization header, not several")
            # Verification may fetch an issuer's keys or read signing keys from the database.
            return await run_in_threadpool(self.authenticator.authenticate, header, ip)
        except Unauthorized as e:
            await run_in_threadpool(self._record_failure, e, ip)
            raise

    def public(self, request: Request) -> Principal:
        """The Principal of a request to a public path: anonymous, no scopes."""
        ip = request.client.host if request.client else None
        if not self.enabled:
            return Principal(subject="anonymous", scopes=ANONYMOUS_SCOPES, source_ip=ip)
        return Principal(subject="anonymous", source_ip=ip)

    def _record_failure(self, err: Unauthorized, ip: str | None) -> None:
        subject = err.subject if isinstance(err, InvalidToken) else None
        client_id = err.client_id if isinstance(err, InvalidToken) else None
        try:
            self.ctx.guard.record(AuditRecord(
                recorded=self.ctx.clock(), interaction="authenticate", who=subject or "unknown",
                client_id=client_id, source_ip=ip, resource=None, patient=None, status=401))
        except Exception:  # the refusal stands even if the audit store is unavailable; say so loudly
            log.exception("could not record an authentication failure from %s", ip)


def challenge(err: Unauthorized) -> str:
    """The ``WWW-Authenticate`` value for a refusal (RFC 6750 §3)."""
    if isinstance(err, MissingToken):
        return f'Bearer realm="{REALM}"'
    # RFC 6750 §3: error_description is printable ASCII without '"' and '\\'.
    description = "".join(c for c in err.message if " " <= c <= "~" and c not in '"\\')
    return f'Bearer realm="{REALM}", error="invalid_token", error_description="{description}"'


def unauthorized_response(err: Unauthorized) -> Response:
    """401 with an OperationOutcome (issue code ``login``) and the Bearer challenge."""
    return Response(orjson.dumps(operation_outcome(err.issues)), status_code=401,
                    media_type="application/fhir+json; charset=utf-8",
                    headers={"WWW-Authenticate": challenge(err)})
