"""The authorization server's HTTP edge: ``/auth/*`` and ``/.well-known/smart-configuration``.

Every endpoint answers a malformed request with a 4xx: token, introspection and revocation
errors as RFC 6749 §5.2 JSON (``invalid_client`` with 401), the authorize endpoint with an error
page or a redirect carrying ``error``. Request bodies are ``application/x-www-form-urlencoded``,
at most MAX_FORM_BYTES, and a parameter may appear only once (RFC 6749 §3.1, §3.2).
Database and hashing work runs in the thread pool.
"""

from __future__ import annotations

import base64
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any
from urllib.parse import parse_qsl, unquote_plus

import jwt
import orjson
from sqlalchemy.exc import OperationalError
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, RedirectResponse, Response
from starlette.routing import Route

from medcloud.errors import MedcloudError
from medcloud.fhir.context import FhirContext
from medcloud.security.audit import AUTHENTICATE, AuditRecord
from medcloud.security.oauth import grants, signing, tokens
from medcloud.security.oauth.authorize import (
    PageError,
    RedirectError,
    csrf_ok,
    csrf_token,
    new_cookie,
    parse_request,
)
from medcloud.security.oauth.client_auth import authenticate_client
from medcloud.security.oauth.discovery import smart_configuration
from medcloud.security.oauth.errors import OAuthError, invalid_request
from medcloud.security.oauth.hashing import verify_secret
from medcloud.security.oauth.pages import consent_page, error_page
from medcloud.security.oauth.store import Client, get_user
from medcloud.security.scopes import ADMIN_SCOPE

log = logging.getLogger("medcloud.security")

MAX_FORM_BYTES = 64 * 1024
MAX_FIELDS = 64
CSRF_COOKIE = "medcloud_oauth_csrf"
_NO_STORE = {"Cache-Control": "no-store", "Pragma": "no-cache"}
_PAGE_HEADERS = {**_NO_STORE, "X-Frame-Options": "DENY", "Referrer-Policy": "no-referrer",
                 "Content-Security-Policy": "default-src 'none'; style-src 'unsafe-inline'; frame-ancestors 'none'"}
_CORS = {"Access-Control-Allow-Origin": "*"}
_GRANTS: dict[str, Callable[..., dict[str, Any]]] = {
    "client_credentials": grants.client_credentials,
    "authorization_code": grants.authorization_code,
    "refresh_token": grants.refresh_token,
}


