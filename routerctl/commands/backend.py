"""`routerctl backend list / degrade / drain / restore`: steer backends of a running router."""

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
    backends_table,
    print_table,
    print_value,
    report_override,
    ttl_or_fail,
)

app = typer.Typer(
    rich_markup_mode=None,
    help="See and steer the backends of a running router (admin API, $ROUTERCTL_TOKEN).",
    no_args_is_help=True,
)

BackendArg = Annotated[str, typer.Argument(metavar="ID", help="Backend id, as in the config.")]


@app.command("list")
def list_backends(url: UrlOption = None, as_json: JsonOption = False) -> None:
    """Show every backend: health, weights, load, latency and the override in force."""
    with admin_errors():
        backends = AdminClient.from_env(url).backends()
    if as_json:
        print_value({"data": backends})
    else:
        print_table(backends_table(backends, time.time()))


@app.command("degrade")
def degrade(
    backend_id: BackendArg,
    *,  # options by name only; typer passes them so
    factor: Annotated[
        float,
        typer.Option(
            "--factor",
            "--weight",
            help="Multiply its weight by F, 0 < F < 1 (0.25 = a quarter); --weight is an alias.",
        ),
    ],
    reason: ReasonOption,
    ttl: TtlOption = None,
    url: UrlOption = None,
    as_json: JsonOption = False,
) -> None:
    """Send a backend a fraction of its usual share of traffic."""
    ttl_s = ttl_or_fail(ttl)
    with admin_errors():
        made = AdminClient.from_env(url).degrade(backend_id, factor, reason, ttl_s)
    report_override(made, as_json, f"backend {made.backend} degraded to x{made.factor:g}")


@app.command("drain")
def drain(
    backend_id: BackendArg,
    reason: ReasonOption,
    ttl: TtlOption = None,
    url: UrlOption = None,
    as_json: JsonOption = False,
) -> None:
    """Send a backend no new requests; requests in flight finish."""
    ttl_s = ttl_or_fail(ttl)
    with admin_errors():
        made = AdminClient.from_env(url).drain(backend_id, reason, ttl_s)
    report_override(made, as_json, f"backend {made.backend} drained")


@app.command("restore")
def restore(
    backend_id: BackendArg,
    reason: ReasonOption,
    url: UrlOption = None,
    as_json: JsonOption = False,
) -> None:
    """Remove a backend's degrade and drain overrides: back to its configured weight."""
    with admin_errors():
        removed = AdminClient.from_env(url).restore(backend_id, reason)
    if as_json:
        print_value({"removed": removed})
    elif removed:
        ids = ", ".join(o.id for o in removed)
        typer.echo(f"backend {backend_id} restored (removed {ids})")
    else:
        typer.echo(f"backend {backend_id} had no degrade or drain override; nothing to remove")


if __name__ == "__main__":  # `python -m routerctl.commands.backend`, before main.py registers it
    app()
