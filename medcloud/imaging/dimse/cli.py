"""``medcloud dicom serve|echo|send|find|move``: the DIMSE SCP standalone and an SCU for remote AEs.

Exit codes: 0 success; 1 the operation failed (a file not stored, a failure status); 2 bad usage or
configuration; 3 cannot connect; 4 association rejected or aborted.
"""

from __future__ import annotations

import contextlib
import json
import signal
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console

app = typer.Typer(no_args_is_help=True, help="DICOM DIMSE: run the SCP, or echo/send/find/move to remote AEs.")
console = Console(stderr=True)
out = Console()

DataDir = Annotated[Path | None, typer.Option("--data-dir", help="Data directory (SQLite database, files).")]
DbUrl = Annotated[str | None, typer.Option("--db", help="Database URL, e.g. postgresql://user@host/db.")]
Remote = Annotated[str | None, typer.Option("--remote", "-r", help="A configured remote AE (dicom_remotes) by title.")]
Host = Annotated[str | None, typer.Option("--host", help="Remote host (overrides --remote).")]
Port = Annotated[int | None, typer.Option("--port", help="Remote port (overrides --remote).")]
Aet = Annotated[str | None, typer.Option("--aet", help="Called AE title (default: the remote's title).")]
Calling = Annotated[str | None, typer.Option("--calling-aet", help="Our AE title (default: dicom_ae_title).")]
Level = Annotated[str, typer.Option("--level", "-L", help="PATIENT, STUDY, SERIES or IMAGE.")]
Model = Annotated[str, typer.Option("--model", "-m", help="Information model: study (Study Root) or patient.")]
Keys = Annotated[list[str] | None, typer.Option("--key", "-k", help="Keyword=value (or Keyword to return it); "
                                                "repeatable. Wildcards *, ?, ranges a-b, UID lists a\\b.")]


def _settings(**overrides: Any) -> Any:
    from medcloud.config import Settings

    try:
        return Settings().with_overrides(**overrides)
    except Exception as e:  # pydantic ValidationError: bad env/toml/flag values
        console.print(f"[red]invalid configuration:[/red] {e}", highlight=False)
        raise typer.Exit(2) from e


def _services(settings: Any) -> Any:
    """The store's services for a command; a database that cannot be opened exits 1."""
    from medcloud.app import build_services

    try:
        return build_services(settings)
    except Exception as e:  # unreachable database, bad URL, failed migration
        console.print(f"[red]cannot start:[/red] {e}", highlight=False)
        raise typer.Exit(1) from e


def _fail(e: Exception) -> typer.Exit:
    from medcloud.errors import Invalid
    from medcloud.imaging.dimse.scu import DimseError

    if isinstance(e, DimseError):
        console.print(f"[red]error:[/red] {e.message}", highlight=False, soft_wrap=True)
        return typer.Exit(e.exit_code)
    if isinstance(e, Invalid):
        console.print(f"[red]error:[/red] {e.message}", highlight=False, soft_wrap=True)
        return typer.Exit(2)
    raise e


def _peer(remote: str | None, host: str | None, port: int | None, aet: str | None, calling: str | None
          ) -> tuple[str, Any]:
    from medcloud.errors import Invalid
    from medcloud.imaging.dimse.remotes import resolve

    settings = _settings()
    try:
        return calling or settings.dicom_ae_title, resolve(settings.dicom_remotes, remote, host, port, aet)
    except Invalid as e:
        raise _fail(e) from e


