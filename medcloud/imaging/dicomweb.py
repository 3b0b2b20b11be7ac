"""The DICOMweb edge (PS3.18): STOW-RS, QIDO-RS, WADO-RS and DELETE under ``/dicomweb``.

HTTP in, archive calls (in the thread pool) out. Errors become a DICOM-ish HTTP status with a small
JSON body ``{"status": 404, "category": "not-found", "message": ...}``; per-instance STOW failures
are reported in the response dataset (FailedSOPSequence / FailureReason), not as HTTP errors.
"""

from __future__ import annotations

import functools
import itertools
import logging
from collections.abc import Awaitable, Callable, Iterator
from typing import Any
from urllib.parse import parse_qsl

import orjson
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse
from starlette.routing import Match, Route

from medcloud.config import Settings
from medcloud.errors import (
    Invalid,
    MedcloudError,
    NotAcceptable,
    NotFound,
    NotSupported,
    TooLarge,
    Unauthorized,
    UnsupportedMedia,
)
from medcloud.fhir.context import FhirContext
from medcloud.fhir.exchange import STATUS_BY_CATEGORY, Principal
from medcloud.imaging import native_model, negotiation, qido, render, stow_metadata
from medcloud.imaging._multipart import Part, media_type, new_boundary, parse_related, write_related
from medcloud.imaging.access import ImagingAccess
from medcloud.imaging.archive import Archive, ArchiveConfig, InstanceRef, StoreResult
from medcloud.imaging.blobs import open_blob_store, valid_uid
from medcloud.imaging.fhir_link import ImagingStudyLink
from medcloud.imaging.group_commit import GroupCommit
from medcloud.imaging.status import CANNOT_UNDERSTAND, store_status
from medcloud.security.http import EdgeAuth, unauthorized_response
from medcloud.storage.sql.database import Database

log = logging.getLogger("medcloud.dicomweb")

DICOM_JSON, DICOM_XML, RENDERED_TYPES = negotiation.DICOM_JSON, negotiation.DICOM_XML, negotiation.RENDERED_TYPES
THUMBNAIL_VIEWPORT = (128, 128)
MAX_REQUEST_BYTES = 2 * 1024 * 1024 * 1024  # a STOW-RS body (the archive limits each instance too)
SUPPORTED_TS = "*"

Handler = Callable[[Request], Awaitable[Response]]


def build_archive(settings: Settings, db: Database, fhir_ctx: FhirContext | None,
                  config: ArchiveConfig | None = None) -> Archive:
    """The archive for a server: blobs in ``settings.blob_store``, index in ``db``, ImagingStudy link to FHIR."""
    # The index tables come from migration 0002 (run by build_services / ``medcloud db upgrade``).
    # Sealed when the FHIR context has encryption at rest on (security/at_rest.py).
    blobs = open_blob_store(settings, fhir_ctx.at_rest if fhir_ctx is not None else None)
    archive = Archive(db, blobs, config or ArchiveConfig.from_settings(settings))
    if fhir_ctx is not None:
        archive.clock = fhir_ctx.clock
        archive.on_change.append(ImagingStudyLink(archive, fhir_ctx))
    return archive


