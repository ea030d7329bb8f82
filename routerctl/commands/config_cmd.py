"""`routerctl config validate / show`."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from appliance.settings import to_builtins
from appliance.settings_loader import ConfigError, load_file, parse_settings
from routerctl.commands.output import fail, fail_lines, print_json

app = typer.Typer(help="Validate and inspect configuration files.", no_args_is_help=True)

FileArg = Annotated[Path, typer.Argument(help="The TOML config file.")]


@app.command("validate")
def validate(
    file: FileArg,
    skip_env: Annotated[
        bool,
        typer.Option("--skip-env", help="Do not require the backends' env variables to be set."),
    ] = False,
) -> None:
    """Check a config file; print one line per problem (file:line: key: reason)."""
    try:
        if skip_env:
            try:
                text = file.read_text(encoding="utf-8")
            except OSError as exc:
                fail(f"{file}: cannot read: {exc.strerror}")
            parse_settings(text, str(file))
        else:
            load_file(file)
    except ConfigError as exc:
        fail_lines(exc.problems)
    typer.echo(f"{file}: ok")


@app.command("show")
def show(file: FileArg) -> None:
    """Print the effective configuration (defaults filled in) as JSON; no secret is in it."""
    try:
        text = file.read_text(encoding="utf-8")
    except OSError as exc:
        fail(f"{file}: cannot read: {exc.strerror}")
    try:
        settings = parse_settings(text, str(file))
    except ConfigError as exc:
        fail_lines(exc.problems)
    print_json(to_builtins(settings))