@app.command()
def serve(
    data_dir: DataDir = None,
    db: DbUrl = None,
    host: Annotated[str | None, typer.Option(help="Address to bind (default: the HTTP host setting).")] = None,
    port: Annotated[int | None, typer.Option("--port", help="DIMSE port (default dicom_port, 11112).")] = None,
    aet: Annotated[str | None, typer.Option("--aet", help="Our AE title (default MEDCLOUD).")] = None,
    allow_unknown: Annotated[bool, typer.Option("--allow-unknown", help="Accept any calling AE title.")] = False,
    processes: Annotated[int | None, typer.Option("--processes", help="SCP processes sharing the port "
                                                  "(SO_REUSEPORT; default dicom_processes, 1).")] = None,
) -> None:
    """Run only the DIMSE SCP (C-ECHO/STORE/FIND/MOVE/GET) against the archive, until Ctrl-C."""
    from medcloud.imaging.dimse.pool import ScpPool, process_count
    from medcloud.imaging.dimse.scp import DimseServer

    settings = _settings(data_dir=data_dir, db=db, host=host, dicom_ae_title=aet,
                         dicom_allow_unknown=True if allow_unknown else None, dicom_processes=processes)
    bind_port = port if port is not None else settings.dicom_port
    if bind_port == 0:
        console.print("[red]cannot start:[/red] the DIMSE port is 0 (off); give --port")
        raise typer.Exit(2)
    services = _services(settings)
    worker = services.job_worker()  # study-stable events and jobs, as the HTTP app would run them
    pool = ScpPool()
    try:
        assert services.imaging is not None
        server = DimseServer(services.imaging, settings, port=bind_port)
        try:
            # the extra processes first (see scp.running), then this one
            pool.start(settings, bind_port, process_count(settings) - 1)
            bound = server.start()
        except OSError as e:
            console.print(f"[red]cannot start:[/red] DIMSE port {bind_port}: {e.strerror or e}", highlight=False)
            raise typer.Exit(1) from e
        worker.start()
        callers = "any" if settings.dicom_allow_unknown else (
            ", ".join(r.title for r in settings.dicom_remotes) or "none (configure dicom_remotes)")
        console.print(f"[bold green]medcloud[/bold green] DIMSE SCP {settings.dicom_ae_title} on "
                      f"{server.host}:{bound} ({len(pool.pids) + 1} processes); calling AE titles allowed: "
                      f"{callers}", highlight=False)
        signal.signal(signal.SIGTERM, lambda *_: server.request_stop())  # serve_forever returns, cleanup runs
        with contextlib.suppress(KeyboardInterrupt):
            server.serve_forever()
    finally:
        pool.stop()
        worker.stop()
        services.close()


@app.command()
def reindex(data_dir: DataDir = None, db: DbUrl = None) -> None:
    """Index the configured extra matching keys (dicom_extra_tags) of every stored instance."""
    settings = _settings(data_dir=data_dir, db=db)
    services = _services(settings)
    try:
        assert services.imaging is not None
        tags = services.imaging.config.extra_tags
        n = services.imaging.reindex_extra()
    finally:
        services.close()
    names = ", ".join(tags) or "none configured (the index was emptied)"
    out.print(f"indexed {n} instances; extra matching keys: {names}", highlight=False)


@app.command()
def fsck(
    repair: Annotated[bool, typer.Option("--repair", help="Delete orphan objects and staged temp files "
                                                          "older than --min-age.")] = False,
    min_age: Annotated[float, typer.Option("--min-age", help="Seconds an orphan must be old to be deleted "
                                                             "(a younger one may be about to be indexed).")] = 3600.0,
    data_dir: DataDir = None,
    db: DbUrl = None,
) -> None:
    """Compare the blob store with the index: orphan objects (no index row) and missing ones (a row
    whose file is gone). Exit 1 when anything is missing or orphans remain."""
    settings = _settings(data_dir=data_dir, db=db)
    services = _services(settings)
    try:
        assert services.imaging is not None
        found = services.imaging.check_blobs(repair=repair, min_age=min_age)
    finally:
        services.close()
    for key in found.missing:
        out.print(f"missing: {key}", highlight=False)
    for key in found.orphans[:50]:
        out.print(f"orphan: {key}", highlight=False)
    out.print(f"{found.objects} objects; {len(found.orphans)} orphan(s), {len(found.missing)} missing; "
              f"removed {found.removed} orphan(s) and {found.swept} staged temp file(s)", highlight=False)
    if found.missing or len(found.orphans) > found.removed:
        raise typer.Exit(1)


@app.command()
def echo(remote: Remote = None, host: Host = None, port: Port = None, aet: Aet = None,
         calling_aet: Calling = None) -> None:
    """C-ECHO (verification) to a remote AE."""
    from medcloud.imaging.dimse import scu

    calling, peer = _peer(remote, host, port, aet, calling_aet)
    try:
        code = scu.echo(calling, peer)
    except Exception as e:
        raise _fail(e) from e
    if code != 0:
        console.print(f"[red]C-ECHO failed:[/red] status 0x{code:04X}")
        raise typer.Exit(1)
    out.print(f"C-ECHO {peer.title}@{peer.host}:{peer.port}: success", highlight=False)


