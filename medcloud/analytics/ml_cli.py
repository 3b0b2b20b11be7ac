"""``medcloud ml train``: a CSV or a ViewDefinition's rows in, a model package (and a registry entry) out.

Mounted by medcloud/cli.py as ``medcloud ml``. Exit codes, as ``medcloud sof``: 0 ok, 3 invalid
input (no such column, one class only, unreadable table, output folder taken), 4 the model could
not be exported faithfully (ONNX parity), 1 registration refused. Nothing is left at ``--out``
unless the whole run succeeded (and was registered, with ``--register``): the package is written
to a temporary folder beside it and renamed into place last.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
import uuid
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, NoReturn

import typer

from medcloud.errors import Invalid, MedcloudError, Unprocessable

if TYPE_CHECKING:
    import pandas as pd

    from medcloud.ai.package import ModelPackage

app = typer.Typer(name="ml", help="Machine learning on tabular data: train, export to ONNX, register.",
                  no_args_is_help=True)


class Model(StrEnum):
    logreg = "logreg"
    rf = "rf"
    gbm = "gbm"


class Calibrate(StrEnum):
    none = "none"
    sigmoid = "sigmoid"  # isotonic: skl2onnx's export missed scikit-learn's probabilities by 0.15 (docs)


@app.callback()
def _group() -> None:
    """Machine learning on tabular data: train, export to ONNX, register."""


@app.command("train")
def train(
    target: Annotated[str, typer.Option("--target", help="The column to predict (two classes).")],
    out: Annotated[Path, typer.Option("--out", help="Folder to write the model package to (must not exist).")],
    csv: Annotated[Path | None, typer.Option("--csv", help="A CSV table with a header line.")] = None,
    view: Annotated[Path | None, typer.Option("--view", help="A ViewDefinition JSON (needs --source).")] = None,
    source: Annotated[str | None, typer.Option("--source", help="Data for --view: a medcloud data dir, a "
                                               "FHIR server URL, a sync folder, NDJSON/Parquet.")] = None,
    model: Annotated[Model, typer.Option("--model", help="logreg, rf (random forest) or gbm "
                                         "(histogram gradient boosting).")] = Model.logreg,
    seed: Annotated[int, typer.Option("--seed", help="Seed of every random choice.")] = 0,
    folds: Annotated[int, typer.Option("--folds", min=2, max=20, help="Cross-validation folds.")] = 5,
    test_size: Annotated[float, typer.Option("--test-size", min=0.05, max=0.5,
                                             help="Held-out test fraction.")] = 0.2,
    calibrate: Annotated[Calibrate, typer.Option("--calibrate", help="Calibrate probabilities (Platt scaling, 3-fold).")] = Calibrate.none,
    positive: Annotated[str | None, typer.Option("--positive", help="The positive class value.")] = None,
    exclude: Annotated[list[str] | None, typer.Option("--exclude", help="A column not to use; repeatable.")]
        = None,
    name: Annotated[str | None, typer.Option("--name", help="Model name (default: from the input).")] = None,
    version: Annotated[str | None, typer.Option("--version", help="Model version (default: 1, or the next "
                                                "free number with --register).")] = None,
    licence: Annotated[str, typer.Option("--licence", help="Licence of the model (SPDX id).")]
        = "LicenseRef-not-specified",
    intended_use: Annotated[str, typer.Option("--intended-use", help="For the model card.")]
        = "Research and decision support evaluation only; not validated for clinical decisions.",
    register: Annotated[bool, typer.Option("--register", help="Register the package in the store's registry.")]
        = False,
    activate: Annotated[bool, typer.Option("--activate", help="With --register: make it the active version.")]
        = False,
    data_dir: Annotated[Path | None, typer.Option("--data-dir", help="Store for --register (and a --view "
                                                  "store source).")] = None,
    db: Annotated[str | None, typer.Option("--db", help="Database URL of the store, e.g. PostgreSQL.")] = None,
) -> None:
    """Train a binary classifier with cross-validation and a test split; write an ONNX model package."""
    from medcloud.analytics import ml

    if (csv is None) == (view is None):
        _fail("give exactly one of --csv FILE or --view VIEW.json", 3)
    if view is not None and source is None:
        _fail("--view needs --source (a data dir, server URL, sync folder or NDJSON/Parquet)", 3)
    if out.exists():
        _fail(f"{out} exists: give a new folder for the model package", 3)
    options = ml.TrainOptions(target=target, model=model.value, seed=seed, folds=folds, test_size=test_size,
                              calibration=calibrate.value, positive=positive, exclude=tuple(exclude or ()))
    try:
        if csv is not None:
            frame, described = ml.read_csv(csv), f"CSV file {csv.name}"
            default_name = csv.stem
        else:
            assert view is not None and source is not None
            frame, described, default_name = _view_frame(view, source, db)
        name = name or _slug(f"{default_name}-{model.value}")
        data = ml.prepare(frame, options)
        result = ml.train(data, options)
    except Unprocessable as e:
        _fail(str(e), 4)
    except Invalid as e:
        _fail(str(e), 3)
    if register and version is None:
        from medcloud.ai.cli import registry

        with registry(data_dir, db) as reg:
            version = reg.next_version(name)
    try:
        pkg = ml.package(result, name=name, version=version or "1", licence=licence, source=described,
                         intended_use=intended_use)
    except Invalid as e:
        _fail(str(e), 3)
    _write(pkg, out, register, activate, data_dir, db)
    m = result.metrics()
    typer.echo(f"{name} {pkg.manifest.version}: CV AUC {m['cv_roc_auc_mean']:.4f} ± {m['cv_roc_auc_std']:.4f}, "
               f"test AUC {m['test_roc_auc']:.4f}, accuracy {m['test_accuracy']:.4f}, F1 {m['test_f1']:.4f}, "
               f"Brier {m['test_brier']:.4f}; ONNX parity {result.parity:.1e} -> {out}")


def _write(pkg: ModelPackage, out: Path, register: bool, activate: bool, data_dir: Path | None,
           db: str | None) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.parent / f".{out.name}.{uuid.uuid4().hex[:8]}.partial"  # mkdir honours the umask, mkdtemp not
    tmp.mkdir()
    try:
        pkg.write_dir(tmp)
        if register:
            from medcloud.ai.cli import registry

            with registry(data_dir, db) as reg:
                try:
                    done = reg.register(pkg, activate=activate, by="medcloud ml train")
                except MedcloudError as e:
                    _fail(f"not registered: {e}", 1)
            typer.echo(f"registered {done.name} {done.version}" + (" (active)" if done.active else ""), err=True)
        os.rename(tmp, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _view_frame(view_file: Path, source: str, db: str | None) -> tuple[pd.DataFrame, str, str]:
    """Run the view with the DuckDB engine (``medcloud sof run``'s sources) into a table."""
    from medcloud.analytics import ml
    from medcloud.analytics.cli import OnError, _source
    from medcloud.analytics.engines.duckdb import DuckDBEngine
    from medcloud.analytics.remote import Credentials

    try:
        doc = json.loads(view_file.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise Invalid(f"{view_file}: not a ViewDefinition JSON file: {e}") from e
    creds = Credentials(os.environ.get("MEDCLOUD_TOKEN"), None, None, None, "system/*.rs")
    with tempfile.TemporaryDirectory(prefix="medcloud-ml-") as tmp:
        rows = Path(tmp) / "view.csv"
        with _source(source, doc, OnError.fail, db, creds) as src, DuckDBEngine() as engine:
            engine.write(doc, src, rows, "csv")
        frame = ml.read_csv(rows)
    label = doc.get("name") or view_file.stem if isinstance(doc, dict) else view_file.stem
    return frame, f"ViewDefinition {label} over {source}", str(label)


def _slug(text: str) -> str:
    slug = re.sub(r"[^a-z0-9._-]+", "-", text.lower()).strip("-._")
    return (slug or "model")[:128]


def _fail(message: str, code: int) -> NoReturn:
    typer.echo(f"error: {message}", err=True)
    raise typer.Exit(code)
