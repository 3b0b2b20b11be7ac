"""Fetch one resource type from a FHIR server into NDJSON for a view (``medcloud sof run --source URL``).

First choice is Bulk Data (https://hl7.org/fhir/uv/bulkdata/export.html): kick off
``[base]/$export?_type=T`` with ``Prefer: respond-async``, poll the status URL (honouring
``Retry-After``), download each output file. A server that does not offer ``$export`` (the
kick-off answers 400/404/405/501) is read by paging search instead (``[base]/T?_count=N``,
following ``next`` links). Tokens: a given bearer token, or SMART Backend Services
``client_credentials`` with a client secret (the token endpoint from ``--token-url`` or the
server's ``.well-known/smart-configuration``).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from medcloud.analytics.errors import SourceError

FHIR_JSON = "application/fhir+json"
NOT_OFFERED = (400, 404, 405, 501)


@dataclass
class Credentials:
    token: str | None = None
    client_id: str | None = None
    client_secret: str | None = None
    token_url: str | None = None
    scope: str = "system/*.rs"

    def header(self, client: httpx.Client, base: str) -> dict[str, str]:
        if self.token is None and self.client_id:
            self.token = _client_credentials(client, base, self)
        return {"Authorization": f"Bearer {self.token}"} if self.token else {}


@dataclass
class FetchResult:
    files: list[Path]
    method: str  # "bulk" or "search"
    notes: list[str] = field(default_factory=list)


def fetch(base: str, rtype: str, out_dir: Path, creds: Credentials | None = None, *,
          timeout: float = 600.0, page_size: int = 1000, client: httpx.Client | None = None) -> FetchResult:
    """Download every ``rtype`` the credentials may read into NDJSON files in ``out_dir``."""
    base = base.rstrip("/")
    creds = creds or Credentials()
    out_dir.mkdir(parents=True, exist_ok=True)
    own = client is None
    http = client or httpx.Client(timeout=60.0, follow_redirects=False)
    try:
        auth = creds.header(http, base)
        kick = http.get(f"{base}/$export", params={"_type": rtype},
                        headers={**auth, "Accept": FHIR_JSON, "Prefer": "respond-async"})
        if kick.status_code == 202 and kick.headers.get("content-location"):
            return FetchResult(_bulk(http, kick.headers["content-location"], rtype, out_dir, auth, timeout), "bulk")
        if kick.status_code in (401, 403):
            raise SourceError(f"{base}: the server refused the token ({kick.status_code}): {_detail(kick)}")
        if kick.status_code not in NOT_OFFERED:
            raise SourceError(f"{base}/$export answered {kick.status_code}: {_detail(kick)}")
        note = f"$export is not offered ({kick.status_code}); read by paging search"
        return FetchResult([_search(http, base, rtype, out_dir, auth, page_size)], "search", [note])
    except httpx.HTTPError as e:
        raise SourceError(f"{base}: {e}") from e
    finally:
        if own:
            http.close()


def _bulk(http: httpx.Client, status_url: str, rtype: str, out_dir: Path, auth: dict[str, str],
          timeout: float) -> list[Path]:
    deadline = time.monotonic() + timeout
    while True:
        r = http.get(status_url, headers={**auth, "Accept": "application/json"})
        if r.status_code == 200:
            break
        if r.status_code != 202:
            raise SourceError(f"export status {status_url} answered {r.status_code}: {_detail(r)}")
        if time.monotonic() > deadline:
            raise SourceError(f"the export did not finish within {timeout:.0f} s ({status_url})")
        retry = r.headers.get("retry-after", "1")
        time.sleep(min(max(float(retry) if retry.replace(".", "", 1).isdigit() else 1.0, 0.2), 10.0))
    manifest = r.json()
    files = []
    send_token = bool(manifest.get("requiresAccessToken", True))
    for n, item in enumerate(o for o in manifest.get("output") or [] if o.get("type") == rtype):
        target = out_dir / f"{rtype}.{n + 1:03d}.ndjson"
        with http.stream("GET", item["url"], headers={**(auth if send_token else {}),
                                                      "Accept": "application/fhir+ndjson"}) as resp:
            if resp.status_code != 200:
                raise SourceError(f"download {item['url']} answered {resp.status_code}")
            with open(target, "wb") as fh:
                for chunk in resp.iter_bytes():
                    fh.write(chunk)
        files.append(target)
    return files


def _search(http: httpx.Client, base: str, rtype: str, out_dir: Path, auth: dict[str, str],
            page_size: int) -> Path:
    import orjson

    target = out_dir / f"{rtype}.search.ndjson"
    url: str | None = f"{base}/{rtype}?_count={page_size}"
    with open(target, "wb") as fh:
        while url:
            r = http.get(url, headers={**auth, "Accept": FHIR_JSON})
            if r.status_code != 200:
                raise SourceError(f"search {url} answered {r.status_code}: {_detail(r)}")
            page = r.json()
            for e in page.get("entry") or []:
                res = e.get("resource")
                if isinstance(res, dict) and res.get("resourceType") == rtype and \
                        (e.get("search") or {}).get("mode", "match") == "match":
                    fh.write(orjson.dumps(res) + b"\n")
            url = next((link["url"] for link in page.get("link") or [] if link.get("relation") == "next"), None)
    return target


def _client_credentials(http: httpx.Client, base: str, creds: Credentials) -> str:
    token_url = creds.token_url
    if token_url is None:
        r = http.get(f"{base}/.well-known/smart-configuration", headers={"Accept": "application/json"})
        if r.status_code != 200 or "token_endpoint" not in r.json():
            raise SourceError(f"{base}: no SMART configuration to find the token endpoint; give --token-url")
        token_url = str(r.json()["token_endpoint"])
    r = http.post(token_url, auth=(creds.client_id or "", creds.client_secret or ""),
                  data={"grant_type": "client_credentials", "scope": creds.scope})
    if r.status_code != 200 or "access_token" not in r.json():
        raise SourceError(f"the token endpoint {token_url} refused the client credentials ({r.status_code}): "
                          f"{r.text[:200]}")
    return str(r.json()["access_token"])


def _detail(r: httpx.Response) -> str:
    try:
        body: Any = r.json()
        issues = body.get("issue") or []
        return "; ".join(str(i.get("diagnostics", "")) for i in issues) or r.text[:200]
    except ValueError:
        return r.text[:200]
