"""`routerctl audit lookup`: search the audit log of a running router (admin API)."""

from __future__ import annotations

import re
import time
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Annotated

import typer
from rich.table import Table

from appliance.audit.events import KINDS
from routerctl.admin_client import AdminClient, AuditInfo
from routerctl.commands.admin_view import (
    JsonOption,
    UrlOption,
    admin_errors,
    print_table,
    print_value,
)
from routerctl.commands.output import fail

app = typer.Typer(
    rich_markup_mode=None,
    help="Look up audit events of a running router (admin API, $ROUTERCTL_TOKEN).",
    no_args_is_help=True,
)

MAX_LIMIT = 1000  # the admin API's limit
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}
# [0-9], not \d: \d also matches other scripts' digits.
_AGO = re.compile(r"([0-9]+(?:\.[0-9]+)?)\s*([smhd])", re.IGNORECASE)
_UNIX = re.compile(r"[0-9]{1,12}(?:\.[0-9]+)?")
_DATE_ONLY = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}")
_WHEN_HELP = "ISO-8601 (2026-11-26T10:00:00Z), unix seconds, or how long ago: 15m, 2h, 1d."

SinceOption = Annotated[
    str | None, typer.Option("--since", metavar="WHEN", help=f"From WHEN on: {_WHEN_HELP}")
]
UntilOption = Annotated[
    str | None, typer.Option("--until", metavar="WHEN", help="Before WHEN (same forms).")
]


def parse_when(text: str, now: float) -> float:
    """ISO-8601 with a timezone, unix seconds, or '15m'/'2h'/'1d' ago -> unix seconds.

    A date alone is 00:00 UTC. ValueError, one line quoting the input, for anything else.
    """
    stripped = text.strip()
    ago = _AGO.fullmatch(stripped)
    if ago is not None:
        return now - float(ago.group(1)) * _UNITS[ago.group(2).lower()]
    if _UNIX.fullmatch(stripped):
        return float(stripped)
    try:
        parsed = datetime.fromisoformat(stripped)
    except ValueError:
        raise ValueError(f"invalid time {text!r}: use {_WHEN_HELP}") from None
    if parsed.tzinfo is None:
        if not _DATE_ONLY.fullmatch(stripped):
            raise ValueError(f"time {text!r} has no timezone: add Z (UTC) or an offset like +02:00")
        parsed = parsed.replace(tzinfo=UTC)
    return parsed.timestamp()


def _when_or_fail(option: str, text: str | None, now: float) -> float | None:
    if text is None:
        return None
    try:
        return parse_when(text, now)
    except ValueError as exc:
        fail(f"{option}: {exc}", code=2)


@app.callback()
def audit() -> None:
    """Look up audit events of a running router (admin API, $ROUTERCTL_TOKEN)."""


@app.command("lookup")
def lookup(
    *,  # options by name only; typer passes them so
    request_id: Annotated[
        str | None, typer.Option("--request-id", help="Only events of this request id.")
    ] = None,
    org: Annotated[str | None, typer.Option("--org", help="Only events of this org.")] = None,
    kind: Annotated[
        str | None, typer.Option("--kind", help=f"Only this kind: {', '.join(KINDS)}.")
    ] = None,
    since: SinceOption = None,
    until: UntilOption = None,
    limit: Annotated[
        int, typer.Option("--limit", min=1, max=MAX_LIMIT, help="At most this many, newest first.")
    ] = 100,
    url: UrlOption = None,
    as_json: JsonOption = False,
) -> None:
    """Show audit events matching every filter given, newest first."""
    if kind is not None and kind not in KINDS:
        fail(f"--kind: unknown kind {kind!r}; the kinds are: {', '.join(KINDS)}", code=2)
    now = time.time()
    since_s = _when_or_fail("--since", since, now)
    until_s = _when_or_fail("--until", until, now)
    if since_s is not None and until_s is not None and until_s < since_s:
        fail("--until: it is before --since", code=2)
    with admin_errors():
        events = AdminClient.from_env(url).audit(
            request_id=request_id, org=org, kind=kind, since=since_s, until=until_s, limit=limit
        )
    if as_json:
        print_value({"data": events})
    elif not events:
        typer.echo("no audit events match")
    else:
        print_table(audit_table(events))
        if len(events) == limit:
            typer.echo(
                f"routerctl: showing the newest {limit}; there may be more "
                "(raise --limit or narrow with --since/--until)",
                err=True,
            )


def audit_table(events: Sequence[AuditInfo]) -> Table:
    table = Table(box=None, header_style="bold", pad_edge=False)
    for name in ("TIME", "KIND", "ACTOR", "ORG", "KEY", "REQUEST", "SUBJECT"):
        table.add_column(name, no_wrap=True)
    table.add_column("REASON")
    for e in events:
        table.add_row(
            _utc(e.time),
            e.kind,
            *(value or "-" for value in (e.actor, e.org, e.key_id, e.request_id, e.subject)),
            e.reason or "-",
        )
    return table


def _utc(seconds: float) -> str:
    return datetime.fromtimestamp(seconds, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


if __name__ == "__main__":  # `python -m routerctl.commands.audit`, before main.py registers it
    app()