def routes(ctx: FhirContext) -> list[Route]:
    """Mount before the FHIR catch-all, so ``/fhir/.well-known/...`` is not read as a FHIR path."""
    settings, db = ctx.settings, ctx.db
    token_url = settings.auth_issuer + "/token"

    async def discovery(request: Request) -> Response:
        return JSONResponse(smart_configuration(settings), headers=_CORS)

    async def jwks(request: Request) -> Response:
        async def run() -> Response:
            keys = await run_in_threadpool(signing.jwks, db)
            return _json(keys, headers={**_CORS, "Cache-Control": "max-age=60"})
        return await _guarded(run)

    async def token(request: Request) -> Response:
        async def run() -> Response:
            form = await _form(request)
            grant_type = form.get("grant_type")
            if not grant_type:
                raise invalid_request("grant_type is required")
            handler = _GRANTS.get(grant_type)
            if handler is None:
                raise OAuthError("unsupported_grant_type", f"unsupported grant_type {grant_type[:60]!r}")

            def issue() -> dict[str, Any]:
                try:
                    client = authenticate_client(db, form, request.headers.get("authorization"),
                                                 token_url=token_url, allow_public=grant_type != "client_credentials")
                    body = handler(db, settings, client, form)
                except OAuthError as e:
                    hint = _client_hint(form, request)
                    _audit(ctx, request, who=hint or "unknown", client_id=hint, patient=None, status=e.status)
                    raise
                claims = jwt.decode(body["access_token"], options={"verify_signature": False})
                _audit(ctx, request, who=claims["sub"], client_id=client.client_id, patient=body.get("patient"),
                       status=200)
                return body

            return _json(await run_in_threadpool(issue), headers={**_NO_STORE, **_CORS})
        return await _guarded(run, basic=_uses_basic(request))

    async def introspect(request: Request) -> Response:
        async def run() -> Response:
            form = await _form(request)

            def answer() -> dict[str, Any]:
                client = authenticate_client(db, form, request.headers.get("authorization"), token_url=token_url,
                                             allow_public=False)
                return _introspect(ctx, client, _required(form, "token"))

            return _json(await run_in_threadpool(answer), headers=_NO_STORE)
        return await _guarded(run, basic=_uses_basic(request))

    async def revoke(request: Request) -> Response:
        async def run() -> Response:
            form = await _form(request)

            def answer() -> dict[str, Any]:
                client = authenticate_client(db, form, request.headers.get("authorization"), token_url=token_url,
                                             allow_public=True)
                _revoke(ctx, client, _required(form, "token"))
                return {}

            return _json(await run_in_threadpool(answer), headers={**_NO_STORE, **_CORS})
        return await _guarded(run, basic=_uses_basic(request))

    async def authorize_get(request: Request) -> Response:
        try:
            pairs = parse_qsl(request.url.query, keep_blank_values=True, max_num_fields=MAX_FIELDS)
        except ValueError:
            return _page(error_page("too many parameters"), 400)
        params = dict(pairs)
        if len(params) != len(pairs):
            return _page(error_page("a parameter was sent more than once"), 400)
        cookie = request.cookies.get(CSRF_COOKIE) or ""
        if len(cookie) != 48:
            cookie = new_cookie()

        def show() -> Response:
            req = parse_request(db, settings, params)
            return _page(consent_page(req, csrf_token(db, cookie, req), ask_patient=req.wants_patient()), 200)

        response = await _authorize(show)
        if response.status_code == 200:
            response.set_cookie(CSRF_COOKIE, cookie, httponly=True, samesite="lax", path="/auth",
                                secure=settings.public_base.startswith("https:"))
        return response

    async def authorize_post(request: Request) -> Response:
        try:
            form = await _form(request)
        except OAuthError as e:
            return _page(error_page(e.description), 400)
        cookie = request.cookies.get(CSRF_COOKIE)
        return await _authorize(lambda: _decide(ctx, request, form, cookie))

    async def token_preflight(request: Request) -> Response:
        return Response(status_code=204, headers={**_CORS, "Access-Control-Allow-Methods": "POST",
                                                  "Access-Control-Allow-Headers": "Authorization, Content-Type",
                                                  "Access-Control-Max-Age": "600"})

    return [
        Route("/.well-known/smart-configuration", discovery, methods=["GET"]),
        Route("/fhir/.well-known/smart-configuration", discovery, methods=["GET"]),
        Route("/auth/jwks", jwks, methods=["GET"]),
        Route("/auth/token", token, methods=["POST"]),
        Route("/auth/token", token_preflight, methods=["OPTIONS"]),
        Route("/auth/introspect", introspect, methods=["POST"]),
        Route("/auth/revoke", revoke, methods=["POST"]),
        Route("/auth/authorize", authorize_get, methods=["GET"]),
        Route("/auth/authorize", authorize_post, methods=["POST"]),
    ]


# -- authorize ----------------------------------------------------------------------------------

