"""``medcloud cohort define|run|list``: saved cohorts on the local store, as the system principal.

Runs over the store go through the FHIR router (``POST Group/[id]/$cohort-run``), exactly as over
HTTP; ``run --source DIR`` evaluates a SQL cohort over a Parquet/NDJSON folder instead and writes the
result the same way. Exit codes: 0 ok, 3 invalid input or unknown cohort (message on stderr).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import orjson
import typer

from medcloud.analytics import cohorts
from medcloud.errors import Invalid, MedcloudError

if TYPE_CHECKING:
    from medcloud.app import Services

app = typer.Typer(name="cohort", help="Saved, versioned cohorts materialised as FHIR Groups.", no_args_is_help=True)

DataDir = Annotated[Path | None, typer.Option("--data-dir", help="Data directory (SQLite database, files).")]
DbUrl = Annotated[str | None, typer.Option("--db", help="Database URL, e.g. postgresql://user@host/db.")]


def _services(data_dir: Path | None, db: str | None) -> Services:
    from medcloud.app import build_services
    from medcloud.config import Settings

    overrides = {k: v for k, v in {"data_dir": data_dir, "db": db}.items() if v is not None}
    return build_services(Settings().with_overrides(**overrides))


def _fail(message: str) -> typer.Exit:
    typer.echo(f"error: {message}", err=True)
    return typer.Exit(3)


def _router(svc: Services, method: str, path: str, body: Any = None) -> dict[str, Any]:
    from medcloud.fhir import router
    from medcloud.fhir.exchange import SYSTEM, FhirRequest

    resp = router.handle(svc.fhir, FhirRequest(method, path, [], body=body, principal=SYSTEM))
    doc = resp.resource if resp.resource is not None else orjson.loads(resp.raw or b"{}")
    if resp.status >= 400:
        raise _fail("; ".join(i.get("diagnostics", "") for i in doc.get("issue", [])) or f"HTTP {resp.status}")
    return doc


@app.command()
def define(
    cohort_id: Annotated[str, typer.Argument(help="Cohort id (the definition is Group/<id>).")],
    search: Annotated[str | None, typer.Option(help="FHIR search, e.g. 'Condition?code=http://snomed.info/sct|44054006'.")] = None,
    sql: Annotated[Path | None, typer.Option(help="File with a DuckDB query returning patient_id.")] = None,
    view: Annotated[list[Path] | None, typer.Option(help="ViewDefinition JSON; its name is the SQL table name.")] = None,
    title: Annotated[str, typer.Option(help="Human-readable name (Group.name).")] = "",
    data_dir: DataDir = None,
    db: DbUrl = None,
) -> None:
    """Save a cohort definition (a new version if it exists). Checks the expression first."""
    if (search is None) == (sql is None):
        raise _fail("give exactly one of --search or --sql")
    try:
        if search is not None:
            definition = cohorts.CohortDefinition(cohort_id, cohorts.FHIR_QUERY, search, title)
        else:
            assert sql is not None
            views = tuple(json.loads(p.read_text()) for p in view or [])
            definition = cohorts.CohortDefinition(cohort_id, cohorts.SQL, sql.read_text(), title, views)
        definition.check()
    except (OSError, json.JSONDecodeError) as e:
        raise _fail(str(e)) from e
    except MedcloudError as e:
        raise _fail(e.message) from e
    svc = _services(data_dir, db)
    try:
        if search is not None:
            _check_search(svc, search)
        doc = _router(svc, "PUT", f"Group/{cohort_id}", definition.to_group())
    finally:
        svc.close()
    typer.echo(f"Group/{cohort_id} version {doc['meta']['versionId']}")


def _check_search(svc: Services, expression: str) -> None:
    """Plan the search once (unknown parameters, bad values) so a bad cohort is never saved."""
    from medcloud.fhir.exchange import SYSTEM

    ctx = svc.fhir
    try:
        with ctx.db.read() as conn:
            cohorts.check_search(ctx, conn, SYSTEM, expression)
    except MedcloudError as e:
        raise _fail(f"cohort search {expression!r}: {e.message}") from e


@app.command()
def run(
    cohort_id: Annotated[str, typer.Argument(help="Cohort id.")],
    source: Annotated[Path | None, typer.Option(help="Parquet/NDJSON folder for a SQL cohort (default: the store).")] = None,
    out: Annotated[Path | None, typer.Option(help="Also write the member ids as CSV (patient_id).")] = None,
    data_dir: DataDir = None,
    db: DbUrl = None,
) -> None:
    """Evaluate a cohort and write a new version of Group/<id>-members."""
    svc = _services(data_dir, db)
    try:
        if source is None:
            group = _router(svc, "POST", f"Group/{cohort_id}/$cohort-run")
        else:
            group = _run_on_folder(svc, cohort_id, source)
    finally:
        svc.close()
    members = [m["entity"]["reference"].split("/", 1)[1] for m in group.get("member", [])]
    if out is not None:
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = out.with_name(f".{out.name}.partial")
        tmp.write_text("patient_id\n" + "".join(f"{m}\n" for m in members))
        tmp.replace(out)
    typer.echo(f"Group/{group['id']} version {group['meta']['versionId']}: {group['quantity']} patients")


def _run_on_folder(svc: Services, cohort_id: str, source: Path) -> dict[str, Any]:
    from medcloud.analytics.engines._sources import source_from_path
    from medcloud.fhir.exchange import SYSTEM

    ctx = svc.fhir
    try:
        with ctx.db.read() as conn:
            definition, stored = cohorts.read_definition(ctx, conn, SYSTEM, cohort_id)
        if definition.language != cohorts.SQL:
            raise Invalid("--source applies to SQL cohorts; a FHIR search cohort runs over the store")
        src = source_from_path(source)
        members = cohorts.sql_members(definition, {cohorts.view_name(v): src for v in definition.views})
        with ctx.db.write() as conn:
            run = cohorts.materialise(ctx, conn, SYSTEM, definition, stored, members)
    except MedcloudError as e:
        raise _fail(e.message) from e
    return dict(orjson.loads(run.content or b"{}"))


@app.command("list")
def list_(data_dir: DataDir = None, db: DbUrl = None) -> None:
    """Saved cohorts: id, language, definition version, last run (version and size)."""
    from medcloud.fhir.exchange import SYSTEM

    svc = _services(data_dir, db)
    try:
        with svc.fhir.db.read() as conn:
            rows = []
            for d, s in cohorts.list_definitions(svc.fhir, conn, SYSTEM):
                run = svc.fhir.store.read(conn, "Group", d.id + cohorts.MEMBERS_SUFFIX)
                last = "never run"
                if run is not None and run.content:
                    last = f"run v{run.version}: {orjson.loads(run.content).get('quantity', 0)} patients"
                rows.append(f"{d.id}\t{d.language}\tv{s.version}\t{last}\t{d.title}")
    finally:
        svc.close()
    typer.echo("\n".join(rows) if rows else "no cohorts")
