"""`routerctl buffer inspect / replay`: the usage outbox in a state dir, looked into and drained.

Both work on the files, so they work on a stopped router (inspect also on a running one).
Replay needs the state dir alone: it refuses while a router holds it. With `--via-admin`
both ask a running router instead, through its admin API.
"""

from __future__ import annotations

import asyncio
import logging
import os
import sqlite3
import time
from collections.abc import Iterator
from contextlib import closing, contextmanager
from enum import StrEnum
from pathlib import Path
from typing import Annotated

import msgspec
import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from appliance.settings import Settings, TelemetrySettings
from appliance.settings.kafka import kafka_environment_problems, kafka_password
from appliance.settings.loader import ConfigError, format_path, parse_settings
from appliance.sqlite_support import StoreError
from appliance.telemetry.logging import configure_logging
from appliance.usage.buffer_report import (
    TOPIC_ROWS_SQL,
    BufferReport,
    TopicRow,
    build_report,
    sinks_by_topic,
)
from appliance.usage.buffer_service import LiveBufferReport
from appliance.usage.file_sink import FileSink, StdoutSink
from appliance.usage.kafka_security import KafkaSecurity, KafkaSecurityError
from appliance.usage.kafka_sink import KafkaSink
from appliance.usage.ports import SinkError, UsageSink
from appliance.usage.publisher import replay as replay_outbox
from appliance.usage.sqlite_outbox import SqliteOutbox
from appliance.usage.state_lock import StateDirBusy, try_exclusive
from routerctl.admin_client import AdminClient
from routerctl.commands.admin_view import (
    JsonOption,
    UrlOption,
    admin_errors,
    format_duration,
    print_table,
)
from routerctl.commands.output import fail, fail_lines, print_json

OUTBOX_FILE = "outbox.sqlite"  # as appliance/app.py names it in the state dir
_MB = 1024 * 1024
# A replay through the router publishes until the outbox is empty: allow for a big backlog.
_ADMIN_REPLAY_TIMEOUT_S = 300.0

app = typer.Typer(
    rich_markup_mode=None,
    help="Look into the usage outbox of a state dir and drain it (works on a stopped router).",
    no_args_is_help=True,
)

ConfigOption = Annotated[
    Path | None,
    typer.Option("--config", help="Router config: its state.dir and usage sink settings."),
]
StateDirOption = Annotated[
    Path | None,
    typer.Option(
        "--state-dir",
        help="State directory (default: state.dir of --config, else ./routerctl-state).",
        show_default=False,
    ),
]


class Target(StrEnum):
    kafka = "kafka"
    file = "file"
    stdout = "stdout"


ViaAdminOption = Annotated[
    bool,
    typer.Option(
        "--via-admin",
        help="Ask the running router (admin API, $ROUTERCTL_TOKEN) instead of reading files.",
    ),
]


@app.command("inspect")
def inspect(
    state_dir: StateDirOption = None,
    config: ConfigOption = None,
    as_json: JsonOption = False,
    via_admin: ViaAdminOption = False,
    url: UrlOption = None,
) -> None:
    """Records, bytes and the oldest record's age in the outbox, per topic and per sink."""
    if via_admin:
        with admin_errors():
            live = AdminClient.from_env(url).buffer()
        if as_json:
            print_json(msgspec.to_builtins(live))
            return
        report: BufferReport = live
    else:
        settings = _settings(config)
        path = _outbox_path(_state_dir(state_dir, settings))
        try:
            report = read_report(path, time.time(), settings.usage.sink)
        except sqlite3.Error as exc:
            fail(f"{path}: cannot read the usage outbox: {exc}")
        if as_json:
            print_json(msgspec.to_builtins(report))
            return
    typer.echo(f"usage outbox {report.path}")
    print_table(_report_table(report))
    if via_admin:
        _print_publishing(live)