def _decide(ctx: FhirContext, request: Request, form: dict[str, str], cookie: str | None) -> Response:
    db = ctx.db
    req = parse_request(db, ctx.settings, form)
    if not csrf_ok(db, cookie, form.get("csrf"), req):
        raise PageError("this form has expired or was not sent from this server; start the sign-in again", 403)
    decision = form.get("decision")
    if decision == "deny":
        return RedirectResponse(req.redirect(error="access_denied", error_description="the user denied access"), 303)
    if decision != "approve":
        raise PageError("choose Approve or Deny")
    username = form.get("username", "")

    def again(message: str, status: int) -> Response:
        assert cookie is not None
        page = consent_page(req, csrf_token(db, cookie, req), error=message, ask_patient=req.wants_patient(),
                            username=username)
        return _page(page, status)

    user = get_user(db, username)
    if not verify_secret(form.get("password", ""), user.password_hash if user else None) or user is None \
            or user.disabled:
        _audit(ctx, request, who=username[:128] or "unknown", client_id=req.client.client_id, patient=None,
               status=401)
        return again("wrong user name or password", 401)
    scopes = req.scopes
    if user.patient:  # a patient's account: data scopes are confined to that patient
        scopes = [s for s in scopes if not s.startswith("user/")]
        if not any(s.startswith("patient/") for s in scopes):
            return RedirectResponse(req.redirect(error="invalid_scope",
                                                 error_description="a patient account gets patient/ scopes only"), 303)
    patient = None
    if req.wants_patient():
        chosen = form.get("patient", "").strip()
        if user.patient:
            if chosen and chosen != user.patient:
                return again("your account is linked to a patient; you cannot choose another one", 400)
            patient = user.patient
        elif not chosen:
            return again("enter the id of the patient this application works on", 400)
        else:
            found = ctx.store.read_now(db, "Patient", chosen) if len(chosen) <= 64 else None
            if found is None or found.deleted:
                return again(f"there is no Patient with id {chosen!r}", 400)
            patient = chosen
    code = grants.create_code(db, client_id=req.client.client_id, username=user.username,
                              redirect_uri=req.redirect_uri, scope=" ".join(scopes), patient=patient,
                              fhir_user=user.fhir_user if "fhirUser" in scopes else None,
                              code_challenge=req.code_challenge)
    _audit(ctx, request, who=user.username, client_id=req.client.client_id, patient=patient, status=200)
    return RedirectResponse(req.redirect(code=code), 303)


async def _authorize(run: Callable[[], Response]) -> Response:
    try:
        return await run_in_threadpool(run)
    except PageError as e:
        return _page(error_page(e.message), e.status)
    except RedirectError as e:
        return RedirectResponse(e.location, 303, headers=_NO_STORE)
    except OperationalError:
        log.exception("authorization request failed: database unavailable")
        return _page(error_page("the server is busy; try again in a moment"), 503)


def _page(html: str, status: int) -> Response:
    return HTMLResponse(html, status, headers=_PAGE_HEADERS)


# -- introspection and revocation --------------------------------------------------------------

def _introspect(ctx: FhirContext, client: Client, token: str) -> dict[str, Any]:
    """RFC 7662 §2.2. A client sees its own tokens; an admin client sees every token."""
    admin = ADMIN_SCOPE in client.scopes
    claims = _access_claims(ctx, token)
    if claims is not None:
        active = not tokens.is_revoked(ctx.db, claims["jti"]) and tokens.client_active(ctx.db, claims["client_id"])
        if not active or not (admin or claims["client_id"] == client.client_id):
            return {"active": False}
        shown = ("scope", "client_id", "sub", "exp", "iat", "nbf", "iss", "aud", "jti", "patient", "fhirUser")
        return {"active": True, "token_type": "Bearer", **{k: claims[k] for k in shown if k in claims}}
    row = grants.refresh_info(ctx.db, token)
    if row is None or row["rotated"] or row["revoked"] or row["expires"] < time.time() \
            or not (admin or row["client_id"] == client.client_id) or not tokens.client_active(ctx.db, row["client_id"]):
        return {"active": False}
    out: dict[str, Any] = {"active": True, "token_type": "refresh_token", "scope": row["scope"], "client_id": row["client_id"],
           "sub": row["subject"], "exp": row["expires"], "iat": row["issued"], "iss": ctx.settings.auth_issuer}
    if row["patient"]:
        out["patient"] = row["patient"]
    return out


