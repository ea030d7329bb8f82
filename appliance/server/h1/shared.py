"""What the connections of one server share."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from email.utils import formatdate
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from appliance.server.h1.protocol import H1Connection

App = Callable[[dict[str, Any], Any, Any], Awaitable[None]]


@dataclass(frozen=True, slots=True)
class H1Limits:
    max_header_bytes: int
    header_timeout_s: float
    keep_alive_timeout_s: float
    keep_alive_max_requests: int


class Shared:
    """The app, the limits, the open connections and running requests (the drain waits for
    both), the drain flag, and the Date header (formatted once a second)."""

    def __init__(self, app: App, limits: H1Limits) -> None:
        self.app = app
        self.limits = limits
        self.connections: set[H1Connection] = set()
        self.tasks: set[asyncio.Task[None]] = set()  # the apps running, one per request
        self.draining = False
        self._date_at = -1
        self._date = b""
        self.gone = asyncio.Event()  # set whenever the last connection closes

    def date_line(self) -> bytes:
        now = int(time.time())
        if now != self._date_at:
            self._date_at = now
            self._date = b"date: %s\r\n" % formatdate(now, usegmt=True).encode()
        return self._date

    def closed(self, conn: H1Connection) -> None:
        self.connections.discard(conn)
        if not self.connections:
            self.gone.set()
