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
    info = {"version": BUILD.version, "commit": BUILD.commit, "build_time": BUILD.build_time}
    if as_json:
        print_json(info)
    else:
        typer.echo(
            f"routerctl {BUILD.version} (commit {BUILD.commit}, built {BUILD.build_time or '-'})"
        )