@app.command("replay")
def replay(
    *,
    state_dir: StateDirOption = None,
    config: ConfigOption = None,
    to: Annotated[
        Target | None, typer.Option("--to", help="Where to (default: the config's usage.sink).")
    ] = None,
    bootstrap: Annotated[
        list[str] | None,
        typer.Option("--bootstrap", metavar="HOST:PORT", help="Kafka broker (repeatable)."),
    ] = None,
    topic: Annotated[
        str | None, typer.Option("--topic", help="Kafka topic for usage records.")
    ] = None,
    file: Annotated[
        Path | None, typer.Option("--file", help="JSON-lines file (default: usage.file_path).")
    ] = None,
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="Count what would be sent; send and delete nothing.")
    ] = False,
    limit: Annotated[
        int | None, typer.Option("--limit", min=1, help="Replay at most N (oldest) records.")
    ] = None,
    via_admin: ViaAdminOption = False,
    url: UrlOption = None,
) -> None:
    """Publish the outbox's records, oldest first, deleting each batch once acknowledged.

    Resumable: after an interruption or a sink failure, run it again.
    """
    if via_admin:
        if to is not None or bootstrap or topic is not None or file is not None:
            fail(
                "--via-admin publishes to the running router's own sink: "
                "drop --to, --bootstrap, --topic and --file",
                code=2,
            )
        _replay_via_admin(url, limit=limit, dry_run=dry_run)
        return
    _quiet_logs()
    settings = _settings(config)
    directory = _state_dir(state_dir, settings)
    path = _outbox_path(directory)
    target = _target(to, settings)
    sink = _sink(target, settings, state_dir=directory, bootstrap=bootstrap, topic=topic, file=file)
    try:
        with try_exclusive(directory):
            done, total = _run_replay(path, settings, sink, dry_run=dry_run, limit=limit)
    except StateDirBusy as exc:
        fail(f"{exc}; to publish through it, add --via-admin")
    err = target is Target.stdout  # keep stdout for the records themselves
    if dry_run:
        typer.echo(f"dry run: {done} records would be replayed to {target}", err=err)
    else:
        typer.echo(f"replayed {done} of {total} records to {target}", err=err)


def read_report(path: Path, now: float, sink: str) -> BufferReport:
    """Counts from the outbox file, opened read-only (a live router may be writing it)."""
    with closing(sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True)) as conn:
        rows: list[TopicRow] = conn.execute(TOPIC_ROWS_SQL).fetchall()
    return build_report(str(path), rows, now, sinks_by_topic(sink))


def _report_table(report: BufferReport) -> Table:
    table = Table(box=None, header_style="bold", pad_edge=False)
    table.add_column("TOPIC", no_wrap=True)
    table.add_column("SINK", no_wrap=True)
    for name in ("RECORDS", "BYTES", "OLDEST"):
        table.add_column(name, justify="right", no_wrap=True)
    now = time.time()

    def age(created_at: float | None) -> str:
        return "-" if created_at is None else format_duration(now - created_at)

    for name, topic in report.topics.items():
        row = (name, topic.sink, str(topic.records), str(topic.bytes))
        table.add_row(*row, age(topic.oldest_created_at))
    total = ("total", "", str(report.records), str(report.bytes))
    table.add_row(*total, age(report.oldest_created_at), style="bold")
    return table


def _print_publishing(live: LiveBufferReport) -> None:
    state = live.publishing
    if state.consecutive_failures:
        typer.echo(
            f"publishing: failing ({state.consecutive_failures} in a row): {state.last_error}"
        )
    elif state.last_success_at is not None:
        typer.echo(
            f"publishing: ok, last batch {format_duration(time.time() - state.last_success_at)} ago"
        )
    else:
        typer.echo("publishing: nothing published yet")


def _replay_via_admin(url: str | None, *, limit: int | None, dry_run: bool) -> None:
    """The running router publishes now with its own publisher; one request, one answer."""
    with admin_errors():
        result = AdminClient.from_env(url, timeout_s=_ADMIN_REPLAY_TIMEOUT_S).buffer_replay(
            limit, dry_run
        )
    if dry_run:
        typer.echo(f"dry run: {result.published} records would be replayed to {result.sink}")
    else:
        typer.echo(
            f"replayed {result.published} records to {result.sink} through the router;"
            f" {result.remaining} still buffered"
        )


