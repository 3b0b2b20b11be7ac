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
    """The parts of a multipart body; raises Invalid when the boundary never appears."""
    delim = b"--" + boundary.encode("latin-1")
    chunks = body.split(delim)
    if len(chunks) < 2:
        raise Invalid("the multipart body does not contain its boundary")
    parts = []
    for chunk in chunks[1:]:
        if chunk.startswith(b"--"):
            break  # close delimiter
        if chunk.startswith(b"\r\n"):
            chunk = chunk[2:]
        elif chunk.startswith(b"\n"):
            chunk = chunk[1:]
        sep = chunk.find(b"\r\n\r\n")
        skip = 4
        if sep < 0:
            sep, skip = chunk.find(b"\n\n"), 2
        if sep < 0:
            head, content = chunk, b""
        else:
            head, content = chunk[:sep], chunk[sep + skip:]
        # The CRLF before the next delimiter belongs to the delimiter (RFC 2046 §5.1.1).
        if content.endswith(b"\r\n"):
            content = content[:-2]
        elif content.endswith(b"\n"):
            content = content[:-1]
        headers = {}
        for line in head.decode("latin-1").splitlines():
            if ":" in line:
                k, v = line.split(":", 1)
                headers[k.strip().lower()] = v.strip()
        parts.append(Part(headers, content))
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
