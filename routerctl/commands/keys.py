"""`routerctl keys create / create-admin`: mint keys and admin tokens; only hashes go in config."""

from __future__ import annotations

import secrets
from typing import Annotated

import msgspec
import typer

from appliance.auth.admin import generate_admin_token
from appliance.auth.keyring import generate_key, hash_key
from appliance.settings import AdminToken
from routerctl.commands.output import fail, print_json

app = typer.Typer(
    rich_markup_mode=None, help="Mint API keys and admin tokens.", no_args_is_help=True
)


@app.command("create")
def create(
    org: Annotated[str, typer.Option("--org", help="Organization the key belongs to.")],
    key_id: Annotated[
        str | None, typer.Option("--id", help="Key id in the config (default: random).")
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """Print a new random key once, and the [[keys]] lines to paste into the config."""
    key = generate_key()
    kid = key_id or f"key-{secrets.token_hex(4)}"
    digest = hash_key(key)
    if as_json:
        print_json({"key": key, "id": kid, "org": org, "sha256": digest})
        return
    typer.echo(f"API key (shown once, store it now): {key}", err=True)
    typer.echo(f'\n[[keys]]\nid = "{kid}"\norg = "{org}"\nsha256 = "{digest}"')


@app.command("create-admin")
def create_admin(
    token_id: Annotated[str, typer.Option("--id", help="Token id in the config (the actor).")],
    role: Annotated[str, typer.Option("--role", help="viewer (read) or operator (change).")],
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """Print a new admin token once, and the [[admin.tokens]] lines to paste into the config."""
    if role not in ("viewer", "operator"):
        fail(f"--role: must be viewer or operator, not {role!r}", code=2)
    token = generate_admin_token()
    try:
        # The config schema checks the id, so what we print is what the router accepts.
        entry = msgspec.convert(
            {"id": token_id, "sha256": hash_key(token), "role": role}, AdminToken
        )
    except msgspec.ValidationError:
        fail(f"--id: {token_id!r} is not a valid id (1-128 of A-Z a-z 0-9 _ . : -)", code=2)
    if as_json:
        print_json({"token": token, "id": entry.id, "role": entry.role, "sha256": entry.sha256})
        return
    typer.echo(f"Admin token (shown once, store it now): {token}", err=True)
    typer.echo(
        f'\n[[admin.tokens]]\nid = "{entry.id}"\nsha256 = "{entry.sha256}"\nrole = "{entry.role}"'
    )
