"""`routerctl override list / pin / clear`: routing overrides on a running router."""

from __future__ import annotations

import time
from typing import Annotated

import typer

from routerctl.admin_client import AdminClient
from routerctl.commands.admin_view import (
    JsonOption,
    ReasonOption,
    TtlOption,
    UrlOption,
    admin_errors,
    overrides_table,
    print_table,
    print_value,
    report_override,
    ttl_or_fail,
)

app = typer.Typer(
    rich_markup_mode=None,
    help="List, pin and clear routing overrides (admin API, $ROUTERCTL_TOKEN).",
    no_args_is_help=True,
)


@app.command("list")
def list_overrides(url: UrlOption = None, as_json: JsonOption = False) -> None:
    """Show the overrides in force: degrades, drains and pins, with who set them and why."""
    with admin_errors():
        overrides = AdminClient.from_env(url).overrides()
    if as_json:
        print_value({"data": overrides})
    elif not overrides:
        typer.echo("no overrides in force")
    else:
        print_table(overrides_table(overrides, time.time()))


@app.command("pin")
def pin(
    model: Annotated[str, typer.Argument(metavar="MODEL", help="Model name clients send.")],
    backend_id: Annotated[str, typer.Argument(metavar="BACKEND", help="Backend id to use.")],
    *,  # options by name only; typer passes them so
    reason: ReasonOption,
    ttl: TtlOption = None,
    url: UrlOption = None,
    as_json: JsonOption = False,
) -> None:
    """Send every request for MODEL to BACKEND only."""
    ttl_s = ttl_or_fail(ttl)
    with admin_errors():
        made = AdminClient.from_env(url).pin(model, backend_id, reason, ttl_s)
    report_override(made, as_json, f"model {made.model} pinned to backend {made.backend}")


@app.command("clear")
def clear(
    override_id: Annotated[str, typer.Argument(metavar="ID", help="Override id (see list).")],
    reason: ReasonOption,
    url: UrlOption = None,
    as_json: JsonOption = False,
) -> None:
    """Remove one override now."""
    with admin_errors():
        removed = AdminClient.from_env(url).clear(override_id, reason)
    if as_json:
        print_value(removed)
    else:
        target = removed.model if removed.model else removed.backend
        typer.echo(f"override {removed.id} cleared ({removed.kind} {target})")


if __name__ == "__main__":  # `python -m routerctl.commands.override`, before main.py registers it
    app()
