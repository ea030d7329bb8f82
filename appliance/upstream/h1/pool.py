"""Kept-alive connections to one backend origin, most recently used first."""

from __future__ import annotations

import asyncio
import ssl
from collections import deque

from appliance.errors import UpstreamConnectError, UpstreamTimeout
from appliance.upstream.h1.connection import BackendConnection

POOL_LIMIT = 1024  # open connections per origin; a request past them waits for one
KEEPALIVE_S = 30.0  # an idle connection older than this is closed, not reused


class Pool:
    def __init__(self, host: str, port: int, tls: ssl.SSLContext | None) -> None:
        self._host, self._port, self._tls = host, port, tls
        self._loop = asyncio.get_running_loop()
        self._idle: deque[BackendConnection] = deque()
        self._open: set[BackendConnection] = set()
        self._waiters: deque[asyncio.Future[None]] = deque()
        self.closed = False

    async def acquire(self, connect_timeout_s: float, wait_until: float) -> BackendConnection:
        """A kept-alive connection, else a new one (UpstreamConnectError if it can't be);
        waiting for one to come back at most until `wait_until` (loop time), then
        UpstreamTimeout."""
        while True:
            now = self._loop.time()
            while self._idle:
                conn = self._idle.pop()
                if conn.alive and now - conn.idle_since < KEEPALIVE_S:
                    conn.busy = False
                    return conn
                self._forget(conn)
            self._open -= {c for c in self._open if not c.alive}
            if len(self._open) < POOL_LIMIT:
                return await self._connect(connect_timeout_s)
            waiter = self._loop.create_future()
            self._waiters.append(waiter)
            try:
                async with asyncio.timeout_at(wait_until):
                    await waiter
            except (TimeoutError, asyncio.CancelledError) as exc:
                if waiter.done() and not waiter.cancelled():
                    self._wake_one()  # woken, then gone: the next one gets the turn
                if isinstance(exc, TimeoutError):
                    raise UpstreamTimeout() from None
                raise
            finally:
                if waiter in self._waiters:
                    self._waiters.remove(waiter)

    def release(self, conn: BackendConnection) -> None:
        """Back to the pool after a clean answer, else closed; one waiter is woken."""
        if conn.reusable and conn.alive and not self.closed:
            conn.busy = False
            conn.idle_since = self._loop.time()
            self._idle.append(conn)
            while self._idle and conn.idle_since - self._idle[0].idle_since >= KEEPALIVE_S:
                self._forget(self._idle.popleft())
            self._wake_one()
        else:
            self._forget(conn)

    def close(self) -> None:
        self.closed = True
        for conn in list(self._open):
            conn.abort()
        self._open.clear()
        self._idle.clear()

    async def _connect(self, timeout_s: float) -> BackendConnection:
        conn = BackendConnection()
        self._open.add(conn)  # counted while connecting: the limit holds under a burst
        try:
            async with asyncio.timeout(timeout_s):
                await self._loop.create_connection(
                    lambda: conn,
                    self._host,
                    self._port,
                    ssl=self._tls,
                    server_hostname=self._host if self._tls is not None else None,
                )
        except TimeoutError:
            self._forget(conn)
            raise UpstreamConnectError("Connecting to a backend timed out.") from None
        except (OSError, ssl.SSLError):
            self._forget(conn)
            raise UpstreamConnectError() from None
        except BaseException:
            self._forget(conn)
            raise
        return conn

    def _forget(self, conn: BackendConnection) -> None:
        conn.abort()
        if conn in self._open:
            self._open.discard(conn)
            self._wake_one()  # a slot is free

    def _wake_one(self) -> None:
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)
                return
