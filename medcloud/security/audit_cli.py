"""``medcloud audit verify`` and ``medcloud audit export``: the audit trail from the command line.

``verify`` exits 0 with a summary when the hash chain is intact, 1 naming the first bad entry
otherwise, 2 when the database cannot be read. The work is in ``audit_store``.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Annotated, Any

import orjson
import typer
from rich.console import Console

app = typer.Typer(name="audit", no_args_is_help=True, help="The hash-chained audit trail: verify and export.")
console = Console(stderr=True, soft_wrap=True)
out = Console(soft_wrap=True)  # one line per finding, whatever the terminal width

DataDir = Annotated[Path | None, typer.Option("--data-dir", help="Data directory (SQLite database, files).")]
DbUrl = Annotated[str | None, typer.Option("--db", help="Database URL, e.g. postgresql://user@host/db.")]
SHOWN = 20  # problems printed after the first one


def _database(data_dir: Path | None, db: str | None) -> Any:
    from sqlalchemy.engine import make_url

    from medcloud.config import Settings
    from medcloud.storage.sql.database import Database

    try:
        settings = Settings().with_overrides(data_dir=data_dir, db=db)
    except Exception as e:  # pydantic ValidationError: bad env/toml/flag values
        console.print(f"[red]invalid configuration:[/red] {e}")
        raise typer.Exit(2) from e
    url = settings.db_url
    if url.startswith("sqlite") and not Path(url.split("///", 1)[-1]).exists():
        console.print(f"[red]no database at[/red] {url.split('///', 1)[-1]}")
        raise typer.Exit(2)
    console.print(f"audit trail of {make_url(url).render_as_string(hide_password=True)}")
    return Database.connect(url, pool_size=1)


@app.command()
def verify(data_dir: DataDir = None, db: DbUrl = None) -> None:
    """Check every entry of the hash chain (streamed: constant memory); exit 1 on any problem."""
    from sqlalchemy.exc import SQLAlchemyError

    from medcloud.security import audit_store

    database = _database(data_dir, db)
    try:
        report = audit_store.verify(database, limit=SHOWN + 1)
    except SQLAlchemyError as e:
        console.print(f"[red]cannot read the audit log:[/red] {str(e).splitlines()[0]} "
                      "(is the database migrated? run `medcloud db upgrade`)")
        raise typer.Exit(2) from e
    finally:
        database.dispose()
    span = f"seq {report.first_seq}..{report.last_seq}" if report.entries else "empty"
    if report.ok:
        out.print(f"audit trail intact: {report.entries} entries ({span}), head {report.head_hash.hex()}")
        return
    first = report.problems[0]
    where = f"seq {first.seq}" if first.seq is not None else "the chain head"
    out.print(f"audit trail BROKEN: first bad entry {where}: {first.kind}: {first.detail}")
    for p in report.problems[1:SHOWN + 1]:
        out.print(f"  also seq {p.seq if p.seq is not None else '-'}: {p.kind}: {p.detail}")
    more = report.problem_count - min(len(report.problems), SHOWN + 1)
    if more > 0:
        out.print(f"  ... and {more} more")
    out.print(f"{report.problem_count} problem(s) in {report.entries} entries ({span})")
    raise typer.Exit(1)


@app.command()
def export(
    out_file: Annotated[Path, typer.Option("--out", help="NDJSON file to write (one AuditEvent per line).")],
    since: Annotated[str | None, typer.Option(help="Only events recorded at or after this FHIR date/dateTime.")] = None,
    data_dir: DataDir = None,
    db: DbUrl = None,
) -> None:
    """Write the AuditEvents (oldest first) as NDJSON; the file appears complete or not at all."""
    from sqlalchemy.exc import SQLAlchemyError

    from medcloud.errors import Invalid
    from medcloud.fhir.primitives import date_range
    from medcloud.security import audit_store

    since_us = None
    if since is not None:
        try:
            since_us = date_range(since)[0]
        except Invalid as e:
            console.print(f"[red]invalid --since:[/red] {e.message}")
            raise typer.Exit(2) from e
    database = _database(data_dir, db)
    out_file = out_file.resolve()
    out_file.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=out_file.parent, prefix=f".{out_file.name}.", suffix=".part")
    n = 0
    try:
        with os.fdopen(fd, "wb") as f:
            for row in audit_store.rows(database, since_us=since_us):
                f.write(orjson.dumps(audit_store.as_resource(row.seq, bytes(row.content))) + b"\n")
                n += 1
        os.replace(tmp, out_file)
    except SQLAlchemyError as e:
        console.print(f"[red]cannot read the audit log:[/red] {str(e).splitlines()[0]}")
        raise typer.Exit(2) from e
    finally:
        database.dispose()
        if os.path.exists(tmp):
            os.unlink(tmp)
    out.print(f"wrote {n} AuditEvents to {out_file}")
