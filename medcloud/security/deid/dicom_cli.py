"""``medcloud dicom export --deid`` and ``medcloud dicom deid``: argument parsing and messages only.

Exit codes (as the other ``medcloud dicom`` commands): 0 every instance written; 1 some instance
failed (each is listed with its reason; the others are written); 2 bad usage, policy, key or
configuration.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, NoReturn

import typer
from rich.console import Console

if TYPE_CHECKING:
    from medcloud.security.deid.dicom_export import Outcome, Report
    from medcloud.security.deid.policy import DeidPolicy

console = Console(stderr=True)
out = Console()

PolicyOpt = Annotated[str | None, typer.Option(
    "--policy", help="Policy: safe-harbor (default), date-shift, a name under DATA_DIR/deid-policies, "
                     "or a TOML/JSON file (its [dicom] table sets the DICOM options).")]
KeyFile = Annotated[Path | None, typer.Option(
    "--key-file", help="Pseudonym key (>= 16 bytes, base64 or raw; default $MEDCLOUD_DEID_KEY). "
                       "The same key as the FHIR de-identification links the two.")]
OutDir = Annotated[Path, typer.Option("--out", help="Output folder: OUT/<study>/<series>/<instance>.dcm.")]


def register(app: typer.Typer) -> None:
    app.command("export")(export)
    app.command("deid")(deid)


def export(
    out_dir: OutDir,
    deid_: Annotated[bool, typer.Option("--deid", help="De-identify (PS3.15 Annex E); required.")] = False,
    policy: PolicyOpt = None,
    key_file: KeyFile = None,
    study: Annotated[list[str] | None, typer.Option("--study", help="StudyInstanceUID; repeatable.")] = None,
    patient: Annotated[str | None, typer.Option("--patient", help="Every study of this PatientID.")] = None,
    data_dir: Annotated[Path | None, typer.Option("--data-dir", help="Data directory (SQLite database, files).")] = None,
    db: Annotated[str | None, typer.Option("--db", help="Database URL, e.g. postgresql://user@host/db.")] = None,
) -> None:
    """Export studies from the archive, de-identified, into a folder (all studies if none is named).

    Without --key-file or $MEDCLOUD_DEID_KEY the server's own pseudonym key is used, the one
    ``$export?_deidentify=`` uses, so DICOM and FHIR exports of a patient link.
    """
    from medcloud.app import build_services
    from medcloud.imaging.dimse.cli import _settings
    from medcloud.security.deid.dicom_export import export_archive

    if not deid_:
        console.print("[red]error:[/red] only de-identified export is available: add --deid "
                      "(identified copies: WADO-RS or C-MOVE)", highlight=False)
        raise typer.Exit(2)
    settings = _settings(data_dir=data_dir, db=db)
    try:
        services = build_services(settings)
    except Exception as e:  # unreachable database, bad URL, failed migration, wrong master key
        console.print(f"[red]error:[/red] cannot open the archive: {e}", highlight=False)
        raise typer.Exit(2) from e
    if services.imaging is None:
        console.print("[red]error:[/red] this server has no imaging archive", highlight=False)
        raise typer.Exit(2)
    key = _key_or_server(key_file, services)
    chosen = _policy(policy, key, settings.data_dir)
    try:
        report = export_archive(services.imaging, out_dir, chosen, studies=study or [], patient=patient,
                                on_item=_print_item)
    except Exception as e:
        _fail(e)
    _summary(report, out_dir, chosen)


def deid(
    inputs: Annotated[list[Path], typer.Argument(help="Part-10 files or folders (walked recursively).")],
    out_dir: OutDir,
    policy: PolicyOpt = None,
    key_file: KeyFile = None,
    patient_map: Annotated[Path | None, typer.Option(
        "--patient-map", help="CSV of PatientID,FHIR Patient id: date shifts then equal the FHIR export's "
                              "(default: the PatientID is the key).")] = None,
    data_dir: Annotated[Path | None, typer.Option("--data-dir", help="Where named policies live.")] = None,
) -> None:
    """De-identify a folder of DICOM Part-10 files (PS3.15 Annex E) into another folder."""
    from medcloud.imaging.dimse.cli import _settings
    from medcloud.security.deid.cli import _key
    from medcloud.security.deid.dicom_export import deidentify_paths, read_patient_map

    settings = _settings(data_dir=data_dir)
    try:
        key = _key(key_file)
        chosen = _policy(policy, key, settings.data_dir)
        mapping = read_patient_map(patient_map) if patient_map else None
        report = deidentify_paths(inputs, out_dir, chosen, patient_map=mapping, on_item=_print_item)
    except typer.Exit:
        raise
    except Exception as e:
        _fail(e)
    _summary(report, out_dir, chosen)


def _key_or_server(key_file: Path | None, services: Any) -> bytes:
    import os

    from medcloud.security.deid.cli import KEY_ENV, _key

    if key_file is None and not os.environ.get(KEY_ENV) and services.ctx.at_rest is not None:
        from medcloud.fhir.operations.export import DEID_KEY

        return bytes(services.ctx.at_rest.keys.secret(DEID_KEY))
    try:
        return _key(key_file)
    except Exception as e:
        _fail(e)


def _policy(policy: str | None, key: bytes, data_dir: Path) -> DeidPolicy:
    from medcloud.security.deid.files import named_policy
    from medcloud.security.deid.policy import DeidPolicy

    try:
        if policy is None:
            return DeidPolicy.safe_harbor(key)
        path = Path(policy)
        if path.suffix in (".toml", ".json") or path.exists():
            if not path.is_file():
                raise FileNotFoundError(f"no policy file {policy}")
            return DeidPolicy.load(path, key=key)
        return named_policy(policy, key, data_dir / "deid-policies")
    except Exception as e:
        _fail(e)


def _fail(e: Exception) -> NoReturn:
    from medcloud.errors import Invalid

    if isinstance(e, Invalid):
        console.print(f"[red]error:[/red] {e.message}", highlight=False, soft_wrap=True)
        raise typer.Exit(2) from e
    if isinstance(e, OSError):
        console.print(f"[red]error:[/red] {e}", highlight=False, soft_wrap=True)
        raise typer.Exit(2) from e
    raise e


def _print_item(o: Outcome) -> None:
    if o.error is not None:
        console.print(f"  [red]FAILED[/red] {o.source}: {o.error}", highlight=False, soft_wrap=True)


def _summary(report: Report, out_dir: Path, policy: DeidPolicy) -> None:
    from medcloud.security.deid.dicom import options_applied

    written, failed = report.written, report.failed
    masked = sum(o.masked for o in written)
    unlinked = sum(not o.linked for o in written)
    opts = ", ".join(options_applied(policy)) or "none"
    out.print(f"de-identified {len(written)} instance(s) into {out_dir} (Basic Profile; options: {opts}); "
              f"{masked} masked, {len(failed)} failed", highlight=False, soft_wrap=True)
    if policy.dates.value == "shift" and unlinked:
        console.print(f"note: {unlinked} instance(s) had no linked FHIR Patient: their date shift is keyed "
                      "by PatientID and may differ from a FHIR export's", highlight=False, soft_wrap=True)
    if failed:
        raise typer.Exit(1)
