"""DICOMweb content negotiation (PS3.18 §8.7): which media type a response is written in.

The acceptable types are the ``accept`` query parameter's first (§8.3.3.1, for user agents that
cannot set headers), then the Accept header's (§8.7.8.1); each resource picks the first it can
produce, its default for a wildcard or no preference, and raises NotAcceptable (406) otherwise.
"""

from __future__ import annotations

from typing import Any, Protocol

from medcloud.errors import NotAcceptable
from medcloud.imaging._multipart import media_type

DICOM_JSON = "application/dicom+json"
DICOM_XML = "application/dicom+xml"
RENDERED_TYPES = ("image/jpeg", "image/png", "image/gif")  # PS3.18 §8.7.4: default + required


class Request(Protocol):
    """What negotiation reads of a request (a Starlette request has both; no web framework here)."""

    @property
    def headers(self) -> Any: ...

    @property
    def query_params(self) -> Any: ...


def qido_media(request: Request) -> str:
    """QIDO-RS response type (PS3.18 §10.6.4): DICOM JSON (default) or multipart DICOM XML; else 406."""
    return json_or_xml(request, "QIDO-RS")


def json_or_xml(request: Request, what: str, *, multipart: bool = True) -> str:
    """DICOM JSON (the default) or DICOM XML by the Accept header; else 406. XML comes as
    ``multipart/related; type="application/dicom+xml"`` (one document per object: QIDO-RS results,
    WADO-RS metadata) or, for a single data set (``multipart=False``: the STOW-RS response), as
    ``application/dicom+xml`` itself."""
    accepts = acceptable(request)
    if not accepts:
        return DICOM_JSON
    for mt, params in accepts:
        if mt in (DICOM_JSON, "application/json", "*/*", "application/*"):
            return DICOM_JSON
        if multipart and mt in ("multipart/related", "multipart/*") and \
                params.get("type", DICOM_XML).lower() == DICOM_XML:
            return DICOM_XML
        if not multipart and mt == DICOM_XML:
            return DICOM_XML
    xml = f'multipart/related; type="{DICOM_XML}"' if multipart else DICOM_XML
    raise NotAcceptable(f"cannot produce {request.headers.get('accept')!r}; {what} answers {DICOM_JSON} or {xml}")


def rendered_multipart_media(request: Request) -> str:
    """The image type inside a multipart rendered study/series; single-part types alone are 406."""
    accepts = acceptable(request)
    if not accepts:
        return "image/jpeg"
    for mt, params in accepts:
        if mt in ("*/*", "multipart/*"):
            return "image/jpeg"
        if mt == "multipart/related":
            t = params.get("type", "image/jpeg").lower()
            if t in RENDERED_TYPES:
                return t
            if t in ("*/*", "image/*"):
                return "image/jpeg"
    raise NotAcceptable(f"cannot produce {request.headers.get('accept')!r}: a rendered study or series is "
                        'multipart/related; type="image/jpeg" (or "image/png", "image/gif"), one part per frame; '
                        "ask .../thumbnail for a single image")


def acceptable(request: Request) -> list[tuple[str, dict[str, str]]]:
    """The acceptable media types in the order they are tried: the ``accept`` query parameter's first
    (PS3.18 §8.3.3.1, for user agents that cannot set headers, e.g. a link in a browser), then the
    Accept header's (§8.7.8.1: the header is used when none of the parameter's types is supported)."""
    out = [media_type(item) for value in request.query_params.getlist("accept") for item in split_accept(value)]
    header = request.headers.get("accept", "")
    if header.strip():
        out += [media_type(item) for item in split_accept(header)]
    return out


def split_accept(header: str) -> list[str]:
    items: list[str] = []
    cur: list[str] = []
    quoted = False
    for ch in header:
        if ch == '"':
            quoted = not quoted
        if ch == "," and not quoted:
            items.append("".join(cur))
            cur = []
        else:
            cur.append(ch)
    items.append("".join(cur))
    return [i.strip() for i in items if i.strip()]


def accept_dicom(request: Request) -> str | None:
    """The transfer syntax asked for by Accept for a DICOM retrieve (None: no preference)."""
    accepts = acceptable(request)
    if not accepts:
        return None
    for mt, params in accepts:
        if mt in ("*/*", "multipart/*"):
            return None
        if mt == "multipart/related":
            t = params.get("type", "application/dicom").lower()
            if t in ("application/dicom", "*/*"):
                return params.get("transfer-syntax")
            continue
        if mt == "application/dicom":
            return params.get("transfer-syntax")
    raise NotAcceptable('instances are served as multipart/related; type="application/dicom"')


def accept(request: Request, offered: tuple[str, ...], default: str | None = None) -> str:
    """The first offered media type the Accept header allows (absent or */*: the first offered)."""
    accepts = acceptable(request)
    if not accepts:
        return default or offered[0]
    for mt, _ in accepts:
        if mt in offered:
            return mt
        if mt in ("*/*", "application/*", "image/*") and (default or offered[0]).startswith(mt[:-1].rstrip("*")):
            return default or offered[0]
        if mt in ("*/*",):
            return default or offered[0]
    raise NotAcceptable(f"cannot produce {request.headers.get('accept')!r}; this resource offers {', '.join(offered)}")
