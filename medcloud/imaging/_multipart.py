"""multipart/related (RFC 2387) as DICOMweb uses it (PS3.18 §8.6.1.2): parse a body, write a stream.

Starlette only parses multipart/form-data, so the few lines for related parts live here.
"""

from __future__ import annotations

import re
import secrets
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

from medcloud.errors import Invalid

_PARAM = re.compile(r';\s*([A-Za-z0-9_.\-]+)\s*=\s*("(?:[^"\\]|\\.)*"|[^;]*)')


@dataclass(frozen=True, slots=True)
class Part:
    headers: dict[str, str]  # lower-case names
    body: bytes

    @property
    def content_type(self) -> str:
        return media_type(self.headers.get("content-type", ""))[0]


def media_type(header: str) -> tuple[str, dict[str, str]]:
    """Split ``type/subtype; a=b; c="d"`` into the lower-cased type and its parameters."""
    main = header.split(";", 1)[0].strip().lower()
    params = {}
    for m in _PARAM.finditer(header[len(header.split(";", 1)[0]):]):
        v = m.group(2).strip()
        if len(v) >= 2 and v[0] == '"' and v[-1] == '"':
            v = v[1:-1].replace('\\"', '"')
        params[m.group(1).lower()] = v
    return main, params


def parse_related(body: bytes, boundary: str) -> list[Part]:
    """The parts of a multipart body; raises Invalid when the boundary never appears.

    Scans with ``find`` and slices each part's body out of ``body`` once (a STOW-RS body is up to
    2 GB of instances; splitting it first and trimming the pieces copied every instance 3-4 times).
    """
    delim = b"--" + boundary.encode("latin-1")
    pos = body.find(delim)
    if pos < 0:
        raise Invalid("the multipart body does not contain its boundary")
    parts = []
    while True:
        start = pos + len(delim)
        nxt = body.find(delim, start)
        end = nxt if nxt >= 0 else len(body)
        if end - start >= 2 and body.startswith(b"--", start):
            break  # close delimiter
        if body.startswith(b"\r\n", start):
            start += 2
        elif body.startswith(b"\n", start):
            start += 1
        sep, skip = body.find(b"\r\n\r\n", start, end), 4
        if sep < 0:
            sep, skip = body.find(b"\n\n", start, end), 2
        head_end, content = (end, end) if sep < 0 else (sep, sep + skip)
        # The CRLF before the next delimiter belongs to the delimiter (RFC 2046 §5.1.1).
        if end - content >= 2 and body.startswith(b"\r\n", end - 2):
            end -= 2
        elif end - content >= 1 and body.startswith(b"\n", end - 1):
            end -= 1
        headers = {}
        for line in body[start:head_end].decode("latin-1").splitlines():
            if ":" in line:
                k, v = line.split(":", 1)
                headers[k.strip().lower()] = v.strip()
        parts.append(Part(headers, body[content:end]))
        if nxt < 0:
            break
        pos = nxt
    return parts


def new_boundary() -> str:
    return "medcloud-" + secrets.token_hex(12)


def write_related(parts: Iterable[tuple[dict[str, str], Iterable[bytes]]], boundary: str) -> Iterator[bytes]:
    """Stream parts (headers, body chunks) with ``boundary``; bodies are never joined in memory."""
    for headers, chunks in parts:
        head = "".join(f"{k}: {v}\r\n" for k, v in headers.items())
        yield f"--{boundary}\r\n{head}\r\n".encode("latin-1")
        yield from chunks
        yield b"\r\n"
    yield f"--{boundary}--\r\n".encode("latin-1")
