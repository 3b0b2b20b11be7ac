"""The cost of authentication on read-by-id: the same data served with auth on and with ``--no-auth``.

    .venv/bin/python bench/auth.py                          # 300 Patients, SQLite, wrk -t2 -c16 -d10s
    .venv/bin/python bench/auth.py --backend postgres --rounds 2

One data directory (and database) is loaded once, in-process. Then ``medcloud serve`` is started
on it with ``--no-auth`` and with auth on, one after the other (``--rounds 2`` runs them in the
order A B B A, so a drift in machine load hits both sides the same). Each server is measured by
wrk rotating over the loaded ids; with auth on every request carries the same Bearer token, as a
real client reuses its token until it expires.

The token comes from medcloud's own ``/auth/token`` (admin client, client_credentials) when the
authorization server is installed, else from a throw-away OIDC issuer served from this process
(``--token oidc``). Both hit the same verified-token cache on the hot path; the first request of
each token pays the signature check. Goal (issue 4): auth on is at most 10 % slower.
Writes bench/results/<date>T<HHMM>Z-auth-<backend>.json and prints it.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import shlex
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _machine  # noqa: E402
import _server  # noqa: E402
import httpx  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"
GOAL_PCT = 10.0

LUA = r"""
local paths = {}
local counter = 0

function setup(thread)
  counter = counter + 1
  thread:set("offset", counter * 97)
end

function init(args)
  for line in io.lines(args[1]) do paths[#paths + 1] = line end
  headers = {["Accept"] = "application/fhir+json"}
  if args[2] ~= nil and args[2] ~= "" then headers["Authorization"] = "Bearer " .. args[2] end
  i = offset or 0
end

function request()
  i = i % #paths + 1
  return wrk.format("GET", paths[i], headers)
end

function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    '{"requests": %d, "duration_us": %d, "p50_us": %d, "p90_us": %d, "p99_us": %d, "max_us": %d, ' ..
    '"err_connect": %d, "err_read": %d, "err_write": %d, "err_status": %d, "err_timeout": %d}\n',
    summary.requests, summary.duration, latency:percentile(50), latency:percentile(90),
    latency:percentile(99), latency.max, e.connect, e.read, e.write, e.status, e.timeout))
