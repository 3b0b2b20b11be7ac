"""Helpers to speak multipart/related in tests (the client side of STOW-RS and WADO-RS)."""

from __future__ import annotations

from typing import Any

from medcloud.imaging._multipart import media_type, parse_related


def stow_body(datas: list[bytes], *, part_type: str = "application/dicom") -> tuple[bytes, str]:
    boundary = "test-boundary-42"
    out = b""
    for d in datas:
        out += f"--{boundary}\r\nContent-Type: {part_type}\r\n\r\n".encode() + d + b"\r\n"
    out += f"--{boundary}--\r\n".encode()
    return out, f'multipart/related; type="application/dicom"; boundary={boundary}'


def stow(client: Any, datas: list[bytes], path: str = "/dicomweb/studies", headers: dict[str, str] | None = None,
         **kw: Any) -> Any:
    body, ctype = stow_body(datas, **kw)
    return client.post(path, content=body,
                       headers={"Content-Type": ctype, "Accept": "application/dicom+json", **(headers or {})})


def parts(resp: Any) -> list[bytes]:
    _, params = media_type(resp.headers["content-type"])
    return [p.body for p in parse_related(resp.content, params["boundary"])]


def value(obj: dict[str, Any], tag: str) -> Any:
    v = obj.get(tag, {}).get("Value")
    return v[0] if v else None
