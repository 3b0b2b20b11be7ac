"""Where prefetch that the EHR did not send comes from (``prefetch.FhirSource``).

``LocalSource``: ``fhirServer`` is this server; the query goes through the FHIR router with the
Principal of the ``fhirAuthorization`` access token (authenticated like any other token), so the
token's SMART scopes and patient compartment limit what the service reads. ``RemoteSource``: any
other server, by HTTP GET with the token (https, or http to loopback only).
"""

from __future__ import annotations

from typing import Any
from urllib.parse import urlencode

from medcloud.cds.prefetch import FetchError, split
from medcloud.cds.request import HookRequest
from medcloud.errors import Unauthorized
from medcloud.fhir.context import FhirContext
from medcloud.fhir.exchange import ANONYMOUS_SCOPES, SYSTEM, FhirRequest, Principal
from medcloud.security.jwks import KeySetError, check_url

TIMEOUT = 10.0


class LocalSource:
    def __init__(self, ctx: FhirContext, principal: Principal, base: str):
        self.ctx = ctx
        self.principal = principal
        self.base = base

    def get(self, query: str) -> dict[str, Any] | None:
        from medcloud.fhir import router

        path, params = split(query)
        resp = router.handle(self.ctx, FhirRequest("GET", path, params, base_url=self.base, principal=self.principal))
        if resp.status == 404 and "/" in path:  # a read: not there (or not visible to this token)
            return None
        # A search answered 404 is the guard hiding a type the token's scopes do not cover: that is not
        # "no data", and a card must not say "missing" when it means "not allowed to look".
        if resp.status >= 400:
            detail = (resp.resource or {}).get("issue", [{}])[0].get("diagnostics", "") if resp.resource else ""
            raise FetchError(f"prefetch query {path} refused by this server ({resp.status}): {detail}")
        import orjson

        # Search Bundles carry stored resources as pre-serialised orjson Fragments: one round trip
        # turns them into plain JSON values.
        loaded: dict[str, Any] = orjson.loads(resp.raw if resp.resource is None and resp.raw is not None
                                              else orjson.dumps(resp.resource))
        return loaded


class RemoteSource:
    def __init__(self, base: str, token: str | None):
        self.base = base.rstrip("/")
        self.token = token

    def get(self, query: str) -> dict[str, Any] | None:
        import httpx

        path, params = split(query)
        url = f"{self.base}/{path}"
        try:
            check_url(url)
        except KeySetError as e:
            raise FetchError("fhirServer must be https (or http on loopback)") from e
        headers = {"Accept": "application/fhir+json"}
        if self.token:
            headers["Authorization"] = f"Bearer {self.token}"
        try:
            r = httpx.get(url, params=urlencode(params), headers=headers, timeout=TIMEOUT, follow_redirects=False)
        except httpx.HTTPError as e:
            raise FetchError(f"prefetch query {path} failed: {e}") from e
        if r.status_code == 404 and "/" in path:
            return None
        if r.status_code >= 400:
            raise FetchError(f"prefetch query {path} refused by {self.base} ({r.status_code})")
        body: dict[str, Any] = r.json()
        return body


def source_for(ctx: FhirContext, request: HookRequest, local_bases: set[str], ip: str | None
               ) -> LocalSource | RemoteSource | None:
    server = request.fhir_server
    if server is None:
        return None
    token = request.authorization.access_token if request.authorization else None
    if server.rstrip("/") in local_bases:
        if not ctx.settings.auth:
            principal = Principal(subject="anonymous", scopes=ANONYMOUS_SCOPES, source_ip=ip)
        elif token is None:
            return None
        else:
            from medcloud.security.http import EdgeAuth

            try:
                principal = EdgeAuth.of(ctx).authenticator.authenticate(f"Bearer {token}", ip)
            except Unauthorized as e:
                raise FetchError(f"fhirAuthorization refused by this server: {e}") from e
        return LocalSource(ctx, principal, server)
    if token is None:
        return None
    return RemoteSource(server, token)


def writer(ctx: FhirContext, base: str) -> Any:
    """Writes a RiskAssessment through the router as medcloud itself; returns ``RiskAssessment/id``."""
    from medcloud.errors import MedcloudError
    from medcloud.fhir import router

    def write(resource: dict[str, Any]) -> str:
        resp = router.handle(ctx, FhirRequest("POST", "RiskAssessment", body=resource,
                                              content_type="application/fhir+json", base_url=base,
                                              principal=SYSTEM))
        rid = resp.resource.get("id") if resp.resource else None
        if rid is None and resp.location:
            rid = resp.location.split("RiskAssessment/")[-1].split("/")[0]
        if resp.status >= 300 or not rid:
            detail = (resp.resource or {}).get("issue", [{}])[0].get("diagnostics", "")
            raise MedcloudError(f"the RiskAssessment could not be written ({resp.status}): {detail}")
        return f"RiskAssessment/{rid}"

    return write
