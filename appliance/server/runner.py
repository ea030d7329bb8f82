"""Run the app on its engine (uvloop), the metrics listener beside it, and drain on signals.

Shutdown order: a signal turns readiness to 503 (with `shutdown_delay_s`, the listener keeps
accepting that long so load balancers notice), then stops the listeners accepting; requests
and streams in flight get `graceful_shutdown_s` to finish; then the app's lifecycle closes
its clients and we exit 0.
"""

from __future__ import annotations

import asyncio
import signal
from collections.abc import Awaitable, Callable
from contextlib import AsyncExitStack

from hypercorn.utils import LifespanFailureError

from appliance.app import WorkerSlot, build_app
from appliance.configsvc.service import ConfigService, ReloadRefused
from appliance.server.engines import engine_for
from appliance.server.metrics_listener import MetricsListener
from appliance.server.startup_error import StartupError
from appliance.server.worker_role import WorkerRole
from appliance.settings.loader import LoadedConfig
from appliance.telemetry.logging import configure_logging, get_logger
from appliance.telemetry.metrics import Metrics

# Builds the config inside the serving loop, so a source may start companions (the demo's
# in-process mock backends) that live exactly as long as the server.
ConfigSource = Callable[[AsyncExitStack], Awaitable[LoadedConfig]]
Started = Callable[[LoadedConfig], None]

_log = get_logger("routerctl.server")


def run(
    source: ConfigSource, on_started: Started | None = None, role: WorkerRole | None = None
) -> int:
    """Serve until SIGTERM/SIGINT, then drain; returns the process exit code.

    `role`: this process is one worker of a supervisor (`[server] workers` > 1).
    Raises StartupError when a component cannot start.
    """
    if role is not None:
        role.die_with_supervisor()
    try:
        import uvloop  # noqa: PLC0415  (optional: absent on platforms without it)
    except ImportError:
        loop_factory = None
    else:
        loop_factory = uvloop.new_event_loop
    with asyncio.Runner(loop_factory=loop_factory) as runner:
        try:
            runner.run(serve(source, on_started, role))
        except LifespanFailureError as exc:
            # hypercorn quotes the message: "Lifespan failure in startup. 'why'".
            why = str(exc).removeprefix("Lifespan failure in startup. ").strip("'\"")
            raise StartupError(why) from None
    return 0


async def serve(
    source: ConfigSource, on_started: Started | None = None, role: WorkerRole | None = None
) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    try:
        async with AsyncExitStack() as stack:
            config = await source(stack)
            configure_logging(
                config.settings.telemetry, worker=None if role is None else role.index
            )
            server = config.settings.server
            # First: hypercorn's hardening refuses a foreign hypercorn.
            engine = engine_for(server, None if role is None else role.listen_fds)
            metrics = Metrics()
            built = build_app(config, metrics, _slot(role))
            reloads: set[asyncio.Task[None]] = set()
            loop.add_signal_handler(
                signal.SIGHUP, _reload_on_signal, built.state.config_service, reloads
            )
            if role is not None:  # the supervisor serves metrics_listen, merging the workers'
                listener = MetricsListener("", metrics, unix_path=role.metrics_path)
                await stack.enter_async_context(listener)
            elif server.metrics_listen:
                await stack.enter_async_context(MetricsListener(server.metrics_listen, metrics))
            metrics_at = server.metrics_listen if role is None else f"unix:{role.metrics_path}"
            _log.info(
                "starting",
                listen=server.listen,
                admin=server.admin_listen,
                metrics=metrics_at or None,
            )
            if on_started is not None:
                on_started(config)
            trigger = _announce(stop, built.state.readiness.begin_shutdown, server.shutdown_delay_s)
            await engine(built.asgi, trigger)
            _log.info("stopped")
    finally:
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            loop.remove_signal_handler(sig)


def _slot(role: WorkerRole | None) -> WorkerSlot | None:
    if role is None:
        return None
    return WorkerSlot(role.index, role.started, role.reload_all)


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
