"""`[server] engine`: what serves the ASGI app over HTTP/1.1.

"routerctl" (the default) is routerctl's own server on llhttp (server/h1); "hypercorn" is
hypercorn with the h11 hardening (h11_hardening, lingering_close). Both keep the same
guarantees: 408 for a slow head, 431, 400 for CL+TE, no protocol switch, catalog-shaped
refusals, lingering close, drain. Both are run by the same tests.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from hypercorn.asyncio import serve as hypercorn_serve

from appliance.server.h1 import h1_limits, h1_serve, listening_sockets
from appliance.server.hypercorn_setup import hypercorn_config
from appliance.settings import ServerSettings

Trigger = Callable[[], Awaitable[None]]
Engine = Callable[[Any, Trigger], Awaitable[None]]


def engine_for(server: ServerSettings, listen_fds: tuple[int, ...] | None = None) -> Engine:
    """Serves an ASGI app until the trigger returns, then drains; raises StartupError for a
    hypercorn the hardening does not fit (checked here, before anything starts).

    `listen_fds`: the listening sockets inherited from the supervisor, else bound here.
    """
    if server.engine == "hypercorn":
        config = hypercorn_config(server, listen_fds)

        async def on_hypercorn(app: Any, trigger: Trigger) -> None:
            await hypercorn_serve(app, config, shutdown_trigger=trigger, mode="asgi")

        return on_hypercorn
    limits = h1_limits(server)

    async def on_routerctl(app: Any, trigger: Trigger) -> None:
        with listening_sockets(server, listen_fds) as sockets:
            await h1_serve(
                app,
                sockets,
                limits,
                graceful_s=server.graceful_shutdown_s,
                shutdown_trigger=trigger,
            )

    return on_routerctl
