"""`routerctl version`."""

from __future__ import annotations

from typing import Annotated

import typer

from appliance import BUILD
from routerctl.commands.output import print_json


def version(
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """Print version, commit and build time."""
    if as_json:
        print_json(BUILD.as_dict())
    else:
        typer.echo(BUILD.describe())
