"""One Redis connection shared by every caller: commands are written as they come and the
replies matched to their callers in order (RESP answers in the order it was asked).

For a standalone Redis this replaces a pooled connection per batch: no checkout, no
pipeline object and no wait for a batch's round trip before the next batch is written, so
an admission costs one write and one read of a connection that is always open. The
connection is redis-py's own (its handshake: AUTH, SELECT, TLS, unix sockets); only the
dispatch is ours. Deadlines are the caller's: one that gives up `reset()`s the connection,
so a reply that comes late is never read as someone else's.
"""

from __future__ import annotations

import asyncio
import math
from collections import deque
from typing import Any

from redis.asyncio.connection import AbstractConnection, ConnectionPool
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import ResponseError

Command = tuple[Any, ...]


class _Link:
    """One open connection and the callers waiting on it, oldest first."""

    __slots__ = ("conn", "reader", "waiting")

    def __init__(self, conn: AbstractConnection) -> None:
        self.conn = conn
        self.waiting: deque[asyncio.Future[Any]] = deque()
        self.reader: asyncio.Task[None] | None = None


class Multiplexed:
    def __init__(self, pool: ConnectionPool) -> None:
        self._pool = pool
        self._link: _Link | None = None
        self._opening: asyncio.Lock | None = None

    async def execute(self, commands: list[Command]) -> list[Any]:
        """The replies to `commands`, in order; an error reply as its exception object.

        Raises a ConnectionError when the connection fails (every caller waiting on it
        gets one); it is opened again on the next call."""
        link = self._link or await self._open()
        loop = asyncio.get_running_loop()
        futures = [loop.create_future() for _ in commands]
        link.waiting.extend(futures)
        try:
            await link.conn.send_packed_command(pack(commands), False)
        except Exception as exc:
            self._drop(link, exc)
            raise
        try:
            return [await future for future in futures]
        except BaseException:
            for future in futures:  # all failed alike: one raised, the rest are read here
                if future.done() and not future.cancelled():
                    future.exception()
            raise

    def reset(self) -> None:
        """Close the connection, failing whoever waits on it (a caller gave up on a reply)."""
        if self._link is not None:
            self._drop(self._link, RedisConnectionError("a call on this connection timed out"))

    async def aclose(self) -> None:
        link, self._link = self._link, None
        if link is not None:
            self._fail(link, RedisConnectionError("closed"))
            if link.reader is not None:
                link.reader.cancel()
            await link.conn.disconnect()

    async def _open(self) -> _Link:
        if self._opening is None:
            self._opening = asyncio.Lock()
        async with self._opening:  # callers arriving meanwhile share the one connection
            if self._link is not None:
                return self._link
            conn: AbstractConnection = self._pool.make_connection()  # type: ignore[no-untyped-call]
            await conn.connect()  # type: ignore[no-untyped-call]
            # Replies are awaited for as long as the callers' deadlines say, not the socket's.
            conn.socket_timeout = None
            link = _Link(conn)
            link.reader = asyncio.create_task(self._read(link), name="redis-mux-reader")
            self._link = link
            return link

    async def _read(self, link: _Link) -> None:
        conn = link.conn
        waiting = link.waiting
        try:
            while True:
                try:
                    reply: Any = await conn.read_response(timeout=math.inf)
                except ResponseError as error:
                    reply = error
                future = waiting.popleft()
                if not future.done():
                    future.set_result(reply)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            self._drop(link, exc)

    def _drop(self, link: _Link, exc: BaseException) -> None:
        if self._link is link:
            self._link = None
        self._fail(link, exc)
        if link.reader is not None and link.reader is not asyncio.current_task():
            link.reader.cancel()
        task = asyncio.ensure_future(link.conn.disconnect(nowait=True))
        task.add_done_callback(_ignore)

    @staticmethod
    def _fail(link: _Link, exc: BaseException) -> None:
        error = exc if isinstance(exc, RedisConnectionError) else RedisConnectionError(str(exc))
        while link.waiting:
            future = link.waiting.popleft()
            if not future.done():
                future.set_exception(error)


def pack(commands: list[Command]) -> bytes:
    """RESP arrays of bulk strings, as redis-py packs them (str as UTF-8, numbers as their
    text), in one pass: its packer is a large share of an admission's CPU."""
    out: list[bytes] = []
    for command in commands:
        out.append(b"*%d\r\n" % len(command))
        for arg in command:
            if isinstance(arg, str):
                data = arg.encode()
            elif isinstance(arg, bytes):
                data = arg
            elif isinstance(arg, int | float) and not isinstance(arg, bool):
                data = repr(arg).encode()
            else:
                raise TypeError(f"cannot send a {type(arg).__name__} to Redis")
            out.append(b"$%d\r\n%b\r\n" % (len(data), data))
    return b"".join(out)


def _ignore(task: asyncio.Future[None]) -> None:
    if not task.cancelled():
        task.exception()
