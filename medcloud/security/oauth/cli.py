"""``medcloud admin``: clients, users and signing keys of the built-in authorization server.

Secrets are printed once, as JSON on standard output (so a script can capture them), and never
stored in clear or logged. Errors are one message on standard error and exit code 1 (2 for a
bad configuration or an unreadable database).
"""

from __future__ import annotations

import datetime as dt
import shutil
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Any, TypeVar

import orjson
import typer
from rich.console import Console
from rich.table import Table

from medcloud.errors import MedcloudError

app = typer.Typer(name="admin", no_args_is_help=True,
                  help="Authorization server administration: clients, users, signing keys.")
console = Console(stderr=True, soft_wrap=True)
out = Console(soft_wrap=True)

DataDir = Annotated[Path | None, typer.Option("--data-dir", help="Data directory (SQLite database, files).")]
DbUrl = Annotated[str | None, typer.Option("--db", help="Database URL, e.g. postgresql://user@host/db.")]
T = TypeVar("T")


@contextmanager
def _session(data_dir: Path | None, db: str | None) -> Iterator[tuple[Any, Any]]:
    """Settings and a migrated database; configuration and connection problems exit 2."""
    from medcloud.store_cli import open_store

    with open_store(data_dir, db, console) as opened:
        yield opened


def _run(action: Callable[[], T]) -> T:
    try:
        return action()
    except MedcloudError as e:
        console.print(f"[red]error:[/red] {e.message}", highlight=False)
        raise typer.Exit(1) from e


def _print_json(doc: dict[str, Any]) -> None:
    out.print_json(orjson.dumps(doc).decode())


@app.command("create-client")
def create_client(
    name: Annotated[str, typer.Option("--name", help="Shown on the consent page and in list-clients.")],
    scope: Annotated[str, typer.Option("--scope", help="Allowed scopes, space separated, e.g. 'system/*.rs'.")],
    grant_type: Annotated[list[str] | None, typer.Option(
        "--grant-type", help="client_credentials (default), authorization_code, refresh_token; repeatable.")] = None,
    auth_method: Annotated[str, typer.Option(
        "--auth-method", help="client_secret_basic, client_secret_post, private_key_jwt or none (public app).")]
        = "client_secret_basic",
    redirect_uri: Annotated[list[str] | None, typer.Option("--redirect-uri", help="Exact redirect URI; repeatable.")]
        = None,
    jwks_file: Annotated[Path | None, typer.Option("--jwks-file", help="JWK Set (JSON) for private_key_jwt.")] = None,
    jwks_uri: Annotated[str | None, typer.Option("--jwks-uri", help="JWK Set URL for private_key_jwt.")] = None,
    client_id: Annotated[str | None, typer.Option("--client-id", help="Default: a random id.")] = None,
    data_dir: DataDir = None,
    db: DbUrl = None,
) -> None:
    """Register a client; its secret (if any) is printed once."""
    from medcloud.security.oauth import store

    jwks = None
    if jwks_file is not None:
        try:
            jwks = orjson.loads(jwks_file.read_bytes())
        except (OSError, orjson.JSONDecodeError) as e:
            console.print(f"[red]error:[/red] cannot read the JWK Set {jwks_file}: {e}", highlight=False)
            raise typer.Exit(1) from e
        if not isinstance(jwks, dict):
            console.print("[red]error:[/red] the JWK Set must be a JSON object with a 'keys' array")
            raise typer.Exit(1)
    with _session(data_dir, db) as (settings, database):
        client, secret = _run(lambda: store.create_client(
            database, name=name, auth_method=auth_method, scopes=scope,
            grant_types=grant_type or ["client_credentials"], redirect_uris=redirect_uri or [], jwks=jwks,
            jwks_uri=jwks_uri, client_id=client_id))
        doc: dict[str, Any] = {"client_id": client.client_id, "token_endpoint": settings.auth_issuer + "/token"}
        if secret is not None:
            doc["client_secret"] = secret
            console.print("keep the client secret now: it is not stored and cannot be shown again")
        _print_json(doc)


