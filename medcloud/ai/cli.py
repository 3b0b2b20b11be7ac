"""``medcloud ai``: the model registry from the shell (models, register, activate, remove), predictions
(predict) and the automatic reads (jobs).

Works on the store directly (``--data-dir`` / ``--db``), like ``medcloud admin``. Exit codes:
0 ok, 1 refused (bad package, unknown model, conflict), 2 configuration or database problem.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, TypeVar

import orjson
import typer
from rich.console import Console
from rich.table import Table

from medcloud.errors import MedcloudError

app = typer.Typer(name="ai", no_args_is_help=True, help="AI model registry: ONNX model packages.")
console = Console(stderr=True, soft_wrap=True)
out = Console(soft_wrap=True)

DataDir = Annotated[Path | None, typer.Option("--data-dir", help="Data directory (SQLite database, files).")]
DbUrl = Annotated[str | None, typer.Option("--db", help="Database URL, e.g. postgresql://user@host/db.")]
T = TypeVar("T")

if TYPE_CHECKING:  # the registry (SQLAlchemy, onnx) is imported when a command runs, not at start-up
    from medcloud.ai.registry import Registry


@contextmanager
def registry(data_dir: Path | None, db: str | None) -> Iterator[Registry]:
    """The registry of a store (migrated first); configuration and connection problems exit 2."""
    from medcloud.ai.registry import Registry
    from medcloud.store_cli import open_store

    with open_store(data_dir, db, console) as (_settings, database):
        yield Registry(database)


def _run(action: Callable[[], T]) -> T:
    try:
        return action()
    except MedcloudError as e:
        console.print(f"[red]error:[/red] {e.message}", highlight=False)
        raise typer.Exit(1) from e


@app.command("models")
def models(
    name: Annotated[str | None, typer.Argument(help="Only this model's versions.")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="JSON on standard output (with manifests).")] = False,
    data_dir: DataDir = None,
    db: DbUrl = None,
) -> None:
    """List registered model versions; the active one of each name is marked."""
    with registry(data_dir, db) as reg:
        versions = reg.list(name)
    if as_json:
        out.print_json(orjson.dumps([v.to_json() for v in versions]).decode())
        return
    table = Table(title=f"{len(versions)} model version(s)")
    for column in ("name", "version", "active", "task", "labels", "model sha256", "size", "registered"):
        table.add_column(column, overflow="fold")
    for v in versions:
        table.add_row(v.name, v.version, "[green]active[/green]" if v.active else "", v.task,
                      ", ".join(v.manifest.get("labels", [])), v.sha256[:16], f"{v.size:,}",
                      v.to_json()["registered"])
    Console(width=160).print(table)


@app.command("register")
def register(
    package: Annotated[Path, typer.Argument(help="Package directory, .zip or .tar.gz.")],
    activate: Annotated[bool, typer.Option("--activate", help="Make it the active version of its name.")] = False,
    sha256: Annotated[str | None, typer.Option("--sha256", help="Expected package digest (refused if "
                                                                 "different).")] = None,
    data_dir: DataDir = None,
    db: DbUrl = None,
) -> None:
    """Check a model package and register it as a new version."""
    from medcloud.ai import package as packages

    pkg = _run(lambda: packages.read(package, expected_sha256=sha256))
    with registry(data_dir, db) as reg:
        version = _run(lambda: reg.register(pkg, activate=activate, by="cli"))
    console.print(f"registered {version.name} {version.version}" + (" (active)" if version.active else "")
                  + f", package sha256 {version.package_sha256}", highlight=False)


@app.command("activate")
def activate(
    name: Annotated[str, typer.Argument(help="Model name.")],
    version: Annotated[str, typer.Argument(help="The version to serve from now on.")],
    data_dir: DataDir = None,
    db: DbUrl = None,
) -> None:
    """Make one version the active version of its name."""
    with registry(data_dir, db) as reg:
        _run(lambda: reg.activate(name, version))
    console.print(f"{name} {version} is active", highlight=False)


@app.command("remove")
def remove(
    name: Annotated[str, typer.Argument(help="Model name.")],
    version: Annotated[str, typer.Argument(help="The version to delete.")],
    force: Annotated[bool, typer.Option("--force", help="Remove even the active version.")] = False,
    data_dir: DataDir = None,
    db: DbUrl = None,
) -> None:
    """Delete one version and its package."""
    with registry(data_dir, db) as reg:
        _run(lambda: reg.remove(name, version, force=force))
    console.print(f"removed {name} {version}", highlight=False)


@app.command("predict")
def predict(
    files: Annotated[list[Path], typer.Argument(help="Images: DICOM, PNG, JPEG, TIFF.")],
    model: Annotated[str, typer.Option("--model", help="Registered model NAME or NAME@VERSION (default: the "
                                                      "active version), or a package file/folder.")],
    explain: Annotated[Path | None, typer.Option("--explain", help="Write a heatmap overlay PNG per image "
                                                                   "into this folder (occlusion sensitivity).")] = None,
    batch: Annotated[int, typer.Option("--batch", min=1, help="Images per inference batch.")] = 16,
    threads: Annotated[int, typer.Option("--threads", min=0, help="ONNX Runtime intra-op threads "
                                                                  "(0 = the ai_threads setting).")] = 0,
    data_dir: DataDir = None,
    db: DbUrl = None,
) -> None:
    """Classify images with a model; JSON per file on standard output, exit 1 if any file failed."""
    from medcloud.ai.runtime import Runtime, predict_files
    from medcloud.config import Settings

    try:
        configured = Settings().with_overrides(data_dir=data_dir, db=db).ai_threads
    except Exception as e:  # pydantic ValidationError: bad env/toml/flag values
        console.print(f"[red]invalid configuration:[/red] {e}")
        raise typer.Exit(2) from e
    path = Path(model)
    if path.exists():
        loaded = _run(lambda: Runtime(None, threads=threads or configured).package(path))
    else:
        name, _, version = model.partition("@")
        with registry(data_dir, db) as reg:
            loaded = _run(lambda: Runtime(reg, threads=threads or configured).model(name, version or None))
    results = _run(lambda: predict_files(loaded, files, batch=batch, explain_dir=explain))
    out.print_json(orjson.dumps({"model": loaded.name, "version": loaded.version, "results": results}).decode())
    failed = [r for r in results if "error" in r]
    for r in failed:
        console.print(f"[red]error:[/red] {r['file']}: {r['error']}", highlight=False)
    if failed:
        raise typer.Exit(1)


@app.command("jobs")
def jobs(
    status: Annotated[str | None, typer.Option("--status", help="Only jobs in this state: queued, running, "
                                                                "completed, failed, cancelled.")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="JSON on standard output.")] = False,
    data_dir: DataDir = None,
    db: DbUrl = None,
) -> None:
    """Automatic reads (the ai-read jobs), newest first."""
    from medcloud.ai.http import job_json
    from medcloud.ai.reads import KIND
    from medcloud.jobs import JobQueue

    with registry(data_dir, db) as reg:
        found = [job_json(j) for j in JobQueue(reg.db).recent([KIND], status=status)]
    if as_json:
        out.print_json(orjson.dumps(found).decode())
        return
    table = Table(title=f"{len(found)} AI job(s)")
    for column in ("id", "status", "model", "study", "images", "attempts", "updated", "label / error"):
        table.add_column(column, overflow="fold")
    for j in found:
        outcome = (j["result"] or {}).get("label") or j["error"] or ""
        table.add_row(j["id"], j["status"], f"{j['model']} {j['version']}", j["study"], str(j["images"]),
                      str(j["attempts"]), j["updated"], outcome)
    Console(width=200).print(table)


@app.command("read")
def read(
    study: Annotated[str, typer.Argument(help="StudyInstanceUID of a stored study.")],
    model: Annotated[str | None, typer.Option("--model", help="Only this model (default: every active "
                                                              "image model that applies).")] = None,
    data_dir: DataDir = None,
    db: DbUrl = None,
) -> None:
    """Ask for a read of one study now, without waiting for it to become stable. The job runs in the
    server's workers (or `medcloud worker`); `medcloud ai jobs` shows it. Asking again for the same
    images and model version is the same job."""
    from medcloud.app import build_services
    from medcloud.config import Settings
    from medcloud.errors import MedcloudError

    try:
        settings = Settings().with_overrides(data_dir=data_dir, db=db)
    except Exception as e:  # pydantic ValidationError: bad env/toml/flag values
        out.print(f"[red]invalid configuration:[/red] {e}")
        raise typer.Exit(2) from e
    svc = build_services(settings)
    try:
        if svc.ai_reads is None:
            out.print("[red]AI reads need the imaging archive, which is off in this configuration[/red]")
            raise typer.Exit(2)
        try:
            requested = svc.ai_reads.request(study, model)
        except MedcloudError as e:
            out.print(f"[red]{e.message}[/red]")
            raise typer.Exit(1) from e
    finally:
        svc.close()
    if not requested:
        out.print(f"[red]no active image model applies to study {study}[/red]" if model is None else
                  f"[red]model {model!r} is not active or does not apply to study {study}[/red]")
        raise typer.Exit(1)
    for jid, created in requested:
        out.print(f"{jid} {'queued' if created else 'already requested'}")


@app.command("train")
def train(
    recipe: Annotated[str, typer.Option("--recipe", help="brain-mri or pneumonia.")],
    data: Annotated[Path, typer.Option("--data", help="brain-mri: folder of class folders; pneumonia: the "
                                                      "PneumoniaMNIST .npz.")],
    out_dir: Annotated[Path, typer.Option("--out", help="Folder for the package (<name>-<version>.zip) and plots.")],
    seed: Annotated[int, typer.Option("--seed", help="Seed of every random choice.")] = 0,
    epochs: Annotated[int | None, typer.Option("--epochs", min=1, help="Override the recipe's epochs.")] = None,
    limit: Annotated[int | None, typer.Option("--limit", min=2, help="At most N images per class (smoke "
                                                                     "runs).")] = None,
    threads: Annotated[int, typer.Option("--threads", min=1, help="PyTorch threads.")] = 2,
    stop_after: Annotated[int | None, typer.Option("--stop-after", min=1, help="End each network after this "
                                                   "epoch (the schedule still spans --epochs).")] = None,
    max_minutes: Annotated[float | None, typer.Option("--max-minutes", min=0, help="Time budget per network: "
                                                      "end after the epoch that exceeds it.")] = None,
) -> None:
    """Train a default image model from its recipe (needs the [train] extra: PyTorch CPU)."""
    try:
        import torch  # noqa: F401
    except ImportError as e:
        console.print("[red]error:[/red] training needs PyTorch: pip install 'medcloud[train]' "
                      "(torch==2.13.0, CPU)", highlight=False)
        raise typer.Exit(2) from e
    from medcloud.ai.train import RECIPES, run

    if recipe not in RECIPES:
        console.print(f"[red]error:[/red] unknown recipe {recipe!r} (known: {', '.join(RECIPES)})", highlight=False)
        raise typer.Exit(1)
    target = _run(lambda: run(RECIPES[recipe], data, out_dir, seed=seed, epochs=epochs, limit=limit,
                              threads=threads, stop_after=stop_after, max_minutes=max_minutes,
                              log=lambda m: console.print(m, highlight=False)))
    out.print(str(target), highlight=False)


@app.command("evaluate")
def evaluate(
    model: Annotated[str, typer.Option("--model", help="Registered model NAME or NAME@VERSION (default: the "
                                                      "active version), or a package file/folder.")],
    data: Annotated[Path, typer.Option("--data", help="Labelled images: DIR/<label>/*.png|jpg|dcm.")],
    as_json: Annotated[bool, typer.Option("--json", help="One JSON object on standard output.")] = False,
    plots: Annotated[Path | None, typer.Option("--plots", help="Write roc.png, confusion.png and "
                                                               "calibration.png into this folder.")] = None,
    batch: Annotated[int, typer.Option("--batch", min=1, help="Images per inference batch.")] = 32,
    data_dir: DataDir = None,
    db: DbUrl = None,
) -> None:
    """Accuracy, macro AUC, per-class precision/recall/F1, confusion matrix and ECE on labelled images;
    exit 1 if a file could not be read."""
    from medcloud.ai.evaluate import evaluate as run_evaluation
    from medcloud.ai.runtime import Runtime

    path = Path(model)
    if path.exists():
        loaded = _run(lambda: Runtime(None).package(path))
    else:
        name, _, version = model.partition("@")
        with registry(data_dir, db) as reg:
            loaded = _run(lambda: Runtime(reg).model(name, version or None))
    report = _run(lambda: run_evaluation(loaded, data, batch=batch, plots=plots))
    if as_json:
        out.print_json(orjson.dumps(report).decode())
    else:
        auc = report["macro_auc"]
        console.print(f"{report['model']} {report['version']} on {report['n']} images: accuracy "
                      f"{report['accuracy']:.4f}, macro AUC {'n/a' if auc is None else f'{auc:.4f}'}, "
                      f"ECE {report['ece']:.4f}", highlight=False)
        table = Table(title="per class")
        for column in ("label", "precision", "recall", "F1", "support"):
            table.add_column(column)
        for label, v in report["per_class"].items():
            table.add_row(label, f"{v['precision']:.3f}", f"{v['recall']:.3f}", f"{v['f1']:.3f}", str(v["support"]))
        out.print(table)
    for e in report["errors"]:
        console.print(f"[red]error:[/red] {e['file']}: {e['error']}", highlight=False)
    if report["errors"]:
        raise typer.Exit(1)
