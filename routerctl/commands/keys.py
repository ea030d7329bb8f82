"""`routerctl keys create`: mint an API key; only its hash goes into the config."""

from __future__ import annotations

import secrets
from typing import Annotated

import typer

from appliance.auth.keyring import generate_key, hash_key
from routerctl.commands.output import print_json

app = typer.Typer(help="Mint API keys.", no_args_is_help=True)


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
