"""The `routerctl` command: one typer app joining one module per command group."""

from __future__ import annotations

import typer

from routerctl.commands import (
    audit,
    backend,
    buffer,
    config_cmd,
    keys,
    mock_backend,
    override,
    serve,
    version,
)

app = typer.Typer(
    name="routerctl",
    help="Inference API router appliance: serve, steer and inspect it.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
app.command("serve")(serve.serve)
app.command("mock-backend")(mock_backend.mock_backend)
app.command("version")(version.version)
app.add_typer(config_cmd.app, name="config")
app.add_typer(keys.app, name="keys")
app.add_typer(backend.app, name="backend")
app.add_typer(override.app, name="override")
app.add_typer(audit.app, name="audit")
app.add_typer(buffer.app, name="buffer")


def run() -> None:
    """Console-script entry point."""
    app()