def routes(services_or_archive: Any, prefix: str = "/dicomweb") -> list[Route]:
    """Starlette routes for DICOMweb. Pass an ``Archive``, or the app's ``Services`` (one is built).

    With ``Services`` the routes authenticate like the FHIR edge (security/http.py); a bare
    ``Archive`` (embedding, tests) has no settings and serves without authentication.
    """
    auth = None
    access = None
    public = None
    if isinstance(services_or_archive, Archive):
        archive = services_or_archive
    else:
        svc = services_or_archive
        archive = getattr(svc, "imaging", None) or build_archive(svc.settings, svc.db, svc.fhir)
        auth = EdgeAuth.of(svc.fhir)
        access = ImagingAccess(svc.fhir)
        public = svc.settings.public_url.rstrip("/") or None
    web = _DicomWeb(archive, prefix, auth, access, public)
    p = prefix
    s, se, i = "{study}", "{series}", "{instance}"
    get, post, delete = ["GET", "HEAD"], ["POST"], ["DELETE"]
    known = [
        Route(f"{p}/studies", web.wrap(web.qido_studies_or_stow), methods=get + post),
        Route(f"{p}/series", web.wrap(web.qido_series), methods=get),
        Route(f"{p}/instances", web.wrap(web.qido_instances), methods=get),
        Route(f"{p}/studies/{s}", web.wrap(web.study), methods=get + post + delete),
        Route(f"{p}/studies/{s}/metadata", web.wrap(web.metadata), methods=get),
        Route(f"{p}/studies/{s}/rendered", web.wrap(web.rendered_many), methods=get),
        Route(f"{p}/studies/{s}/thumbnail", web.wrap(web.thumbnail_of), methods=get),
        Route(f"{p}/studies/{s}/series", web.wrap(web.qido_series), methods=get),
        Route(f"{p}/studies/{s}/instances", web.wrap(web.qido_instances), methods=get),
        Route(f"{p}/studies/{s}/series/{se}", web.wrap(web.series), methods=get + delete),
        Route(f"{p}/studies/{s}/series/{se}/metadata", web.wrap(web.metadata), methods=get),
        Route(f"{p}/studies/{s}/series/{se}/rendered", web.wrap(web.rendered_many), methods=get),
        Route(f"{p}/studies/{s}/series/{se}/thumbnail", web.wrap(web.thumbnail_of), methods=get),
        Route(f"{p}/studies/{s}/series/{se}/instances", web.wrap(web.qido_instances), methods=get),
        Route(f"{p}/studies/{s}/series/{se}/instances/{i}", web.wrap(web.instance), methods=get + delete),
        Route(f"{p}/studies/{s}/series/{se}/instances/{i}/metadata", web.wrap(web.metadata), methods=get),
        Route(f"{p}/studies/{s}/series/{se}/instances/{i}/frames/{{frames}}", web.wrap(web.frames), methods=get),
        Route(f"{p}/studies/{s}/series/{se}/instances/{i}/frames/{{frames}}/rendered", web.wrap(web.rendered),
              methods=get),
        Route(f"{p}/studies/{s}/series/{se}/instances/{i}/frames/{{frames}}/thumbnail", web.wrap(web.thumbnail),
              methods=get),
        Route(f"{p}/studies/{s}/series/{se}/instances/{i}/rendered", web.wrap(web.rendered), methods=get),
        Route(f"{p}/studies/{s}/series/{se}/instances/{i}/thumbnail", web.wrap(web.thumbnail), methods=get),
        Route(f"{p}/studies/{s}/series/{se}/instances/{i}/bulkdata/{{tag}}", web.wrap(web.bulkdata), methods=get),
    ]
    # Starlette gives a function endpoint GET/HEAD only unless told: the catch-all takes every method.
    every = ["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"]
    unknown = web.authenticated(_unknown(known))  # anonymous callers learn nothing, not even "no such path"
    return [*known, Route(f"{p}/{{path:path}}", unknown, methods=every), Route(p, unknown, methods=every)]


def _unknown(known: list[Route]) -> Handler:
    """Any other path under the prefix: the JSON error body of every DICOMweb error, never plain text.

    A path that a route serves with other methods is 405 with ``Allow`` (Starlette's own answer to
    that is plain text too, and this catch-all would otherwise turn it into a 404).
    """
    async def endpoint(request: Request) -> Response:
        allowed: set[str] = set()
        for route in known:
            match, _ = route.matches(request.scope)
            if match is not Match.NONE and route.methods:
                allowed |= route.methods
        if allowed:
            resp = _json_error(405, "not-supported",
                               f"{request.method} is not allowed here; allowed: {', '.join(sorted(allowed))}")
            resp.headers["Allow"] = ", ".join(sorted(allowed))
            return resp
        return _json_error(404, "not-found", f"no DICOMweb resource at {request.url.path}")

    return endpoint


