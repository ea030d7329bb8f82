"""Run the app on hypercorn (uvloop), the metrics listener beside it, and drain on signals.

Shutdown order: a signal turns readiness to 503 (with `shutdown_delay_s`, the listener keeps
accepting that long so load balancers notice), then stops the listeners accepting; requests
and streams in flight get `graceful_shutdown_s` to finish; then the app's lifecycle closes
its clients and we exit 0.
"""

from __future__ import annotations

import asyncio
import logging
import signal
from collections.abc import Awaitable, Callable
from contextlib import AsyncExitStack

from aiohttp import web
from hypercorn.asyncio import serve as hypercorn_serve
from hypercorn.config import Config as HypercornConfig
from hypercorn.utils import LifespanFailureError

from appliance.app import build_app
from appliance.configsvc.service import ConfigService, ReloadRefused
from appliance.settings import ServerSettings, parse_listen
from appliance.settings_loader import LoadedConfig
from appliance.telemetry.logging import configure_logging, get_logger
from appliance.telemetry.metrics import Metrics

# Builds the config inside the serving loop, so a source may start companions (the demo's
# in-process mock backends) that live exactly as long as the server.
ConfigSource = Callable[[AsyncExitStack], Awaitable[LoadedConfig]]
Started = Callable[[LoadedConfig], None]

_log = get_logger("routerctl.server")


class StartupError(RuntimeError):
    """The app could not start (state dir, stores): one line for the operator."""


def run(source: ConfigSource, on_started: Started | None = None) -> int:
    """Serve until SIGTERM/SIGINT, then drain; returns the process exit code.

    Raises StartupError when a component cannot start.
    """
    try:
        import uvloop  # noqa: PLC0415  (optional: absent on platforms without it)
    except ImportError:
        loop_factory = None
    else:
        loop_factory = uvloop.new_event_loop
    with asyncio.Runner(loop_factory=loop_factory) as runner:
        try:
            runner.run(serve(source, on_started))
        except LifespanFailureError as exc:
            # hypercorn quotes the message: "Lifespan failure in startup. 'why'".
            why = str(exc).removeprefix("Lifespan failure in startup. ").strip("'\"")
            raise StartupError(why) from None
    return 0


async def serve(source: ConfigSource, on_started: Started | None = None) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    try:
        async with AsyncExitStack() as stack:
            config = await source(stack)
            configure_logging(config.settings.telemetry)
            server = config.settings.server
            metrics = Metrics()
            built = build_app(config, metrics)
            reloads: set[asyncio.Task[None]] = set()
            loop.add_signal_handler(
                signal.SIGHUP, _reload_on_signal, built.state.config_service, reloads
            )
            if server.metrics_listen:
                await stack.enter_async_context(MetricsListener(server.metrics_listen, metrics))
            _log.info("starting", listen=server.listen, metrics=server.metrics_listen or None)
            if on_started is not None:
                on_started(config)
            await hypercorn_serve(
                built.asgi,  # type: ignore[arg-type]
                hypercorn_config(server),
                shutdown_trigger=_announce(
                    stop, built.state.readiness.begin_shutdown, server.shutdown_delay_s
                ),
                mode="asgi",
            )
            _log.info("stopped")
    finally:
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            loop.remove_signal_handler(sig)


def _reload_on_signal(service: ConfigService, tasks: set[asyncio.Task[None]]) -> None:
    """SIGHUP: re-read the config file; an invalid one is logged and the old config stays."""

    async def reload() -> None:
        try:
            result = await service.reload_file()
        except ReloadRefused as exc:
            _log.error("config_reload_refused", trigger="SIGHUP", problems=exc.problems)
        else:
            _log.info("config_reload_done", trigger="SIGHUP", restart_needed=result.restart_needed)

    task = asyncio.create_task(reload())
    tasks.add(task)
    task.add_done_callback(tasks.discard)


def hypercorn_config(server: ServerSettings) -> HypercornConfig:
    config = HypercornConfig()
    host, port = parse_listen(server.listen)
    config.bind = [f"[{host}]:{port}" if ":" in host else f"{host}:{port}"]
    config.worker_class = "uvloop"
    config.graceful_timeout = server.graceful_shutdown_s
    config.keep_alive_timeout = server.keep_alive_timeout_s
    config.keep_alive_max_requests = server.keep_alive_max_requests
    config.h11_max_incomplete_size = server.max_header_bytes
    config.h2_max_concurrent_streams = 100
    config.backlog = 2048
    config.accesslog = None  # our edge middleware writes the access log
    errorlog = logging.getLogger("hypercorn.error")  # one handler: our root config
    errorlog.addFilter(_drop_startup_failure)
    config.errorlog = errorlog
    # hypercorn's own read timeout is for idle keep-alive; bodies are timed by EdgeMiddleware.
    config.read_timeout = None
    return config


def _drop_startup_failure(record: logging.LogRecord) -> bool:
    # `routerctl serve` reports a failed start as one line (StartupError); hypercorn's own
    # log of it would add a traceback before that line.
    failure = record.exc_info[1] if record.exc_info else None
    return not isinstance(failure, LifespanFailureError)


def _announce(
    stop: asyncio.Event, unready: Callable[[], None], delay_s: float
) -> Callable[[], Awaitable[None]]:
    async def wait() -> None:
        await stop.wait()
        unready()
        if delay_s > 0:
            # Readiness already says 503; load balancers need a few probe periods to notice
            # before the listener closes, or they send new requests into refused connections.
            _log.info("unready", detail=f"still accepting for {delay_s:g}s before draining")
            await asyncio.sleep(delay_s)
        _log.info("draining", detail="stopped accepting; waiting for requests in flight")

    return wait


class MetricsListener:
    """Prometheus text on its own listener, so scraping never competes with the public API."""

    def __init__(self, listen: str, metrics: Metrics) -> None:
        self._host, self._port = parse_listen(listen)
        self._metrics = metrics
        self._runner: web.AppRunner | None = None

    async def __aenter__(self) -> MetricsListener:
        app = web.Application()
        app.router.add_get("/metrics", self._render)
        self._runner = web.AppRunner(app, access_log=None, handle_signals=False)
        await self._runner.setup()
        await web.TCPSite(self._runner, self._host, self._port).start()
        return self

    async def __aexit__(self, *_: object) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    async def _render(self, _: web.Request) -> web.Response:
        return web.Response(
            body=self._metrics.render(),
            headers={"content-type": "text/plain; version=0.0.4; charset=utf-8"},
        )
