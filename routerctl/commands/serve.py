"""`routerctl serve`: run the router from a config file, or the built-in demo."""

from __future__ import annotations

import errno
import os
import sys
from contextlib import AsyncExitStack
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import msgspec
import typer

from appliance.settings import (
    ADMIN_ON_PUBLIC,
    ServerSettings,
    admin_listen_problems,
    parse_listen,
)
from appliance.settings.loader import ConfigError, LoadedConfig, load_file
from routerctl.commands.output import fail, fail_lines

if TYPE_CHECKING:
    from appliance.server import ConfigSource, Started

# appliance.server and appliance.demo pull in quart, hypercorn and aiohttp: they are imported
# inside the functions that serve, so admin commands start in a fraction of the time.


def serve(
    config: Annotated[
        Path | None,
        typer.Option("--config", "-c", envvar="ROUTERCTL_CONFIG", help="The TOML config file."),
    ] = None,
    demo: Annotated[
        bool, typer.Option("--demo", help="Run with two in-process mock backends.")
    ] = False,
    listen: Annotated[
        str | None, typer.Option("--listen", help="Override server.listen (HOST:PORT).")
    ] = None,
    metrics_listen: Annotated[
        str | None,
        typer.Option("--metrics-listen", help="Override server.metrics_listen ('' = off)."),
    ] = None,
    admin_listen: Annotated[
        str | None,
        typer.Option(
            "--admin-listen",
            help="Override server.admin_listen (HOST:PORT, or 'public': on the listen address).",
        ),
    ] = None,
) -> None:
    """Run the router until SIGTERM/SIGINT, then drain in-flight requests and exit 0."""
    if demo == (config is not None):
        fail("pass exactly one of --config FILE or --demo", code=2)
    overrides = _overrides(listen, metrics_listen, admin_listen)
    from appliance.server.worker_role import WorkerRole  # noqa: PLC0415

    role = WorkerRole.from_environ(os.environ)
    if config is not None:
        loaded = _load(config, overrides)
        if loaded.settings.server.workers > 1 and role is None:
            _supervise(loaded, _worker_command(config, overrides))
        source, on_started = _file_source(loaded), None
    else:
        source, on_started = _demo(overrides)
    from appliance.server import StartupError, run  # noqa: PLC0415

    try:
        code = run(source, on_started, role)
    except StartupError as exc:
        fail(f"cannot start: {exc}")
    except OSError as exc:
        if exc.errno == errno.EADDRINUSE:
            fail(f"cannot listen: address already in use ({exc.strerror})")
        raise
    raise typer.Exit(code)


def _overrides(
    listen: str | None, metrics_listen: str | None, admin_listen: str | None
) -> dict[str, str]:
    """The [server] addresses given on the command line, each checked."""
    given = {"listen": listen, "metrics_listen": metrics_listen, "admin_listen": admin_listen}
    off = {"metrics_listen": "", "admin_listen": ADMIN_ON_PUBLIC}
    for key, value in given.items():
        if value is None or value == off.get(key):
            continue
        try:
            parse_listen(value)
        except ValueError as exc:
            fail(f"--{key.replace('_', '-')}: {exc}", code=2)
    return {k: v for k, v in given.items() if v is not None}


def _load(path: Path, overrides: dict[str, str]) -> LoadedConfig:
    try:
        return _override(load_file(path), overrides)
    except ConfigError as exc:
        fail_lines(exc.problems)


def _supervise(loaded: LoadedConfig, command: list[str]) -> None:
    """`[server] workers` > 1: this process supervises that many `routerctl serve` workers."""
    from appliance.server.supervisor import supervise  # noqa: PLC0415

    try:
        code = supervise(loaded.settings, command, None)
    except OSError as exc:
        if exc.errno == errno.EADDRINUSE:
            fail(f"cannot listen: address already in use ({exc.strerror})")
        raise
    raise typer.Exit(code)


def _worker_command(config: Path, overrides: dict[str, str]) -> list[str]:
    """How a worker runs: this same program (the one-file binary included), same config."""
    program = (
        [sys.executable] if getattr(sys, "frozen", False) else [sys.executable, "-m", "routerctl"]
    )
    extra = [arg for k, v in overrides.items() for arg in (f"--{k.replace('_', '-')}", v)]
    return [*program, "serve", "--config", str(config.resolve()), *extra]


def _file_source(loaded: LoadedConfig) -> ConfigSource:
    async def from_file(_: AsyncExitStack) -> LoadedConfig:
        return loaded

    return from_file


def _demo(overrides: dict[str, str]) -> tuple[ConfigSource, Started]:
    """The demo's config source, and its banner (which prints the admin token it made)."""
    from appliance.demo import demo_admin_token, demo_server, start_demo  # noqa: PLC0415

    try:
        server = demo_server(overrides)
    except ConfigError as exc:
        fail_lines(exc.problems)
    token = demo_admin_token(server)

    async def from_demo(stack: AsyncExitStack) -> LoadedConfig:
        return await start_demo(stack, server, token)

    def banner(loaded: LoadedConfig) -> None:
        _demo_banner(loaded, token)

    return from_demo, banner


def _override(loaded: LoadedConfig, changes: dict[str, str]) -> LoadedConfig:
    if not changes:
        return loaded
    server = msgspec.structs.replace(loaded.settings.server, **changes)
    if problems := admin_listen_problems(server):
        raise ConfigError([f"server.admin_listen: {why}" for _, why in problems])
    settings = msgspec.structs.replace(loaded.settings, server=server)
    return LoadedConfig(settings, loaded.credentials, loaded.source, server_overrides=changes)


def _demo_banner(loaded: LoadedConfig, token: str) -> None:
    from appliance.demo import DEMO_KEY, DEMO_MODEL  # noqa: PLC0415

    server: ServerSettings = loaded.settings.server
    url = f"http://{server.listen}/v1"
    admin = server.listen if server.admin_listen == ADMIN_ON_PUBLIC else server.admin_listen
    typer.echo(
        f"routerctl demo: serving model '{DEMO_MODEL}' on {url}\n"
        f"  demo API key: {DEMO_KEY}\n"
        f"  operator commands (routerctl backend list, audit, ...): "
        f"export ROUTERCTL_URL=http://{admin} ROUTERCTL_TOKEN={token}\n"
        f"  try: curl {url}/chat/completions -H 'Authorization: Bearer {DEMO_KEY}' "
        f"-H 'Content-Type: application/json' "
        f'-d \'{{"model": "{DEMO_MODEL}", "messages": [{{"role": "user", "content": "Hello"}}]}}\'',
        err=False,
    )