class _DicomWeb:
    def __init__(self, archive: Archive, prefix: str, auth: EdgeAuth | None = None,
                 access: ImagingAccess | None = None, public: str | None = None):
        self.archive = archive
        self.prefix = prefix
        self.auth = auth
        self.access = access
        self.public = public  # settings.public_url: the base clients reach us at (behind a proxy)
        # Concurrent STOW-RS requests share write transactions and ImagingStudy updates (group_commit.py).
        self.writer = GroupCommit.for_archive(archive)

    def wrap(self, fn: Handler) -> Handler:
        async def endpoint(request: Request) -> Response:
            try:
                principal = None
                if self.auth is not None:  # before the body: no anonymous multi-GB STOW uploads
                    principal = await self.auth.principal(request)
                for name in ("study", "series", "instance"):
                    uid = request.path_params.get(name)
                    if uid is not None and not valid_uid(uid):
                        raise Invalid(f"{uid!r} is not a valid {name} UID")
                request.state.studies = None
                if self.access is not None and principal is not None:
                    request.state.studies = await run_in_threadpool(self._authorize, request, principal)
                return await fn(request)
            except Unauthorized as e:
                return unauthorized_response(e)
            except MedcloudError as e:
                return _error(e)
            except Exception:
                log.exception("unhandled error on %s %s", request.method, request.url.path)
                return _error(MedcloudError("internal error; see the server log"))

        return endpoint

    def authenticated(self, fn: Handler) -> Handler:
        """Only the credentials check of ``wrap`` (for answers that carry no data, e.g. 404/405)."""
        async def endpoint(request: Request) -> Response:
            try:
                if self.auth is not None:
                    await self.auth.principal(request)
                return await fn(request)
            except Unauthorized as e:
                return unauthorized_response(e)

        return endpoint

    def _authorize(self, request: Request, principal: Principal) -> Any:
        """Scopes on ImagingStudy decide (imaging/access.py); returns QIDO's study condition, if any."""
        assert self.access is not None
        study = request.path_params.get("study")
        if request.method == "POST":
            self.access.require_store(principal)
            return None
        interaction = "delete" if request.method == "DELETE" else ("read" if study else "search-type")
        self.access.require(principal, interaction)
        if study is not None:
            self.access.check_study(principal, study)
            return None
        return self.access.study_condition(principal)

    def base(self, request: Request) -> str:
        """The DICOMweb root URL for links in responses: ``public_url`` if set, else the request's origin."""
        if self.public:
            return f"{self.public}{self.prefix}"
        return f"{request.url.scheme}://{request.url.netloc}{self.prefix}"

    # -- STOW-RS (PS3.18 §10.5) --------------------------------------------------------------

    async def qido_studies_or_stow(self, request: Request) -> Response:
        if request.method == "POST":
            return await self.stow(request, None)
        return await self.qido(request, "study")

    async def study(self, request: Request) -> Response:
        study = request.path_params["study"]
        if request.method == "POST":
            return await self.stow(request, study)
        if request.method == "DELETE":
            return await self.delete(study)
        return await self.retrieve(request, study)

    async def stow(self, request: Request, study: str | None) -> Response:
        # The response type is settled before anything is stored: a 406 must not follow a store.
        media = negotiation.json_or_xml(request, "a STOW-RS response", multipart=False)
        ctype, params = media_type(request.headers.get("content-type", ""))
        if ctype != "multipart/related":
            raise UnsupportedMedia(f"STOW-RS needs multipart/related; type=\"application/dicom\", got {ctype!r}")
        boundary = params.get("boundary")
        if not boundary:
            raise Invalid("the multipart/related Content-Type has no boundary")
        rtype = params.get("type", "application/dicom").lower()
        if rtype not in ("application/dicom", DICOM_JSON, DICOM_XML):
            raise UnsupportedMedia(f"STOW-RS takes type=\"application/dicom\" (Part-10 instances) or "
                                   f"\"{DICOM_JSON}\" / \"{DICOM_XML}\" (metadata + bulk data), not {rtype!r}")
        body = await _read_body(request, MAX_REQUEST_BYTES)
        parts = parse_related(body, boundary)
        if not parts:
            raise Invalid("the request contains no parts")
        if rtype != "application/dicom":  # the metadata + bulk data form (PS3.18 §10.5.1.2)
            return await self._stow_metadata(request, parts, rtype, study, media)
        datas: list[bytes] = []
        rejected: dict[int, StoreResult] = {}
        for n, part in enumerate(parts):
            pt = part.content_type or "application/dicom"
            if pt != "application/dicom":
                rejected[n] = StoreResult(0xC000, reason=f"part of type {pt!r} is not application/dicom")
            datas.append(part.body)
        stored = await run_in_threadpool(self._store, [d for n, d in enumerate(datas) if n not in rejected], study)
        it = iter(stored)
        results = [rejected[n] if n in rejected else next(it) for n in range(len(datas))]
        return self._stow_response(request, results, study, media)

    async def _stow_metadata(self, request: Request, parts: list[Part], rtype: str, study: str | None,
                             media: str) -> Response:
        bases = (str(request.url), self.base(request))
        built = await run_in_threadpool(functools.partial(stow_metadata.assemble, parts, rtype, bases=bases))
        datas = [b.data for b in built if b.data is not None]
        stored = iter(await run_in_threadpool(self._store, datas, study))
        results = [next(stored) if b.data is not None else
                   StoreResult(store_status(b.error) if b.error else CANNOT_UNDERSTAND,
                               sop_class_uid=b.sop_class_uid, sop_instance_uid=b.sop_instance_uid,
                               reason=b.error.message if b.error else None)
                   for b in built]
        return self._stow_response(request, results, study, media)

    def _store(self, datas: list[bytes], study: str | None) -> list[StoreResult]:
        return self.writer.store_many(datas, study_uid=study) if datas else []

    def _stow_response(self, request: Request, results: list[StoreResult], study: str | None,
                       media: str = DICOM_JSON) -> Response:
        base = self.base(request)
        ok, failed = [], []
        for r in results:
            if r.stored:
                item: dict[str, Any] = {
                    "00081150": _el("UI", r.sop_class_uid),
                    "00081155": _el("UI", r.sop_instance_uid),
                    "00081190": _el("UR", f"{base}/studies/{r.study_uid}/series/{r.series_uid}"
                                          f"/instances/{r.sop_instance_uid}"),
                }
                if r.warnings:
                    item["00081196"] = {"vr": "US", "Value": [w[0] for w in r.warnings]}
                ok.append(item)
            else:
                item = {
                    "00081150": _el("UI", r.sop_class_uid),
                    "00081155": _el("UI", r.sop_instance_uid),
                    "00081197": {"vr": "US", "Value": [r.status]},
                }
                if r.reason:
                    item["00000902"] = _el("LO", r.reason[:64])  # ErrorComment: the reason, for people
                failed.append(item)
                log.info("STOW-RS failure 0x%04X for %s: %s", r.status, r.sop_instance_uid, r.reason)
        out: dict[str, Any] = {}
        if study is not None:
            out["00081190"] = _el("UR", f"{base}/studies/{study}")
        if ok:
            out["00081199"] = {"vr": "SQ", "Value": ok}
        if failed:
            out["00081198"] = {"vr": "SQ", "Value": failed}
        # PS3.18 §10.5.3: 200 all stored, 202 some failed or warnings, 409 none stored.
        warned = any(r.warnings for r in results if r.stored)
        code = 409 if not ok else 202 if failed or warned else 200
        if media == DICOM_XML:
            return Response(native_model.to_xml(out), status_code=code, media_type=DICOM_XML)
        return Response(orjson.dumps(out), status_code=code, media_type=DICOM_JSON)

    # -- QIDO-RS (PS3.18 §10.6) ----------------------------------------------------------------

    async def qido_series(self, request: Request) -> Response:
        return await self.qido(request, "series")

    async def qido_instances(self, request: Request) -> Response:
        return await self.qido(request, "instance")

    async def qido(self, request: Request, level: qido.Level) -> Response:
        xml = negotiation.qido_media(request) == DICOM_XML
        base = self.base(request)
        params = parse_qsl(request.url.query, keep_blank_values=True)
        q = qido.parse_query(level, params, study_uid=request.path_params.get("study"),
                             series_uid=request.path_params.get("series"), extra_tags=self.archive.config.extra_tags)
        results, truncated = await run_in_threadpool(
            lambda: qido.search(self.archive.db, q, studies=getattr(request.state, "studies", None), base=base))
        headers = {}
        notes = list(q.warnings)
        if truncated:
            notes.append("the result was truncated; use limit and offset to page")
        if notes:
            headers["Warning"] = ", ".join(f'299 medcloud "{n}"' for n in notes)
        if xml:
            # One NativeDicomModel document per result (PS3.18 §10.6.3.3); no result: an empty body.
            boundary = new_boundary()
            headers["Content-Type"] = f'multipart/related; type="{DICOM_XML}"; boundary={boundary}'
            body = b"" if not results or request.method == "HEAD" else \
                b"".join(write_related(native_model.multipart_parts(results), boundary))
            return Response(body, status_code=200, headers=headers)
        if request.method == "HEAD":
            return Response(status_code=200, headers=headers, media_type=DICOM_JSON)
        return Response(orjson.dumps(results), status_code=200, headers=headers, media_type=DICOM_JSON)

    # -- WADO-RS (PS3.18 §10.4) ----------------------------------------------------------------

    async def series(self, request: Request) -> Response:
        study, series = request.path_params["study"], request.path_params["series"]
        if request.method == "DELETE":
            return await self.delete(study, series)
        return await self.retrieve(request, study, series)

    async def instance(self, request: Request) -> Response:
        p = request.path_params
        if request.method == "DELETE":
            return await self.delete(p["study"], p["series"], p["instance"])
        return await self.retrieve(request, p["study"], p["series"], p["instance"])

    async def retrieve(self, request: Request, study: str, series: str | None = None,
                       sop: str | None = None) -> Response:
        wanted_ts = negotiation.accept_dicom(request)
        refs = await run_in_threadpool(self.archive.instances, study, series, sop)
        convert = wanted_ts not in ("*", None) and any(r.transfer_syntax_uid != wanted_ts for r in refs)
        if convert and wanted_ts not in render.TRANSCODE_TARGETS:
            raise NotAcceptable(f"cannot transcode to {wanted_ts}: instances are served as stored or in "
                                f"{' / '.join(render.TRANSCODE_TARGETS)} (or ask with transfer-syntax=*)")
        boundary = new_boundary()
        blobs = self.archive.blobs

        def part(r: InstanceRef) -> tuple[dict[str, str], Iterator[bytes]]:
            if convert and wanted_ts and r.transfer_syntax_uid != wanted_ts:
                # Decoded per instance while streaming: one instance in memory at a time.
                try:
                    encoded = render.transcode(blobs.read(r.blob_key), wanted_ts)
                except NotSupported as e:  # e.g. OpenJPEG refuses images smaller than its resolution levels
                    raise NotAcceptable(f"instance {r.sop_uid}: {e.message} (ask with transfer-syntax=*)") from e
                return ({"Content-Type": f"application/dicom; transfer-syntax={wanted_ts}"}, iter([encoded]))
            return ({"Content-Type": f"application/dicom; transfer-syntax={r.transfer_syntax_uid}",
                     "Content-Length": str(r.size)}, blobs.iter_chunks(r.blob_key))

        # Open the first instance before the 200 is sent: an undecodable instance (transcoding) or an
        # unreachable object store (imaging/s3.py) is then a clean error status, not a cut stream.
        first = await run_in_threadpool(part, refs[0])
        head: list[tuple[dict[str, str], Iterator[bytes]]] = [first]
        rest = refs[1:]

        def body() -> Iterator[bytes]:
            yield from write_related(itertools.chain(head, (part(r) for r in rest)), boundary)

        return StreamingResponse(body(), media_type=None, headers={
            "Content-Type": f'multipart/related; type="application/dicom"; boundary={boundary}'})

    async def metadata(self, request: Request) -> Response:
        xml = negotiation.json_or_xml(request, "WADO-RS metadata") == DICOM_XML
        p = request.path_params
        objs = await run_in_threadpool(self.archive.metadata, p["study"], p.get("series"), p.get("instance"))
        base = self.base(request).encode()
        marker = b'"BulkDataURI":"'
        body = b"[" + b",".join(objs) + b"]"
        body = body.replace(marker, marker + base + b"/")
        if xml:  # one NativeDicomModel document per instance (PS3.18 §10.4.3.3)
            boundary = new_boundary()
            parts = native_model.multipart_parts(orjson.loads(body))
            return Response(b"".join(write_related(parts, boundary)),
                            headers={"Content-Type": f'multipart/related; type="{DICOM_XML}"; boundary={boundary}'})
        return Response(body, media_type=DICOM_JSON)

    async def frames(self, request: Request) -> Response:
        p = request.path_params
        numbers = _frame_numbers(p["frames"])
        negotiation.accept(request, ("multipart/related", "application/octet-stream"))
        ref = await self._one(p)
        data = await run_in_threadpool(self.archive.blobs.read, ref.blob_key)
        out = await run_in_threadpool(render.frames, data, numbers)
        return _octets(out, [f"{self.base(request)}/studies/{p['study']}/series/{p['series']}/instances/"
                             f"{p['instance']}/frames/{n}" for n in numbers])

    async def bulkdata(self, request: Request) -> Response:
        p = request.path_params
        tag = p["tag"].upper()
        if len(tag) != 8 or any(c not in "0123456789ABCDEF" for c in tag):
            raise Invalid(f"{p['tag']!r} is not a tag (8 hex digits)")
        ref = await self._one(p)
        data = await run_in_threadpool(self.archive.blobs.read, ref.blob_key)
        if int(tag, 16) == render.PIXEL_DATA:
            n = ref.number_of_frames or 1
            out = await run_in_threadpool(render.frames, data, list(range(1, n + 1)))
            return _octets(out, None)
        value = await run_in_threadpool(_element_bytes, data, int(tag, 16))
        return _octets([value], None)

    async def rendered(self, request: Request) -> Response:
        return await self._render(request, None)

    async def thumbnail(self, request: Request) -> Response:
        return await self._render(request, THUMBNAIL_VIEWPORT)

    async def rendered_many(self, request: Request) -> Response:
        """Rendered study / series (PS3.18 §10.4.1.1.3): every frame of every image, one part each.

        These are multi-item resources, so only ``multipart/related; type="image/..."`` is
        acceptable; a single-part type alone is 406 (§10.4.4: "the origin server is expected to
        ignore single part Media Types for other resources"). ``.../thumbnail`` gives one image.
        Instances without pixel data (SR, KOS...) have no rendered form and are left out.
        """
        p = request.path_params
        media = negotiation.rendered_multipart_media(request)
        window, viewport, quality = _render_params(request, None)
        refs = await run_in_threadpool(self.archive.instances, p["study"], p.get("series"))
        blobs, base = self.archive.blobs, self.base(request)

        def images(r: InstanceRef) -> list[tuple[dict[str, str], list[bytes]]]:
            try:
                frames = list(render.render_frames(blobs.read(r.blob_key), window=window, viewport=viewport,
                                                   media_type=media, quality=quality))
            except (NotFound, NotSupported):
                return []  # no pixel data / no decoder: nothing to show for this instance
            url = f"{base}/studies/{r.study_uid}/series/{r.series_uid}/instances/{r.sop_uid}"
            return [({"Content-Type": media, "Content-Length": str(len(img)),
                      "Content-Location": f"{url}/frames/{n}/rendered" if len(frames) > 1 else f"{url}/rendered"},
                     [img]) for n, img in frames]

        # Render up to the first renderable instance before the 200 is sent: nothing renderable is a 404.
        head: list[tuple[dict[str, str], list[bytes]]] = []
        rest = iter(refs)
        for r in rest:
            head = await run_in_threadpool(images, r)
            if head:
                break
        if not head:
            raise NotFound("nothing in this " + ("series" if "series" in p else "study") + " has renderable pixel data")
        boundary = new_boundary()

        def body() -> Iterator[bytes]:
            yield from write_related(itertools.chain(head, itertools.chain.from_iterable(map(images, rest))),
                                     boundary)

        return StreamingResponse(body(), media_type=None, headers={
            "Content-Type": f'multipart/related; type="{media}"; boundary={boundary}'})

    async def thumbnail_of(self, request: Request) -> Response:
        """Study / series thumbnail (PS3.18 §10.4.1.1.4): one image, the origin server's choice.

        medcloud shows the middle instance (by series and instance order) of the first series with
        renderable pixels, middle frame, fitted into 128x128 unless ``viewport`` says otherwise. Only
        pixels are rendered, no text, so no patient-identifying annotation is added (§10.4.3.3.4).
        """
        p = request.path_params
        media = negotiation.accept(request, RENDERED_TYPES, default="image/jpeg")
        window, viewport, quality = _render_params(request, THUMBNAIL_VIEWPORT)
        refs = await run_in_threadpool(self.archive.instances, p["study"], p.get("series"))
        by_series: dict[str, list[InstanceRef]] = {}
        for r in refs:
            by_series.setdefault(r.series_uid, []).append(r)
        for members in by_series.values():
            ref = members[len(members) // 2]
            frames = ref.number_of_frames or 1
            frame = frames // 2 + 1 if frames > 1 else 1
            data = await run_in_threadpool(self.archive.blobs.read, ref.blob_key)
            try:
                img = await run_in_threadpool(functools.partial(
                    render.render, data, frame=frame, window=window, viewport=viewport, media_type=media,
                    quality=quality))
            except (NotFound, NotSupported):
                continue  # a series without renderable pixels (SR, KOS...): try the next one
            return Response(img, media_type=media)
        raise NotFound("nothing in this " + ("series" if "series" in p else "study") + " has renderable pixel data")

    async def _render(self, request: Request, default_viewport: tuple[int, int] | None) -> Response:
        p = request.path_params
        frame = 1
        if "frames" in p:
            numbers = _frame_numbers(p["frames"])
            if len(numbers) != 1:
                raise Invalid("rendered frames take exactly one frame number")
            frame = numbers[0]
        media = negotiation.accept(request, RENDERED_TYPES, default="image/jpeg")
        window, viewport, quality = _render_params(request, default_viewport)
        ref = await self._one(p)
        data = await run_in_threadpool(self.archive.blobs.read, ref.blob_key)
        img = await run_in_threadpool(lambda: render.render(data, frame=frame, window=window, viewport=viewport,
                                                            media_type=media, quality=quality))
        return Response(img, media_type=media)

    async def _one(self, p: Any) -> InstanceRef:
        refs = await run_in_threadpool(self.archive.instances, p["study"], p["series"], p["instance"])
        return refs[0]

    # -- DELETE -----------------------------------------------------------------------------------

    async def delete(self, study: str, series: str | None = None, sop: str | None = None) -> Response:
        await run_in_threadpool(self.archive.delete, study, series, sop)
        return Response(status_code=204)


def _el(vr: str, value: Any) -> dict[str, Any]:
    return {"vr": vr, "Value": [value]} if value not in (None, "") else {"vr": vr}


def _error(err: MedcloudError) -> Response:
    return _json_error(STATUS_BY_CATEGORY.get(err.category, 500), err.category, err.message)


def _json_error(code: int, category: str, message: str) -> Response:
    return Response(orjson.dumps({"status": code, "category": category, "message": message}),
                    status_code=code, media_type="application/json")


def _render_params(request: Request, default_viewport: tuple[int, int] | None
                   ) -> tuple[render.Window | None, tuple[int, int] | None, int]:
    """``window``, ``viewport`` and ``quality`` (PS3.18 §8.3.5.1); quality clamped to 1..100."""
    q = dict(parse_qsl(request.url.query))
    window = render.parse_window(q.get("window"))
    viewport = render.parse_viewport(q.get("viewport")) or default_viewport
    quality = int(q.get("quality", "90")) if q.get("quality", "90").isdigit() else 90
    return window, viewport, min(max(quality, 1), 100)


async def _read_body(request: Request, limit: int) -> bytes:
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > limit:
        raise TooLarge(f"request body of {declared} bytes exceeds the limit of {limit} bytes")
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise TooLarge(f"request body exceeds the limit of {limit} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


def _frame_numbers(text: str) -> list[int]:
    try:
        numbers = [int(x) for x in text.split(",") if x.strip()]
    except ValueError as e:
        raise Invalid(f"frame numbers must be a comma-separated list of integers, got {text!r}") from e
    if not numbers or any(n < 1 for n in numbers):
        raise Invalid("frame numbers start at 1")
    return numbers


def _octets(values: list[bytes], locations: list[str] | None) -> Response:
    boundary = new_boundary()
    parts = []
    for n, v in enumerate(values):
        headers = {"Content-Type": "application/octet-stream", "Content-Length": str(len(v))}
        if locations:
            headers["Content-Location"] = locations[n]
        parts.append((headers, [v]))
    body = b"".join(write_related(parts, boundary))
    return Response(body, headers={
        "Content-Type": f'multipart/related; type="application/octet-stream"; boundary={boundary}'})


def _element_bytes(data: bytes, tag: int) -> bytes:
    import io
    import warnings

    import pydicom

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ds = pydicom.dcmread(io.BytesIO(data))
    if tag not in ds:
        raise NotFound(f"the instance has no top-level element ({tag >> 16:04X},{tag & 0xFFFF:04X})")
    value = ds[tag].value
    if not isinstance(value, bytes | bytearray):
        raise NotFound(f"({tag >> 16:04X},{tag & 0xFFFF:04X}) is not a binary bulk data element")
    return bytes(value)
