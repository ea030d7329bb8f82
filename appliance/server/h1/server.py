"""routerctl's own HTTP/1.1 server: the listeners, the app's lifespan and the drain.

`serve` runs the ASGI app's startup, accepts on every listener until `shutdown_trigger`
returns, then drains: listeners close, idle connections close, a connection answering a
request closes after that answer (`connection: close`), and whatever is still running after
`graceful_s` is cancelled and its connection reset. Then the app's shutdown runs.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

from appliance.server.h1.protocol import H1Connection
from appliance.server.h1.shared import App, H1Limits, Shared
from appliance.server.sockets import BACKLOG
from appliance.server.startup_error import StartupError
from appliance.telemetry.logging import get_logger

_log = get_logger("routerctl.server")
LIFESPAN_TIMEOUT_S = 60.0  # the app's startup, and its shutdown, each at most this long
CANCELLED_CLEANUP_S = 5.0


async def serve(
    app: App,
    sockets: Sequence[socket.socket],
    limits: H1Limits,
    *,
    graceful_s: float,
    shutdown_trigger: Callable[[], Awaitable[None]],
) -> None:
    """Serve `app` on the listening `sockets` until the trigger, then drain and return.

    Raises StartupError when the app's startup fails.
    """
    lifespan = Lifespan(app)
    await lifespan.startup()
    shared = Shared(app, limits)
    loop = asyncio.get_running_loop()
    servers: list[asyncio.base_events.Server] = []
    try:
        for sock in sockets:
            server = await loop.create_server(
                lambda: H1Connection(shared), sock=sock, backlog=BACKLOG
            )
            servers.append(server)
        await shutdown_trigger()
    finally:
        await _drain(shared, servers, graceful_s)
        await lifespan.shutdown()


async def _drain(
    shared: Shared, servers: Sequence[asyncio.base_events.Server], graceful_s: float
) -> None:
    """Close the listeners, let what runs finish within `graceful_s`, then cut the rest.

    Waits for the requests' apps as well as the connections: an app still finishing after
    its client left (the usage record of a cut stream) completes before the app's
    lifespan shutdown closes what it writes to."""
    shared.draining = True
    for server in servers:
        server.close()
    for conn in list(shared.connections):
        conn.drain_and_close()
    deadline = asyncio.get_running_loop().time() + graceful_s
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout_at(deadline):
            while shared.connections:
                await shared.gone.wait()
            if shared.tasks:
                await asyncio.wait(set(shared.tasks))
    if shared.connections or shared.tasks:
        _log.warning(
            "drain_deadline", connections=len(shared.connections), requests=len(shared.tasks)
        )
        for conn in list(shared.connections):
            conn.abort()
        for task in list(shared.tasks):
            task.cancel()
        if shared.tasks:  # their cleanup (a `finally` that awaits) gets a moment
            await asyncio.wait(set(shared.tasks), timeout=CANCELLED_CLEANUP_S)
    for server in servers:
        with contextlib.suppress(Exception):
            await asyncio.wait_for(server.wait_closed(), 1.0)


class Lifespan:
    """The ASGI lifespan protocol: the app's startup before serving, its shutdown after."""

    def __init__(self, app: App) -> None:
        self._app = app
        self._to_app: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        self._from_app: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        self._task: asyncio.Task[None] | None = None

    async def startup(self) -> None:
        scope = {"type": "lifespan", "asgi": {"version": "3.0", "spec_version": "2.0"}}
        self._task = asyncio.create_task(self._run(scope))
        await self._to_app.put({"type": "lifespan.startup"})
        try:
            async with asyncio.timeout(LIFESPAN_TIMEOUT_S):
                reply = await self._reply()
        except TimeoutError:
            raise StartupError(f"the app did not start within {LIFESPAN_TIMEOUT_S:g} s") from None
        if reply["type"] == "lifespan.startup.failed":
            raise StartupError(str(reply.get("message", "")) or "the app failed to start")

    async def shutdown(self) -> None:
        if self._task is None or self._task.done():
            return
        await self._to_app.put({"type": "lifespan.shutdown"})
        try:
            async with asyncio.timeout(LIFESPAN_TIMEOUT_S):
                reply = await self._reply()
                if reply["type"] == "lifespan.shutdown.failed":
                    _log.error("shutdown_failed", detail=str(reply.get("message", "")))
                await self._task
        except TimeoutError:
            _log.error(
                "shutdown_timeout", detail=f"the app's shutdown took over {LIFESPAN_TIMEOUT_S:g} s"
            )
            self._task.cancel()

    async def _reply(self) -> dict[str, Any]:
        assert self._task is not None
        getter = asyncio.ensure_future(self._from_app.get())
        await asyncio.wait({getter, self._task}, return_when=asyncio.FIRST_COMPLETED)
        if getter.done():
            return getter.result()
        getter.cancel()
        error = self._task.exception()
        raise StartupError(f"the app's lifespan ended: {error}" if error else "no lifespan")

    async def _run(self, scope: dict[str, Any]) -> None:
        await self._app(scope, self._to_app.get, self._from_app.put)
