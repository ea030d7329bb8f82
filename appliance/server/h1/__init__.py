"""routerctl's own HTTP/1.1 server (`[server] engine = "routerctl"`), on llhttp."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from contextlib import contextmanager

from appliance.server.h1.server import serve as h1_serve
from appliance.server.h1.shared import H1Limits
from appliance.server.sockets import bind_listener
from appliance.settings import ADMIN_ON_PUBLIC, ServerSettings

__all__ = ["H1Limits", "h1_limits", "h1_serve", "listening_sockets"]


def h1_limits(server: ServerSettings) -> H1Limits:
    return H1Limits(
        max_header_bytes=server.max_header_bytes,
        header_timeout_s=server.header_timeout_s,
        keep_alive_timeout_s=server.keep_alive_timeout_s,
        keep_alive_max_requests=server.keep_alive_max_requests,
    )


@contextmanager
def listening_sockets(
    server: ServerSettings, listen_fds: tuple[int, ...] | None = None
) -> Iterator[list[socket.socket]]:
    """`listen`'s socket, then `admin_listen`'s when it has its own: bound here, or the
    supervisor's inherited `listen_fds`. Closed on exit."""
    socks: list[socket.socket] = []
    try:
        if listen_fds is not None:
            socks.extend(socket.socket(fileno=fd) for fd in listen_fds)
        else:
            socks.append(bind_listener(server.listen))
            if server.admin_listen != ADMIN_ON_PUBLIC:
                socks.append(bind_listener(server.admin_listen))
        yield socks
    finally:
        for sock in socks:
            sock.close()
