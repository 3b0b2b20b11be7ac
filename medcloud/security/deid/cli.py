"""``medcloud deid IN... OUT``: de-identify NDJSON and Bundle files (argument parsing and messages only)."""

from __future__ import annotations

import datetime as dt
import os
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

console = Console(stderr=True)
KEY_ENV = "MEDCLOUD_DEID_KEY"


def register(app: typer.Typer) -> None:
    app.command("deid")(deid)


def deid(
    paths: Annotated[list[Path], typer.Argument(help="Input NDJSON/Bundle files or folders, then the output folder.")],
    policy: Annotated[Path | None, typer.Option("--policy", help="Policy file (TOML or JSON); default Safe Harbor.")] = None,
    key_file: Annotated[Path | None, typer.Option("--key-file", help=f"Pseudonym key (>= 16 bytes; default ${KEY_ENV}, "
                                                                     "base64 or raw). Same key, same pseudonyms.")] = None,
    date_shift: Annotated[bool, typer.Option("--date-shift", help="Shift dates by one offset per patient instead of "
                                                                  "keeping only the year (not Safe Harbor).")] = False,
    reference_year: Annotated[int | None, typer.Option(help="Year ages are computed at (default: this year).")] = None,
) -> None:
    """De-identify FHIR NDJSON files and Bundles (HIPAA Safe Harbor by default) into a folder.

    Pseudonyms are an HMAC under the key, so runs with the same key link the same patients.
    """
    from medcloud.errors import Invalid
    from medcloud.security.deid.fhir import DeidContext
    from medcloud.security.deid.files import deidentify_files
    from medcloud.security.deid.policy import DeidPolicy

    if len(paths) < 2:
        console.print("[red]give at least one input and the output folder[/red]")
        raise typer.Exit(2)
    *inputs, out = paths
    try:
        key = _key(key_file)
        chosen = DeidPolicy.load(policy, key=key) if policy else DeidPolicy.safe_harbor(key)
        if date_shift:
            chosen = chosen.with_actions(dates="shift")
        context = DeidContext(reference_year=reference_year or dt.datetime.now(dt.UTC).year)
        results = deidentify_files(inputs, out, chosen, context)
    except Invalid as e:
        console.print(f"[red]deid failed:[/red] {e.message}", highlight=False, soft_wrap=True)
        raise typer.Exit(1) from e
    except OSError as e:
        console.print(f"[red]deid failed:[/red] {e}", highlight=False, soft_wrap=True)
        raise typer.Exit(1) from e
    for r in results:
        console.print(f"  {r.source} -> {r.target}  {r.resources:,} resources", highlight=False)
    total = sum(r.resources for r in results)
    note = "" if chosen.is_safe_harbor else " (policy is NOT Safe Harbor)"
    console.print(f"de-identified {total:,} resources in {len(results)} file(s) into {out}{note}", highlight=False)


def _key(key_file: Path | None) -> bytes:
    from medcloud.errors import Invalid

    if key_file is not None:
        try:
            raw = key_file.read_bytes()
        except OSError as e:
            raise Invalid(f"cannot read the key file {key_file}: {e.strerror}") from None
    elif os.environ.get(KEY_ENV):
        raw = os.environ[KEY_ENV].encode()
    else:
        raise Invalid(f"no pseudonym key: give --key-file or set {KEY_ENV} (keep it secret: it links the pseudonyms)")
    text = raw.strip()
    try:
        import base64
        import binascii

        decoded = base64.b64decode(text, validate=True)
        key = decoded if len(decoded) >= 16 else text
    except (binascii.Error, ValueError):
        key = text
    if len(key) < 16:
        raise Invalid("the pseudonym key must be at least 16 bytes")
    return key