def _run_replay(
    path: Path, settings: Settings, sink: UsageSink, *, dry_run: bool, limit: int | None
) -> tuple[int, int]:
    """(records replayed, records that were to be replayed); one error line on failure."""
    seen = [0, 0]
    with _progress_bar() as bar:
        task = bar.add_task("dry run" if dry_run else f"replaying to {sink.name}", total=None)

        def progress(done: int, total: int) -> None:
            seen[:] = [done, total]
            bar.update(task, completed=done, total=total)

        outbox = SqliteOutbox(path, int(settings.usage.max_buffer_mb * _MB), settings.usage.on_full)

        async def run() -> int:
            async with outbox:
                return await replay_outbox(
                    outbox, sink, limit=limit, dry_run=dry_run, progress=progress
                )

        try:
            done = asyncio.run(run())
        except (SinkError, StoreError) as exc:
            bar.stop()
            fail(f"{exc}; {_left(seen)}")
        except KeyboardInterrupt:
            bar.stop()
            fail(f"interrupted; {_left(seen)}", code=130)
    return done, seen[1]


def _left(seen: list[int]) -> str:
    done, total = seen
    return f"{done} of {total} records replayed, the rest are still in the outbox: run again"


@contextmanager
def _progress_bar() -> Iterator[Progress]:
    console = Console(stderr=True)
    with Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=console,
        disable=not console.is_terminal,
    ) as bar:
        yield bar


def _quiet_logs() -> None:
    """Log to stderr, errors only: the one error line says what failed, and stdout may be
    carrying records (--to stdout). aiokafka would log every failed connect on its own."""
    configure_logging(TelemetrySettings(log_level="error", log_format="console"))
    logging.getLogger("aiokafka").setLevel(logging.CRITICAL)


def _settings(config: Path | None) -> Settings:
    if config is None:
        return Settings()
    try:
        text = config.read_text(encoding="utf-8")
    except OSError as exc:
        fail(f"{config}: cannot read: {exc.strerror}")
    try:
        return parse_settings(text, str(config))
    except ConfigError as exc:
        fail_lines(exc.problems)


def _state_dir(option: Path | None, settings: Settings) -> Path:
    directory = option if option is not None else Path(settings.state.dir)
    if not directory.is_dir():
        fail(f"{directory}: no such state directory (use --state-dir or --config)")
    return directory


def _outbox_path(directory: Path) -> Path:
    path = directory / OUTBOX_FILE
    if not path.is_file():
        fail(f"{path}: no usage outbox in this state directory (has a router run with it?)")
    return path


def _target(to: Target | None, settings: Settings) -> Target:
    if to is not None:
        return to
    if settings.usage.sink == "none":
        fail('usage.sink is "none": say where to replay with --to kafka|file|stdout', code=2)
    return Target(settings.usage.sink)


def _sink(
    target: Target,
    settings: Settings,
    *,
    state_dir: Path,
    bootstrap: list[str] | None,
    topic: str | None,
    file: Path | None,
) -> UsageSink:
    u = settings.usage
    if target is Target.kafka:
        servers = bootstrap or list(u.kafka_bootstrap)
        if not servers:
            fail("no Kafka broker: pass --bootstrap HOST:PORT or --config", code=2)
        return KafkaSink(
            servers,
            {"usage": topic or u.kafka_topic, "audit": u.kafka_audit_topic},
            acks=u.kafka_acks,
            compression=None if u.kafka_compression == "none" else u.kafka_compression,
            security=_kafka_security(settings),
        )
    if target is Target.file:
        path = file or (Path(u.file_path) if u.file_path else state_dir / "usage.jsonl")
        return FileSink(path, int(u.file_max_mb * _MB), u.file_keep)
    return StdoutSink()


def _kafka_security(settings: Settings) -> KafkaSecurity:
    """The config's Kafka security, the password from this shell's environment."""
    u = settings.usage
    problems = kafka_environment_problems(msgspec.structs.replace(u, sink="kafka"), os.environ)
    if problems:
        fail_lines([f"{format_path(path)}: {reason}" for path, reason in problems], code=2)
    try:
        return KafkaSecurity.from_settings(u, kafka_password(u, os.environ))
    except KafkaSecurityError as exc:
        fail(str(exc), code=2)


if __name__ == "__main__":  # `python -m routerctl.commands.buffer`, before main.py registers it
    app()
