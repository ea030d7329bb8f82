"""`routerctl mock-backend`: run the OpenAI-compatible fake model server until a signal."""

from __future__ import annotations

import asyncio
import errno
import os
import signal
from collections.abc import Coroutine
from typing import TYPE_CHECKING, Annotated, Any

import typer

from routerctl.commands.output import fail

if TYPE_CHECKING:
    from appliance.mock.server import MockBackend


def mock_backend(
    *,  # typer passes options by name; keyword-only keeps direct callers honest too
    host: Annotated[str, typer.Option("--host", help="Address to listen on.")] = "127.0.0.1",
    port: Annotated[
        int, typer.Option("--port", min=0, max=65535, help="Port to listen on (0 = any free).")
    ] = 8001,
    latency_ms: Annotated[
        float,
        typer.Option("--latency-ms", min=0, help="Delay before each answer / first stream chunk."),
    ] = 0.0,
    fail_rate: Annotated[
        float,
        typer.Option("--fail-rate", min=0, max=1, help="Fraction of inference requests to 500."),
    ] = 0.0,
    tokens_per_s: Annotated[
        float,
        typer.Option("--tokens-per-s", min=0, help="Stream pacing (0 = as fast as possible)."),
    ] = 0.0,
    model: Annotated[
        list[str] | None,
        typer.Option("--model", help="Model listed by /v1/models (repeatable; default: demo)."),
    ] = None,
    require_key_env: Annotated[
        str | None,
        typer.Option(
            "--require-key-env",
            metavar="NAME",
            help="Require 'Authorization: Bearer $NAME' on /v1 requests.",
        ),
    ] = None,
    seed: Annotated[int, typer.Option("--seed", help="Seed of the --fail-rate draws.")] = 0,
) -> None:
    """Serve fake chat, completion and embedding answers (JSON and SSE) for tests and drills."""
    key = None
    if require_key_env is not None:
        key = os.environ.get(require_key_env)
        if not key:
            fail(f"--require-key-env: environment variable {require_key_env} is not set", code=2)
    try:
        # Imported here: aiohttp would slow every other routerctl command's start.
        from appliance.mock.server import MockBackend  # noqa: PLC0415

        backend = MockBackend(
            models=model or ["demo"],
            latency_ms=latency_ms,
            fail_rate=fail_rate,
            tokens_per_s=tokens_per_s,
            require_key=key,
            seed=seed,
        )
    except (TypeError, ValueError) as exc:
        fail(str(exc), code=2)
    try:
        _run(_serve(backend, host, port))
    except OSError as exc:
        reason = "address already in use" if exc.errno == errno.EADDRINUSE else exc.strerror
        fail(f"cannot listen on {host}:{port}: {reason or exc}")


def _run(main: Coroutine[Any, Any, None]) -> None:
    """Run on uvloop when it is installed (it is a dependency off Windows), else asyncio."""
    try:
        import uvloop  # noqa: PLC0415 - optional, and only this command wants it
    except ImportError:  # pragma: no cover - Windows
        asyncio.run(main)
    else:
        uvloop.run(main)


async def _serve(backend: MockBackend, host: str, port: int) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    await backend.start(host, port)
    try:
        models = ", ".join(backend.models)
        typer.echo(f"mock backend listening on {backend.url} (models: {models})")
        await stop.wait()
    finally:
        await backend.stop()


if __name__ == "__main__":  # `python -m routerctl.commands.mock_backend`, used by the tests
    _app = typer.Typer(rich_markup_mode=None, add_completion=False, pretty_exceptions_enable=False)
    _app.command()(mock_backend)
    _app()
