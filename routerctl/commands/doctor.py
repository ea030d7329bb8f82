"""`routerctl doctor`: check a config against the services it names, or a running router
through its status and admin API (`--url`); a table or JSON."""

from __future__ import annotations

import asyncio
import logging
import os
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import msgspec
import typer
from rich.table import Table
from rich.text import Text

from appliance.settings.loader import ConfigError
from routerctl.commands.admin_view import JsonOption, print_table
from routerctl.commands.output import fail, fail_lines, print_json

if TYPE_CHECKING:
    from appliance.doctor import CheckResult

# appliance.doctor pulls in aiohttp, redis and aiokafka: imported when doctor runs, so other
# commands do not pay for it.

_STYLES = {"pass": "green", "warn": "yellow", "fail": "bold red", "skip": "dim"}


def doctor(
    config: Annotated[
        Path | None,
        typer.Option("--config", "-c", envvar="ROUTERCTL_CONFIG", help="The TOML config file."),
    ] = None,
    as_json: JsonOption = False,
    timeout: Annotated[
        float,
        typer.Option("--timeout", min=0.1, max=60.0, help="Seconds each check may wait."),
    ] = 3.0,
    url: Annotated[
        str | None,
        typer.Option(
            "--url",
            envvar="ROUTERCTL_URL",
            help="Check this running router (readiness, backends, outbox) instead of a config.",
        ),
    ] = None,
) -> None:
    """Check config, Redis, Kafka, etcd, backends, state dir, disk, outbox, clock and
    listeners: pass / warn / fail with the fix for each; exit 1 on any fail."""
    if config is None and url is not None:
        from routerctl.commands.doctor_live import check_running  # noqa: PLC0415

        _report(check_running(url, timeout), as_json)
        return
    if config is None:
        fail("pass --config FILE or --url URL (or set ROUTERCTL_CONFIG or ROUTERCTL_URL)", code=2)
    try:
        text = config.read_text(encoding="utf-8")
    except OSError as exc:
        fail(f"{config}: cannot read: {exc.strerror}", code=2)
    except UnicodeDecodeError:
        fail(f"{config}: cannot read: not UTF-8 text", code=2)
    from appliance.doctor import load_target, run_doctor  # noqa: PLC0415

    try:
        target = load_target(text, str(config), os.environ)
    except ConfigError as exc:
        fail_lines(exc.problems, code=2)
    # Each failed connect is a row of the report; aiokafka would also log it on stderr.
    logging.getLogger("aiokafka").setLevel(logging.CRITICAL)
    try:
        results = asyncio.run(run_doctor(target, timeout))
    except KeyboardInterrupt:
        fail("interrupted", code=130)
    _report(results, as_json)


def _report(results: Sequence[CheckResult], as_json: bool) -> None:
    from appliance.doctor import any_failed  # noqa: PLC0415

    if as_json:
        print_json(msgspec.to_builtins(results))
    else:
        print_table(_table(results))
        typer.echo(_summary(results))
    if any_failed(results):
        raise typer.Exit(1)


def _table(results: Sequence[CheckResult]) -> Table:
    table = Table(box=None, header_style="bold", pad_edge=False)
    for name in ("CHECK", "TARGET", "STATUS"):
        table.add_column(name, no_wrap=True)
    table.add_column("DETAIL")
    table.add_column("FIX")
    for r in results:
        status = Text(r.status, style=_STYLES[r.status])
        table.add_row(r.check, r.target, status, r.detail, r.fix or "-")
    return table


def _summary(results: Sequence[CheckResult]) -> str:
    counts = Counter(r.status for r in results)
    parts = [f"{counts[s]} {s}" for s in ("pass", "warn", "fail", "skip") if counts[s]]
    verdict = "problems found" if counts["fail"] else "ok"
    return f"doctor: {verdict}: {', '.join(parts)}"
