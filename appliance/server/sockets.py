"""Listening sockets bound the one way every engine and the supervisor bind them."""

from __future__ import annotations

import socket

from appliance.settings import parse_listen

BACKLOG = 2048


def bind_listener(listen: str) -> socket.socket:
    """A listening TCP socket on `listen` ("host:port"); OSError when it cannot be bound."""
    host, port = parse_listen(listen)
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.bind((host, port))
        sock.listen(BACKLOG)
    except OSError:
        sock.close()
        raise
    return sock
