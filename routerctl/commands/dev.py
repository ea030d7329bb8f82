"""`routerctl dev up|down|status`: the services of a scaled-out router, locally, for development."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from routerctl.commands.admin_view import print_table
from routerctl.commands.output import fail
from routerctl.devstack import CONFIG_FILE, DevError, Stack, down, load, status, up

app = typer.Typer(
    rich_markup_mode=None,
    help="A local stack for development: valkey, a Kafka-protocol broker, etcd, two mock "
    "backends, and a router config using them.",
    no_args_is_help=True,
)

DirOption = Annotated[
    Path, typer.Option("--dir", help="Where the stack keeps its config, logs and state.")
]


@app.command("up")
def dev_up(directory: DirOption = Path("dev")) -> None:
    """Start valkey, Tansu, etcd and two mock backends on free loopback ports; write
    DIR/router.toml for them and print how to serve it."""
    try:
        stack = up(directory.resolve())
    except DevError as exc:
        fail(str(exc))
    for service in stack.services:
        typer.echo(f"  {service.name:<7} 127.0.0.1:{service.port}  (pid {service.pid})")
    typer.echo(_next_steps(stack, directory.resolve()))


@app.command("down")
def dev_down(directory: DirOption = Path("dev")) -> None:
    """Stop every process `dev up` started in DIR."""
    try:
        stopped = down(directory.resolve())
    except DevError as exc:
        fail(str(exc))
    typer.echo(f"stopped {', '.join(stopped)}")


@app.command("status")
def dev_status(directory: DirOption = Path("dev")) -> None:
    """Whether each service of the stack in DIR runs and answers; exit 1 if one does not."""
    try:
        found = status(directory.resolve())
        stack = load(directory.resolve())
    except DevError as exc:
        fail(str(exc))
    table = Table(box=None, header_style="bold", pad_edge=False)
    for column in ("SERVICE", "ADDRESS", "PID", "STATE"):
        table.add_column(column)
    for s, ok in found:
        table.add_row(s.name, f"127.0.0.1:{s.port}", str(s.pid), "up" if ok else "DOWN")
    print_table(table)
    typer.echo(_next_steps(stack, directory.resolve()))
    if not all(ok for _, ok in found):
        raise typer.Exit(1)


def _next_steps(stack: Stack, directory: Path) -> str:
    return (
        f"serve it:  routerctl serve --config {directory / CONFIG_FILE}\n"
        f"API key:   {stack.api_key}\n"
        f"operator:  export ROUTERCTL_URL=http://127.0.0.1:{stack.admin_port} "
        f"ROUTERCTL_TOKEN={stack.admin_token}"
    )