end
"""


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--backend", choices=("sqlite", "postgres"), default="sqlite")
    p.add_argument("--resources", type=int, default=300, help="Patients to load and read (default 300)")
    p.add_argument("--seconds", type=int, default=10)
    p.add_argument("--warmup", type=int, default=3, help="unmeasured wrk seconds first (caches, validators)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--connections", type=int, default=16)
    p.add_argument("--workers", type=int, default=1, help="uvicorn workers of each server")
    p.add_argument("--rounds", type=int, default=1, help="1: no-auth then auth; 2: A B B A")
    p.add_argument("--token", choices=("auto", "own", "oidc"), default="auto")
    p.add_argument("--keep", action="store_true", help="keep the temporary data directory")
    return p.parse_args(argv)


# -- data ----------------------------------------------------------------------------------------

def load(data_dir: Path, db_url: str, n: int) -> list[str]:
    """``n`` Patients written in-process (no server, no auth); returns their ``Patient/<id>`` paths."""
    from medcloud.app import build_services
    from medcloud.config import Settings
    from medcloud.fhir import router
    from medcloud.fhir.exchange import SYSTEM, FhirRequest

    svc = build_services(Settings(data_dir=data_dir, db=db_url, auth=False))
    try:
        entries = [{"resource": {"resourceType": "Patient", "gender": "female" if i % 2 else "male",
                                 "name": [{"family": f"Bench{i:05d}", "given": ["Auth"]}],
                                 "birthDate": f"19{50 + i % 50}-0{1 + i % 9}-1{i % 10}"},
                    "request": {"method": "POST", "url": "Patient"}} for i in range(n)]
        bundle = {"resourceType": "Bundle", "type": "transaction", "entry": entries}
        resp = router.handle(svc.fhir, FhirRequest("POST", "", body=bundle, principal=SYSTEM))
        if resp.status != 200:
            raise RuntimeError(f"loading failed: HTTP {resp.status}")
        body = resp.resource if resp.resource is not None else json.loads(resp.raw or b"{}")
        # entry.response.location: "<base>/Patient/<id>/_history/1"
        return ["Patient/" + e["response"]["location"].split("/Patient/", 1)[1].split("/")[0] for e in body["entry"]]
    finally:
        svc.close()


# -- tokens --------------------------------------------------------------------------------------

class LocalIssuer:
    """A minimal OIDC issuer on a loopback port: one ES256 key, its JWKS, tokens for one audience."""

    def __init__(self) -> None:
        import jwt
        from cryptography.hazmat.primitives.asymmetric import ec

        self._key = ec.generate_private_key(ec.SECP256R1())
        jwk = json.loads(jwt.algorithms.ECAlgorithm.to_jwk(self._key.public_key()))
        body = json.dumps({"keys": [{**jwk, "kid": "bench", "use": "sig", "alg": "ES256"}]}).encode()

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.issuer = f"http://127.0.0.1:{self._server.server_address[1]}/realms/bench"
        threading.Thread(target=self._server.serve_forever, daemon=True).start()

    def env(self) -> str:
        return json.dumps([{"issuer": self.issuer, "audience": "medcloud-bench", "jwks_uri": self.issuer + "/certs",
                            "algorithms": ["ES256"]}])

    def token(self, seconds: int) -> str:
        import jwt

        now = int(time.time())
        claims = {"iss": self.issuer, "sub": "bench", "aud": "medcloud-bench", "azp": "bench",
                  "scope": "system/*.rs", "iat": now, "nbf": now, "exp": now + seconds}
        return jwt.encode(claims, self._key, algorithm="ES256", headers={"kid": "bench"})

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()


def own_token(server: _server.Server, data_dir: Path) -> str:
    creds = json.loads((data_dir / "admin-credentials.json").read_text())
    r = httpx.post(f"http://127.0.0.1:{server.port}/auth/token", timeout=10,
                   auth=(creds["client_id"], creds["client_secret"]),
                   data={"grant_type": "client_credentials", "scope": "system/*.rs"})
    r.raise_for_status()
    return str(r.json()["access_token"])


def has_oauth_server() -> bool:
    from medcloud.security.startup import optional

    return None not in (optional("medcloud.security.oauth", "ensure_admin_client"),
                        optional("medcloud.security.oauth.tokens", "verify_access_token"))


# -- one measurement -----------------------------------------------------------------------------

def measure(args: argparse.Namespace, data_dir: Path, db_url: str, work: Path, paths: list[str], *,
            auth: bool, issuer: LocalIssuer | None) -> dict[str, Any]:
    server = _server.Server(data_dir, db_url, args.workers, work / f"server-{'auth' if auth else 'noauth'}.log")
    # bench/_server.py serves --no-auth (the issue-3 figures); the auth run takes that flag out.
    server.command = [a for a in server.command if a != "--no-auth"] + ([] if auth else ["--no-auth"])
    os.environ.pop("MEDCLOUD_OIDC_ISSUERS", None)
    if issuer is not None:
        os.environ["MEDCLOUD_OIDC_ISSUERS"] = issuer.env()
    try:
        startup = server.start()
        token = ""
        if auth:
            token = issuer.token(args.seconds + 120) if issuer is not None else own_token(server, data_dir)
        _check(server.base, paths, token, auth)
        if args.warmup > 0:
            run_wrk(server.base, paths, work, token, args, args.warmup)
        out = run_wrk(server.base, paths, work, token, args, args.seconds)
        out.update({"auth": auth, "startup_s": round(startup, 2), "server_command": shlex.join(server.command)})
        return out
    finally:
        server.stop()


def _check(base: str, paths: list[str], token: str, auth: bool) -> None:
    """Reads answer 200 with the token, and 401 without it when auth is on: the run measures what it says."""
    with httpx.Client(timeout=10) as c:
        for p in paths[:5]:
            r = c.get(f"{base}/{p}", headers={"Authorization": f"Bearer {token}"} if token else {})
            if r.status_code != 200:
                raise RuntimeError(f"GET {p}: HTTP {r.status_code} {r.text[:200]}")
        if auth and c.get(f"{base}/{paths[0]}").status_code != 401:
            raise RuntimeError("auth is on but a request without a token was not refused")


def run_wrk(base: str, paths: list[str], work: Path, token: str, args: argparse.Namespace,
            seconds: int) -> dict[str, Any]:
    exe = shutil.which("wrk")
    if exe is None:
        raise RuntimeError("wrk is not installed (Debian package 'wrk')")
    ids_file = work / "paths.txt"
    ids_file.write_text("".join(f"/fhir/{p}\n" for p in paths))
    script = work / "auth.lua"
    script.write_text(LUA)
    origin = base.rsplit("/fhir", 1)[0]
    cmd = [exe, f"-t{args.threads}", f"-c{args.connections}", f"-d{seconds}s", "--timeout", "10s",
           "-s", str(script), origin, "--", str(ids_file), token]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=seconds + 60)
    line = next((x for x in out.stdout.splitlines() if x.startswith("{")), None)
    if out.returncode != 0 or line is None:
        raise RuntimeError(f"wrk failed ({out.returncode}): {out.stderr[-500:] or out.stdout[-500:]}")
    raw = json.loads(line)
    secs = raw["duration_us"] / 1e6
    shown = [*cmd[:-1], "<token>"] if token else cmd
    return {
        "requests": raw["requests"],
        "req_per_s": round(raw["requests"] / secs, 1),
        "p50_ms": raw["p50_us"] / 1000,
        "p90_ms": raw["p90_us"] / 1000,
        "p99_ms": raw["p99_us"] / 1000,
        "max_ms": raw["max_us"] / 1000,
        "errors": {k[4:]: v for k, v in raw.items() if k.startswith("err_") and v},
        "wrk_command": shlex.join(shown),
    }


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    _server.install_signal_cleanup()
    work = Path(tempfile.mkdtemp(prefix="medcloud-bench-auth-"))
    data_dir = work / "data"
    db_url = ""
    pg_db = "medcloud_bench_auth"
    if args.backend == "postgres":
        db_url = _create_pg(pg_db)
    issuer = None
    token_source = args.token
    if token_source == "auto":
        token_source = "own" if has_oauth_server() else "oidc"
    if token_source == "oidc":
        issuer = LocalIssuer()
    started = dt.datetime.now(dt.UTC)
    result: dict[str, Any] = {
        "benchmark": "auth overhead on read by id",
        "date": started.strftime("%Y-%m-%dT%H:%M:%SZ"),
        "command": shlex.join([Path(sys.executable).name, *sys.argv]),
        "machine": _machine.machine(),
        "load_avg_start": _machine.load_average(),
        "backend": args.backend,
        "resources": args.resources,
        "token": token_source,
        "goal": f"auth on <= {GOAL_PCT:.0f} % slower than --no-auth",
    }
    try:
        t0 = time.perf_counter()
        paths = load(data_dir, db_url, args.resources)
        result["load_s"] = round(time.perf_counter() - t0, 2)
        order = [False, True] if args.rounds <= 1 else [False, True, True, False] * (args.rounds // 2)
        runs = []
        for auth in order:
            print(f"[auth-bench] {'auth on' if auth else '--no-auth'} ...", file=sys.stderr, flush=True)
            runs.append(measure(args, data_dir, db_url, work, paths, auth=auth, issuer=issuer))
        result["runs"] = runs
        result.update(_summary(runs))
    finally:
        result["load_avg_end"] = _machine.load_average()
        _server.stop_all()
        if issuer is not None:
            issuer.close()
        if args.backend == "postgres":
            _drop_pg(pg_db)
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    result["git"] = _machine.git_commit()
    RESULTS.mkdir(exist_ok=True)
    out = RESULTS / f"{started.strftime('%Y-%m-%dT%H%MZ')}-auth-{args.backend}.json"
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))
    print(f"written to {out}", file=sys.stderr)
    return 0


def _summary(runs: list[dict[str, Any]]) -> dict[str, Any]:
    def mean(key: str, auth: bool) -> float:
        vals = [r[key] for r in runs if r["auth"] is auth]
        return round(sum(vals) / len(vals), 2)

    off, on = mean("req_per_s", False), mean("req_per_s", True)
    slower = round(100 * (off - on) / off, 1) if off else None
    return {
        "no_auth_req_per_s": off,
        "auth_req_per_s": on,
        "no_auth_p50_ms": mean("p50_ms", False),
        "auth_p50_ms": mean("p50_ms", True),
        "no_auth_p99_ms": mean("p99_ms", False),
        "auth_p99_ms": mean("p99_ms", True),
        "auth_slower_pct": slower,
        "goal_met": slower is not None and slower <= GOAL_PCT,
        "non_2xx": sum(r["errors"].get("status", 0) for r in runs),
    }


def _create_pg(name: str) -> str:
    from sqlalchemy import create_engine, text

    admin = create_engine(_server.PG_ADMIN_URL.replace("postgresql://", "postgresql+psycopg://", 1),
                          isolation_level="AUTOCOMMIT")
    with admin.connect() as c:
        c.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        c.execute(text(f'CREATE DATABASE "{name}"'))
    admin.dispose()
    return _server.PG_ADMIN_URL.rsplit("/", 1)[0] + f"/{name}"


def _drop_pg(name: str) -> None:
    from sqlalchemy import create_engine, text

    admin = create_engine(_server.PG_ADMIN_URL.replace("postgresql://", "postgresql+psycopg://", 1),
                          isolation_level="AUTOCOMMIT")
    with admin.connect() as c:
        c.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    admin.dispose()


if __name__ == "__main__":
    raise SystemExit(main())
