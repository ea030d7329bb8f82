"""`routerctl top`: a live view of a running router, from its metrics and admin API."""

from __future__ import annotations

import dataclasses
import os
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from typing import Annotated

import typer
from rich.console import Console, Group
from rich.live import Live
from rich.table import Table

from routerctl.admin_client import AdminClient, AdminError, BackendInfo
from routerctl.commands.admin_view import JsonOption, UrlOption
from routerctl.commands.output import fail, print_json
from routerctl.top import Sample, View, parse, view

METRICS_ENV = "ROUTERCTL_METRICS_URL"
_HTTP = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def top(
    url: UrlOption = None,
    metrics_url: Annotated[
        str | None,
        typer.Option(
            "--metrics-url",
            help=f"The router's /metrics (default: ${METRICS_ENV}, else http://127.0.0.1:9090/metrics).",
        ),
    ] = None,
    interval: Annotated[
        float, typer.Option("--interval", min=0.2, max=60.0, help="Seconds between refreshes.")
    ] = 1.0,
    once: Annotated[
        bool, typer.Option("--once", help="Measure one interval, print, exit (for scripts).")
    ] = False,
    as_json: JsonOption = False,
) -> None:
    """Per backend: requests/s, errors, p50/p99, in flight, health, ejections, overrides; per
    org and model: requests/s, 429s and 5xx per second. Refreshes until Ctrl-C."""
    scrape_url = metrics_url or os.environ.get(METRICS_ENV) or "http://127.0.0.1:9090/metrics"
    client = AdminClient.from_env(url)
    before = _scrape(scrape_url)
    if once:
        time.sleep(interval)
        shown = view(before, _scrape(scrape_url), _backends(client))
        if as_json:
            print_json(dataclasses.asdict(shown))
        else:
            _console().print(_render(shown, client.url))
        return
    console = _console()
    try:
        if not console.is_terminal:  # piped or logged: one frame per interval, like top -b
            for shown in _frames(scrape_url, client, interval, before):
                console.print(_render(shown, client.url))
                console.print()
        with Live(Group(), refresh_per_second=4, screen=False) as live:
            for shown in _frames(scrape_url, client, interval, before):
                live.update(_render(shown, client.url))
    except KeyboardInterrupt:
        return


def _frames(url: str, client: AdminClient, interval: float, before: Sample) -> Iterator[View]:
    """A view per interval, until Ctrl-C."""
    while True:
        time.sleep(interval)
        after = _scrape(url)
        yield view(before, after, _backends(client))
        before = after


def _console() -> Console:
    # Off a terminal, rich would cut the table to 80 columns: a log line may be wider.
    return Console(markup=False, width=None if sys.stdout.isatty() else 160)


def _scrape(url: str) -> Sample:
    try:
        with _HTTP.open(url, timeout=5) as response:
            text = response.read().decode()
    except (urllib.error.URLError, OSError) as exc:
        fail(f"cannot read the router's metrics at {url}: {exc}; set --metrics-url")
    return parse(text, time.monotonic())


def _backends(client: AdminClient) -> list[BackendInfo] | None:
    """The admin API's backends; None (rates only) without a token or when it fails."""
    if not client.has_token:
        return None
    try:
        return client.backends()
    except AdminError:
        return None


def _render(shown: View, where: str) -> Group:
    backends = Table(title=f"routerctl top: {where}, every {shown.interval_s:.1f}s", box=None)
    for column in ("BACKEND", "HEALTH", "WEIGHT", "INFLIGHT", "RPS", "ERR%", "P50 ms", "P99 ms",
                   "EJECTED", "OVERRIDE"):  # fmt: skip
        backends.add_column(column)
    for b in shown.backends:
        backends.add_row(
            b.id, b.health, _num(b.effective_weight), _num(b.inflight), f"{b.rps:.1f}",
            _num(b.error_pct), _num(b.p50_ms), _num(b.p99_ms), _num(b.ejections), b.override or "-",
        )  # fmt: skip
    models = Table(box=None)
    for column in ("ORG", "MODEL", "RPS", "429/s", "5XX/s"):
        models.add_column(column)
    for m in shown.models:
        models.add_row(
            m.org, m.model, f"{m.rps:.1f}", f"{m.rate_limited_ps:.1f}", f"{m.errors_ps:.1f}"
        )
    return Group(backends, models)


def _num(value: float | None) -> str:
    if value is None:
        return "-"
    return f"{value:.1f}" if isinstance(value, float) else str(value)