@app.command()
def send(
    paths: Annotated[list[Path], typer.Argument(help="DICOM files and/or directories (recursive).")],
    remote: Remote = None, host: Host = None, port: Port = None, aet: Aet = None, calling_aet: Calling = None,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="Only the summary and failures.")] = False,
) -> None:
    """C-STORE files to a remote AE; prints a status per file and a summary (exit 1 if any failed)."""
    from medcloud.imaging.dimse import scu

    calling, peer = _peer(remote, host, port, aet, calling_aet)
    try:
        files = scu.dicom_files(paths)
    except Exception as e:
        raise _fail(e) from e
    if not files:
        console.print("[red]error:[/red] no files to send")
        raise typer.Exit(2)
    done = [0]

    def progress(r: scu.SendResult) -> None:
        done[0] += 1
        if not r.ok or not quiet:
            state = "[green]ok[/green]" if r.ok else "[red]FAILED[/red]"
            code = f"0x{r.status:04X}" if r.status is not None else "not sent"
            note = f" {r.message}" if r.message else ""
            console.print(f"[{done[0]}/{len(files)}] {state} {code} {r.path}{note}", highlight=False,
                          soft_wrap=True)

    try:
        results = scu.send(calling, peer, files, progress)
    except Exception as e:
        raise _fail(e) from e
    ok = sum(r.ok for r in results)
    warn = sum(r.ok and r.status != 0 for r in results)
    failed = len(results) - ok
    out.print(f"sent {len(results)} files to {peer.title}@{peer.host}:{peer.port}: {ok} stored"
              f" ({warn} with warnings), {failed} failed", highlight=False)
    if failed:
        raise typer.Exit(1)


@app.command("find")
def find_cmd(
    remote: Remote = None, host: Host = None, port: Port = None, aet: Aet = None, calling_aet: Calling = None,
    level: Level = "STUDY", model: Model = "study", key: Keys = None,
    as_json: Annotated[bool, typer.Option("--json", help="DICOM JSON, one object per line.")] = False,
) -> None:
    """C-FIND at a level; prints the matches (default keys per level when no --key is given)."""
    from medcloud.imaging.dimse import scu

    calling, peer = _peer(remote, host, port, aet, calling_aet)
    try:
        if model not in scu.MODELS["find"]:
            raise scu.Invalid(f"--model must be study or patient, not {model!r}")
        keys = list(key or [])
        if not any(k.partition("=")[2] == "" for k in keys):  # nothing asked back: the usual columns
            keys += [k for k in scu.DEFAULT_KEYS.get(level.upper(), ()) if all(not x.startswith(k) for x in keys)]
        matches = scu.find(calling, peer, model, scu.identifier(level, keys))
    except Exception as e:
        raise _fail(e) from e
    for ds in matches:
        if as_json:
            out.print(json.dumps(ds.to_json_dict()), highlight=False, soft_wrap=True)
        else:
            out.print("  ".join(f"{el.keyword}={el.value}" for el in ds if el.keyword not in
                                ("SpecificCharacterSet", "QueryRetrieveLevel", "RetrieveAETitle")),
                      highlight=False, soft_wrap=True)
    console.print(f"{len(matches)} match(es)")


@app.command()
def move(
    dest: Annotated[str, typer.Option("--dest", help="Move destination AE title (known to the remote).")],
    remote: Remote = None, host: Host = None, port: Port = None, aet: Aet = None, calling_aet: Calling = None,
    level: Level = "STUDY", model: Model = "study", key: Keys = None,
) -> None:
    """C-MOVE matching instances from a remote AE to --dest; prints sub-operation counts."""
    from medcloud.imaging.dimse import scu

    calling, peer = _peer(remote, host, port, aet, calling_aet)
    try:
        if model not in scu.MODELS["move"]:
            raise scu.Invalid(f"--model must be study or patient, not {model!r}")
        result = scu.move(calling, peer, dest, model, scu.identifier(level, list(key or [])))
    except Exception as e:
        raise _fail(e) from e
    out.print(f"C-MOVE to {dest}: status 0x{result.status:04X}, {result.completed} completed, "
              f"{result.failed} failed, {result.warning} warning", highlight=False)
    if result.status != 0 and result.status & 0xF000 != 0xB000:
        if result.comment:
            console.print(f"[red]{result.comment}[/red]", highlight=False)
        raise typer.Exit(1)


# ``medcloud dicom export --deid`` / ``medcloud dicom deid`` (security/deid/dicom_cli.py)
from medcloud.security.deid.dicom_cli import register as _register_deid  # noqa: E402

_register_deid(app)
