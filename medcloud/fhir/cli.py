"""``medcloud load``, ``medcloud export`` and ``medcloud worker``: argument parsing and progress only.

The work is done by ``medcloud.fhir.loader`` (Bundles through the router or to a server), the
``$export`` code (``medcloud.fhir.operations._export_run``, or the async Bulk Data protocol against
a server) and ``medcloud.jobs.Worker``.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Annotated, Any
from urllib.parse import parse_qs, urlparse

import typer
from rich.console import Console
from rich.progress import (
    BarColumn,
    Progress,
    ProgressColumn,
    SpinnerColumn,
    Task,
    TextColumn,
    TimeElapsedColumn,
)
from rich.text import Text

console = Console(stderr=True)

DataDir = Annotated[Path | None, typer.Option("--data-dir", help="Data directory (SQLite database, files).")]
DbUrl = Annotated[str | None, typer.Option("--db", help="Database URL, e.g. postgresql://user@host/db.")]
Server = Annotated[str | None, typer.Option("--server", help="FHIR base URL of a running server (default: "
                                                             "work on the data dir/database directly).")]
Token = Annotated[str | None, typer.Option("--token", envvar="MEDCLOUD_TOKEN", show_envvar=True,
                                           help="Bearer access token for --server.")]


def register(app: typer.Typer) -> None:
    app.command("load")(load)
    app.command("export")(export)
    app.command("worker")(worker)


def _settings(**overrides: Any) -> Any:
    from medcloud.config import Settings

    try:
        return Settings().with_overrides(**overrides)
    except Exception as e:  # pydantic ValidationError: bad env/toml/flag values
        console.print(f"[red]invalid configuration:[/red] {e}")
        raise typer.Exit(2) from e


class _ResourcesPerSecond(ProgressColumn):
    def render(self, task: Task) -> Text:
        n = task.fields.get("resources", 0)
        rate = n / task.elapsed if task.elapsed else 0.0
        return Text(f"{n:,} resources  {rate:,.0f} res/s", style="progress.data.speed")


def load(
    paths: Annotated[list[Path], typer.Argument(help="Bundle (.json) and NDJSON (.ndjson) files, or directories.")],
    server: Server = None,
    data_dir: DataDir = None,
    db: DbUrl = None,
    concurrency: Annotated[int, typer.Option(min=1, help="Bundles in flight at once.")] = 2,
    batch_size: Annotated[int, typer.Option(min=1, help="NDJSON resources per batch Bundle.")] = 500,
    token: Token = None,
) -> None:
    """Load transaction/batch Bundles, NDJSON files and directories of them."""
    from medcloud.fhir import loader

    missing = [p for p in paths if not p.exists()]
    files = loader.expand([p for p in paths if p.exists()])
    total = sum(f.stat().st_size for f in files if f.is_file())
    services = None
    if server:
        import httpx

        sender: Any = loader.Remote(server, client=httpx.Client(timeout=600.0, headers=_bearer(token)))
    else:
        from medcloud.app import build_services

        services = build_services(_settings(data_dir=data_dir, db=db))
        sender = loader.InProcess(services.fhir)
    started = time.monotonic()
    try:
        with Progress(SpinnerColumn(), TextColumn("[bold]loading"), BarColumn(), TextColumn("{task.percentage:>3.0f}%"),
                      _ResourcesPerSecond(), TimeElapsedColumn(), console=console, transient=False) as progress:
            task = progress.add_task("load", total=total or None, resources=0)

            def advance(nbytes: int, stored: int) -> None:
                t = progress.tasks[task]
                progress.update(task, advance=nbytes, resources=t.fields["resources"] + stored)

            summary = loader.load(files, sender, concurrency=concurrency, batch_size=batch_size, on_progress=advance)
        if services is not None:
            services.db.analyze()  # fresh planner statistics after a bulk load
    finally:
        if isinstance(sender, loader.Remote):
            sender.close()
        if services is not None:
            services.close()
    summary.errors[:0] = [loader.LoadError(str(p), "file", "no such file or directory") for p in missing]
    elapsed = time.monotonic() - started
    for e in summary.errors:
        console.print(f"[red]error[/red] {e}", highlight=False, soft_wrap=True)
    failed = summary.failed_files
    rate = summary.resources / elapsed if elapsed else 0
    console.print(f"loaded {summary.resources:,} resources from {summary.files + len(missing) - len(failed)} of "
                  f"{summary.files + len(missing)} files in {elapsed:.1f} s ({rate:,.0f} res/s); "
                  f"{len(failed)} file(s) with errors", highlight=False, soft_wrap=True)
    if failed:
        raise typer.Exit(1)


def export(
    out: Annotated[Path, typer.Option("--out", help="Folder for the NDJSON files (created if missing).")],
    types: Annotated[list[str] | None, typer.Option("--type", help="Resource type(s); repeat or comma-separate.")] = None,
    since: Annotated[str | None, typer.Option(help="Only resources changed after this FHIR instant.")] = None,
    server: Server = None,
    data_dir: DataDir = None,
    db: DbUrl = None,
    token: Token = None,
) -> None:
    """Bulk-export resources as NDJSON files (one or more per type) into a folder."""
    type_list = sorted({t.strip() for v in types or [] for t in v.split(",") if t.strip()}) or None
    out.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    try:
        files = _export_remote(server, out, type_list, since, token) if server else _export_local(
            out, type_list, since, data_dir, db)
    except _ExportFailed as e:
        console.print(f"[red]export failed:[/red] {e}", highlight=False)
        raise typer.Exit(1) from e
    n = sum(c for _, _, c in files)
    for t, name, c in files:
        console.print(f"  {name}  {t}  {c:,}", highlight=False)
    console.print(f"exported {n:,} resources in {len(files)} file(s) to {out} in {time.monotonic() - started:.1f} s",
                  highlight=False)


class _ExportFailed(Exception):
    pass


def _export_local(out: Path, types: list[str] | None, since: str | None, data_dir: Path | None,
                  db: str | None) -> list[tuple[str, str, int]]:
    from medcloud.app import build_services
    from medcloud.errors import Invalid
    from medcloud.fhir.definitions import resource_types
    from medcloud.fhir.exchange import SYSTEM
    from medcloud.fhir.operations._export_run import principal_to_json, run_export
    from medcloud.fhir.primitives import date_range

    unknown = [t for t in types or [] if t not in set(resource_types())]
    if unknown:
        raise _ExportFailed(f"unknown resource type(s): {', '.join(unknown)}")
    try:
        since_us = date_range(since)[0] if since else None
    except Invalid as e:
        raise _ExportFailed(f"--since: {e.message}") from e
    services = build_services(_settings(data_dir=data_dir, db=db))
    try:
        request = {"level": "system", "types": types, "since": since_us, "patients": None,
                   "principal": principal_to_json(SYSTEM), "warnings": []}
        result = run_export(services.fhir, request, out, None, lambda state: None)
    finally:
        services.close()
    return [(f["type"], f["name"], f["count"]) for f in result["output"]]


def _export_remote(server: str, out: Path, types: list[str] | None, since: str | None,
                   token: str | None = None) -> list[tuple[str, str, int]]:
    """The Bulk Data async protocol: kick-off, poll the status URL, download, then DELETE the job."""
    import httpx

    base = server.rstrip("/")
    params = {k: v for k, v in (("_type", ",".join(types) if types else None), ("_since", since)) if v}
    with httpx.Client(timeout=600.0, headers=_bearer(token)) as client:
        r = client.get(f"{base}/$export", params=params,
                       headers={"Prefer": "respond-async", "Accept": "application/fhir+json"})
        if r.status_code != 202:
            raise _ExportFailed(f"kick-off answered {r.status_code}: {_text(r)}")
        status_url = r.headers["content-location"]
        with Progress(SpinnerColumn(), TextColumn("[bold]exporting[/bold] {task.description}"), TimeElapsedColumn(),
                      console=console) as progress:
            task = progress.add_task("queued")
            while True:
                r = client.get(status_url)
                if r.status_code == 202:
                    progress.update(task, description=r.headers.get("x-progress", "in progress"))
                    time.sleep(min(float(r.headers.get("retry-after", "1") or 1), 10.0))
                    continue
                break
        if r.status_code != 200:
            raise _ExportFailed(f"the export answered {r.status_code}: {_text(r)}")
        manifest = r.json()
        files: list[tuple[str, str, int]] = []
        for item in manifest.get("output", []) + manifest.get("error", []):
            name = parse_qs(urlparse(item["url"]).query).get("_file", [None])[0] or \
                f"{item['type']}.{len(files) + 1:03d}.ndjson"
            name = Path(name).name
            with client.stream("GET", item["url"], headers={"Accept": "application/fhir+ndjson"}) as resp:
                if resp.status_code != 200:
                    raise _ExportFailed(f"download of {item['url']} answered {resp.status_code}")
                with open(out / name, "wb") as fh:
                    for chunk in resp.iter_bytes():
                        fh.write(chunk)
            files.append((item["type"], name, int(item.get("count", 0))))
        client.delete(status_url)  # the server may delete the files now (export.html#bulk-data-delete-request)
    return files


def _bearer(token: str | None) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"} if token else {}


def _text(r: Any) -> str:
    try:
        body = r.json()
        return "; ".join(i.get("diagnostics", "") for i in body.get("issue", [])) or r.text[:300]
    except ValueError:
        return r.text[:300]


def worker(data_dir: DataDir = None, db: DbUrl = None,
           processes: Annotated[int, typer.Option("--processes", "-n", min=1, max=64,
                                                  help="Worker processes (each claims jobs on its own; "
                                                       "use PostgreSQL for more than one).")] = 1) -> None:
    """Run background jobs (Bulk $export, AI reads) in this process, or in N processes, until interrupted."""
    settings = _settings(data_dir=data_dir, db=db)
    if processes > 1:
        _worker_processes(settings, processes)
        return
    _worker_loop(settings)


def _worker_processes(settings: Any, n: int) -> None:
    """N independent worker processes (no HTTP): the jobs table arbitrates (SKIP LOCKED claims, leases)."""
    import multiprocessing

    from medcloud.storage.migrate import upgrade
    from medcloud.storage.sql.database import Database

    database = Database.connect(settings.db_url)
    try:
        upgrade(database)  # once, before the workers race for it
    finally:
        database.dispose()
    spawn = multiprocessing.get_context("spawn")
    procs = [spawn.Process(target=_worker_loop, args=(settings, True), name=f"medcloud-worker-{i}", daemon=False)
             for i in range(n)]
    for p in procs:
        p.start()
    console.print(f"medcloud worker: {n} processes ({', '.join(str(p.pid) for p in procs)}); Ctrl-C to stop")
    try:
        for p in procs:
            p.join()
    except KeyboardInterrupt:
        for p in procs:
            p.join(timeout=35)


def _worker_loop(settings: Any, child: bool = False) -> None:
    from medcloud.app import build_services

    services = build_services(settings, migrate=not child)
    w = services.job_worker()
    w.start()
    console.print(f"medcloud worker {w.name} running; Ctrl-C to stop")
    try:
        while True:
            time.sleep(1.0)
    except KeyboardInterrupt:
        pass
    finally:
        w.stop()
        services.close()
