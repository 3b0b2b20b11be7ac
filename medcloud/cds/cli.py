"""``medcloud cds``: evaluate a service over a cohort; train and register the WDBC model.

Exit codes: 0 ok, 1 refused (unknown service, bad input files), 2 configuration or database problem.
"""

from __future__ import annotations

import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated

import orjson
import typer
from rich.console import Console

from medcloud.errors import MedcloudError

app = typer.Typer(name="cds", no_args_is_help=True, help="Clinical decision support (CDS Hooks services).")
console = Console(stderr=True, soft_wrap=True)
out = Console(soft_wrap=True)

DataDir = Annotated[Path | None, typer.Option("--data-dir", help="Data directory (SQLite database, files).")]
DbUrl = Annotated[str | None, typer.Option("--db", help="Database URL, e.g. postgresql://user@host/db.")]


@app.command("evaluate")
def evaluate_cmd(
    service: Annotated[str, typer.Argument(help="Service id, e.g. cardiovascular-risk.")],
    patients: Annotated[list[Path], typer.Option("--patients", help="FHIR Bundle/NDJSON files or folders.")],
    outcomes: Annotated[Path | None, typer.Option("--outcomes", help="CSV patient_id,outcome (1/0).")] = None,
    at: Annotated[str | None, typer.Option("--at", help="Evaluate as of this date (ISO), default now.")] = None,
    data_dir: DataDir = None,
    db: DbUrl = None,
) -> None:
    """Score distribution of SERVICE over a cohort (and calibration where outcomes are known), as JSON."""
    from medcloud.ai.cli import registry
    from medcloud.cds import evaluate
    from medcloud.cds.engine import builtin_services
    from medcloud.config import Settings

    try:
        now = datetime.fromisoformat(at).replace(tzinfo=UTC) if at else datetime.now(UTC)
    except ValueError as e:
        console.print(f"[red]--at is not an ISO date:[/red] {at}")
        raise typer.Exit(1) from e
    with registry(data_dir, db) as reg:
        def load(name: str, version: str | None) -> tuple[object, str]:
            v = version or reg.get(name).version
            return reg.load(name, v), v

        settings = Settings().with_overrides(data_dir=data_dir, db=db)
        found = {s.id: s for s in builtin_services(settings, load)}
        if service not in found:
            console.print(f"[red]no service {service!r}[/red]; services: {', '.join(found)}")
            raise typer.Exit(1)
        try:
            known = evaluate.outcomes(outcomes) if outcomes else None
            started = time.perf_counter()
            report = evaluate.evaluate(found[service], evaluate.patients(patients), now, known)
        except (MedcloudError, OSError) as e:
            console.print(f"[red]{e}[/red]")
            raise typer.Exit(1) from e
    console.print(f"{report.patients} patients in {time.perf_counter() - started:.1f} s")
    out.print(orjson.dumps(report.to_json(), option=orjson.OPT_INDENT_2).decode(), highlight=False)


@app.command("train-breast-mass")
def train_breast_mass(
    version: Annotated[str | None, typer.Option(help="Version (default: the next free number).")] = None,
    activate: Annotated[bool, typer.Option(help="Make it the active version.")] = True,
    data_dir: DataDir = None,
    db: DbUrl = None,
) -> None:
    """Train the breast-mass-malignancy model on scikit-learn's WDBC data and register it."""
    from medcloud.ai.cli import registry
    from medcloud.cds import wdbc

    with registry(data_dir, db) as reg:
        pkg = wdbc.train(version or reg.next_version(wdbc.MODEL_NAME))
        v = reg.register(pkg, activate=activate, by="medcloud cds train-breast-mass")
    m = pkg.manifest.metrics
    out.print(f"registered {v.name} {v.version}{' (active)' if v.active else ''}: test ROC AUC "
              f"{m['test_roc_auc']:.3f}, ECE {m['test_ece']:.3f}, decision threshold {m['decision_threshold']:.3f}")