@app.command("list-clients")
def list_clients(data_dir: DataDir = None, db: DbUrl = None) -> None:
    """All registered clients (secrets are never shown)."""
    from medcloud.security.oauth import store

    with _session(data_dir, db) as (_settings, database):
        clients = store.list_clients(database)
    table = Table(title=f"{len(clients)} client(s)")
    for column in ("client id", "name", "auth method", "grant types", "scopes", "status", "created", "secret rotated"):
        table.add_column(column, overflow="fold")
    for c in clients:
        table.add_row(c.client_id, c.name, c.auth_method, " ".join(c.grant_types), " ".join(c.scopes),
                      "[red]revoked[/red]" if c.revoked else "active", _when(c.created), _when(c.rotated))
    # Wide enough that ids and scopes stay on one line (readable, and greppable when piped).
    Console(width=max(shutil.get_terminal_size().columns, 160)).print(table)


@app.command("revoke-client")
def revoke_client(client_id: Annotated[str, typer.Argument(help="The client to refuse from now on.")],
                  data_dir: DataDir = None, db: DbUrl = None) -> None:
    """Refuse a client: token requests at once, its refresh tokens at once, its access tokens within 30 s."""
    from medcloud.security.oauth import store

    with _session(data_dir, db) as (_settings, database):
        _run(lambda: store.revoke_client(database, client_id))
    console.print(f"client {client_id} revoked", highlight=False)


@app.command("rotate-secret")
def rotate_secret(client_id: Annotated[str, typer.Argument(help="A client_secret_basic/post client.")],
                  data_dir: DataDir = None, db: DbUrl = None) -> None:
    """Give a client a new secret (printed once); the old one stops working at once."""
    from medcloud.security.oauth import store

    with _session(data_dir, db) as (settings, database):
        secret = _run(lambda: store.rotate_secret(database, client_id))
    console.print("keep the client secret now: it is not stored and cannot be shown again")
    _print_json({"client_id": client_id, "client_secret": secret, "token_endpoint": settings.auth_issuer + "/token"})


@app.command("create-user")
def create_user(
    username: Annotated[str, typer.Argument(help="The login name on the authorization page.")],
    password: Annotated[str, typer.Option("--password", prompt=True, hide_input=True, confirmation_prompt=True,
                                          envvar="MEDCLOUD_USER_PASSWORD",
                                          help="Prompted for when not given (or MEDCLOUD_USER_PASSWORD).")],
    fhir_user: Annotated[str | None, typer.Option("--fhir-user", help="e.g. Practitioner/123 (fhirUser).")] = None,
    patient: Annotated[str | None, typer.Option("--patient", help="Linked Patient id: a patient's own account.")]
        = None,
    data_dir: DataDir = None,
    db: DbUrl = None,
) -> None:
    """Add a user who can sign in on the authorization page (code flow)."""
    from medcloud.security.oauth import store

    with _session(data_dir, db) as (_settings, database):
        _run(lambda: store.create_user(database, username, password, fhir_user=fhir_user, patient=patient))
    console.print(f"user {username} created", highlight=False)


@app.command("rotate-signing-key")
def rotate_signing_key(data_dir: DataDir = None, db: DbUrl = None) -> None:
    """Sign new access tokens with a new key; the old key verifies until its tokens have expired."""
    from medcloud.security.oauth import signing

    with _session(data_dir, db) as (settings, database):
        key = _run(lambda: signing.rotate(database, access_token_ttl=settings.access_token_ttl))
    _print_json({"kid": key.kid, "generation": key.generation})


def _when(seconds: int | None) -> str:
    if seconds is None:
        return "-"
    return dt.datetime.fromtimestamp(seconds, dt.UTC).strftime("%Y-%m-%d %H:%M:%SZ")