def _revoke(ctx: FhirContext, client: Client, token: str) -> None:
    """RFC 7009 §2.1: unknown tokens and other clients' tokens are answered 200 and left alone."""
    admin = ADMIN_SCOPE in client.scopes
    claims = _access_claims(ctx, token)
    if claims is not None:
        if admin or claims["client_id"] == client.client_id:
            tokens.revoke(ctx.db, claims)
        return
    grants.revoke_refresh_family(ctx.db, token, None if admin else client)


def _access_claims(ctx: FhirContext, token: str) -> dict[str, Any] | None:
    if token.count(".") != 2:
        return None
    try:
        return tokens.verify_signature(ctx.db, token, issuer=ctx.settings.auth_issuer, audience=None, now=time.time())
    except MedcloudError:
        return None


# -- plumbing -----------------------------------------------------------------------------------

def _audit(ctx: FhirContext, request: Request, *, who: str, client_id: str | None, patient: str | None,
           status: int) -> None:
    """An ``authenticate`` AuditEvent for a sign-in or token request, granted (200) or refused."""
    ip = request.client.host if request.client else None
    try:
        ctx.guard.record(AuditRecord(recorded=ctx.clock(), interaction=AUTHENTICATE, who=who, client_id=client_id,
                                     source_ip=ip, resource=None, patient=patient, status=status))
    except Exception:  # the answer stands even if the audit store is unavailable; say so loudly
        log.exception("could not record a token request from %s", ip)


def _client_hint(form: dict[str, str], request: Request) -> str | None:
    """The client a refused request claimed to be (not verified), for the audit record."""
    hint = form.get("client_id")
    header = request.headers.get("authorization", "")
    if not hint and header[:6].lower() == "basic ":
        try:
            hint = unquote_plus(base64.b64decode(header[6:].strip(), validate=True).decode().partition(":")[0])
        except (ValueError, UnicodeDecodeError):
            hint = None
    return hint[:64] if hint else None


async def _form(request: Request) -> dict[str, str]:
    media = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if media != "application/x-www-form-urlencoded":
        raise invalid_request("the body must be application/x-www-form-urlencoded")
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > MAX_FORM_BYTES:
        raise invalid_request("request body too large")
    body = b""
    async for chunk in request.stream():
        body += chunk
        if len(body) > MAX_FORM_BYTES:
            raise invalid_request("request body too large")
    try:
        pairs = parse_qsl(body.decode("utf-8"), keep_blank_values=True, strict_parsing=False,
                          max_num_fields=MAX_FIELDS)
    except (UnicodeDecodeError, ValueError) as e:
        raise invalid_request("malformed form body") from e
    form = dict(pairs)
    if len(form) != len(pairs):
        raise invalid_request("a parameter was sent more than once")
    return form


def _required(form: dict[str, str], name: str) -> str:
    value = form.get(name)
    if not value:
        raise invalid_request(f"{name} is required")
    return value


def _uses_basic(request: Request) -> bool:
    return request.headers.get("authorization", "")[:6].lower() == "basic "


async def _guarded(run: Callable[[], Awaitable[Response]], *, basic: bool = False) -> Response:
    """Run an endpoint; OAuth errors become RFC 6749 §5.2 JSON, other failures 4xx/503, never a traceback."""
    try:
        return await run()
    except OAuthError as e:
        headers = dict(_NO_STORE)
        if e.status == 401:
            headers["WWW-Authenticate"] = 'Basic realm="medcloud"' if basic else 'Bearer realm="medcloud"'
        return _json({"error": e.error, "error_description": e.description}, e.status, headers)
    except MedcloudError as e:
        return _json({"error": "invalid_request", "error_description": e.message}, 400, dict(_NO_STORE))
    except OperationalError:
        log.exception("authorization server: database unavailable")
        return _json({"error": "temporarily_unavailable", "error_description": "try again in a moment"}, 503,
                     {**_NO_STORE, "Retry-After": "1"})


def _json(body: dict[str, Any], status: int = 200, headers: dict[str, str] | None = None) -> Response:
    return Response(orjson.dumps(body), status, headers=headers, media_type="application/json")
