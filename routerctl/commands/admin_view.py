"""What the admin commands share: their options, --ttl parsing, error mapping, tables."""

from __future__ import annotations

import re
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Annotated

import msgspec
import typer
from rich.console import Console
from rich.table import Table
from rich.text import Text

from routerctl.admin_client import AdminError, BackendInfo, OverrideInfo
from routerctl.commands.output import fail, print_json

UrlOption = Annotated[
    str | None,
    typer.Option(
        "--url",
        help="Router base URL (default: $ROUTERCTL_URL, else http://127.0.0.1:8081).",
        show_default=False,
    ),
]
JsonOption = Annotated[bool, typer.Option("--json", help="Print JSON.")]
ReasonOption = Annotated[
    str, typer.Option("--reason", help="Why (required; it goes to the audit log).")
]
TtlOption = Annotated[
    str | None,
    typer.Option(
        "--ttl", help="Expire after 90s, 15m, 2h, 1d or plain seconds (default: until cleared)."
    ),
]

_UNITS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}
_DURATION = re.compile(r"(\d+(?:\.\d+)?)\s*([smhd]?)", re.IGNORECASE)
MAX_TTL_S = 366 * 86400  # the admin API's limit
_HEALTH_STYLES = {"healthy": "green", "unhealthy": "red", "ejected": "red", "unknown": "yellow"}


def parse_ttl(text: str) -> float:
    """'90s', '15m', '2h', '1d' or plain seconds -> seconds; ValueError saying what is wrong."""
    match = _DURATION.fullmatch(text.strip())
    if match is None:
        raise ValueError(f"invalid duration {text!r}: use e.g. 90s, 15m, 2h, 1d or seconds")
    seconds = float(match.group(1)) * _UNITS[match.group(2).lower()]
    if seconds <= 0:
        raise ValueError(f"duration {text!r} must be more than zero")
    if seconds > MAX_TTL_S:
        raise ValueError(f"duration {text!r} is over 366 days; omit --ttl to keep it until cleared")
    return seconds


def ttl_or_fail(text: str | None) -> float | None:
    if text is None:
        return None
    try:
        return parse_ttl(text)
    except ValueError as exc:
        fail(f"--ttl: {exc}", code=2)


@contextmanager
def admin_errors() -> Iterator[None]:
    """Turn a failed admin call into the CLI's one error line and exit code 1."""
    try:
        yield
    except AdminError as exc:
        fail(str(exc))


def print_value(value: object) -> None:
    """A client Struct (or list of them) as JSON, in the admin API's own shape."""
    print_json(msgspec.to_builtins(value))


def report_override(made: OverrideInfo, as_json: bool, what: str) -> None:
    """A change's answer: the override as JSON, or one line saying what it did and until when."""
    if as_json:
        print_value(made)
    else:
        typer.echo(f"{what}, {expires_in(made, time.time())} (override {made.id})")


def print_table(table: Table) -> None:
    # No markup: cells hold operator data and fixes like "add a [[models]] table".
    console = Console(markup=False)
    if not console.is_terminal:
        # Pipes and logs have no width to fit: print whole rows, so `grep` sees every id.
        natural = console.measure(table, options=console.options.update_width(10_000))
        console = Console(width=max(console.width, natural.maximum), markup=False)
    console.print(table)


def format_duration(seconds: float) -> str:
    """A human span, two units at most: '45s', '14m 59s', '2h 5m', '3d 4h'."""
    total = max(0, round(seconds))
    parts: list[str] = []
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60), ("s", 1)):
        count, total = divmod(total, size)
        if count or (unit == "s" and not parts):
            parts.append(f"{count}{unit}")
    return " ".join(parts[:2])


def expires_in(override: OverrideInfo, now: float) -> str:
    if override.expires_at is None:
        return "until cleared"
    left = override.expires_at - now
    return f"expires in {format_duration(left)}" if left > 0 else "expired"


def override_summary(override: OverrideInfo, now: float) -> str:
    """One cell: 'degrade x0.5, expires in 14m 59s' or 'drain, until cleared'."""
    factor = f" x{override.factor:g}" if override.kind == "degrade" else ""
    return f"{override.kind}{factor}, {expires_in(override, now)}"


def backends_table(backends: Sequence[BackendInfo], now: float) -> Table:
    table = Table(box=None, header_style="bold", pad_edge=False)
    table.add_column("ID", no_wrap=True, min_width=max((len(b.id) for b in backends), default=2))
    # In a narrow terminal headers and long cells wrap; ids and health never do.
    table.add_column("HEALTH", no_wrap=True)
    for name in ("WEIGHT", "EFFECTIVE", "INFLIGHT", "LATENCY ms", "OVERRIDE", "MODELS"):
        table.add_column(name)
    for b in backends:
        inflight = f"{b.inflight}/{b.max_concurrency}" if b.max_concurrency else str(b.inflight)
        table.add_row(
            b.id,
            Text(b.health, style=_HEALTH_STYLES.get(b.health, "")),
            f"{b.weight:g}",
            f"{b.effective_weight:g}",
            inflight,
            "-" if b.ewma_latency_ms is None else f"{b.ewma_latency_ms:.0f}",
            "-" if b.override is None else override_summary(b.override, now),
            ", ".join(b.models),
        )
    return table


def overrides_table(overrides: Sequence[OverrideInfo], now: float) -> Table:
    table = Table(box=None, header_style="bold", pad_edge=False)
    table.add_column("ID", no_wrap=True, min_width=max((len(o.id) for o in overrides), default=2))
    for name in ("KIND", "BACKEND", "MODEL", "FACTOR", "EXPIRES", "ACTOR"):
        table.add_column(name, no_wrap=True)
    table.add_column("REASON")
    for o in overrides:
        expires = expires_in(o, now).removeprefix("expires ")
        table.add_row(
            o.id, o.kind, o.backend, o.model or "-", f"{o.factor:g}", expires, o.actor, o.reason
        )
    return table
