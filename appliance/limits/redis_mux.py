"""One Redis connection shared by every caller: commands are written as they come, batched
per turn of the event loop, and the replies matched to their callers in order (Redis
answers in the order it was asked).

For a standalone Redis this replaces a pooled connection per batch. An admission costs a
share of one write and one read of a connection that is always open: no checkout, no
pipeline object, no task and no timeout context per call. redis-py opens the connection
and does its handshake (AUTH, SELECT, HELLO, TLS, unix sockets); then this module's
protocol takes the transport over and parses the replies itself (resp.py), as they arrive.

Each call carries a deadline. One timer watches the earliest: when a call's deadline
passes unanswered the connection is closed and everyone waiting on it fails, so a reply
that comes late is never read as someone else's; the next call opens a new one.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Callable
from typing import Any, cast

from redis.asyncio.connection import AbstractConnection, ConnectionPool
from redis.exceptions import ConnectionError as RedisConnectionError

from appliance.limits.resp import Replies, RespError

Command = tuple[Any, ...]
_Waiter = tuple["asyncio.Future[Any]", float]  # a caller's reply and its deadline


class _Link(asyncio.Protocol):
    """One open connection: the callers waiting on it, oldest first, and what is still to
    be written this turn of the loop."""

    def __init__(self, writer: asyncio.StreamWriter, on_drop: Callable[[_Link], None]) -> None:
        self.waiting: deque[_Waiter] = deque()
        self.replies = Replies()
        self._loop = asyncio.get_running_loop()
        self._out: list[bytes] = []
        self._timer: asyncio.Handle | None = None
        self._timer_at = 0.0  # kept here: uvloop's handle for a time already due has no when()
        self._on_drop = on_drop
        self.closed = False
        # Read and write through `writer`'s transport from now on. The writer is kept: when
        # collected while its transport is open, it closes that transport.
        self._writer = writer
        self._transport = cast(asyncio.Transport, writer.transport)  # uvloop's: no subclass
        self._transport.set_protocol(self)

    def send(self, packed: bytes, count: int, deadline: float) -> list[asyncio.Future[Any]]:
        """Write `count` packed commands: now on an idle connection, else with the rest of
        this turn's (one write for them all). Their replies' futures."""
        futures = [self._loop.create_future() for _ in range(count)]
        if self.busy:
            if not self._out:
                self._loop.call_soon(self._write)
            self._out.append(packed)
        else:
            self._transport.write(packed)
        self.waiting.extend((future, deadline) for future in futures)
        if self._timer is None or deadline < self._timer_at:
            self._arm(deadline)
        return futures

    @property
    def busy(self) -> bool:
        """Replies are owed or writes are pending: what is sent now waits for this turn's write."""
        return bool(self.waiting or self._out)

    def _write(self) -> None:
        out, self._out = self._out, []
        if not self.closed:
            self._transport.write(b"".join(out))

    def _arm(self, when: float) -> None:
        if self._timer is not None:
            self._timer.cancel()
        # Never sooner than 1 ms ahead: a check exactly at a deadline may find it a float
        # step ahead, and must not spin through loop turns until it is due.
        self._timer_at = max(when, self._loop.time() + 0.001)
        self._timer = self._loop.call_at(self._timer_at, self._check)

    def _check(self) -> None:
        self._timer = None
        if not self.waiting:
            return
        now = self._loop.time()
        earliest = min(deadline for _, deadline in self.waiting)
        if earliest <= now:
            for future, deadline in self.waiting:
                if deadline <= now and not future.done():
                    future.set_exception(TimeoutError("no reply from Redis by the deadline"))
            self.drop(RedisConnectionError("closed: a call on this connection timed out"))
        else:
            self._arm(earliest)

    def data_received(self, data: bytes) -> None:
        try:
            replies = self.replies.feed(data)
        except RespError as exc:
            self.drop(RedisConnectionError(f"unreadable reply from Redis: {exc}"))
            return
        waiting = self.waiting
        for reply in replies:
            if not waiting:
                self.drop(RedisConnectionError("a reply from Redis that nobody asked for"))
                return
            future = waiting.popleft()[0]
            if not future.done():  # else the caller gave up (cancelled)
                future.set_result(reply)

    def eof_received(self) -> bool:
        return False  # close

    def connection_lost(self, exc: Exception | None) -> None:
        self.drop(RedisConnectionError(f"connection to Redis lost: {exc or 'closed by server'}"))

    def drop(self, exc: BaseException) -> None:
        """Close the connection and fail everyone waiting on it with `exc`."""
        if self.closed:
            return
        self.closed = True
        self._on_drop(self)
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._transport.abort()  # no linger: nothing more is owed either way
        while self.waiting:
            future = self.waiting.popleft()[0]
            if not future.done():
                future.set_exception(exc)


class Multiplexed:
    def __init__(self, pool: ConnectionPool) -> None:
        self._pool = pool
        self._link: _Link | None = None
        self._opening: asyncio.Lock | None = None

    async def execute(self, commands: list[Command], deadline: float | None = None) -> list[Any]:
        """The replies to `commands`, in order; an error reply as its exception object.

        `deadline` (event loop time; None: no deadline) bounds opening the connection and
        every reply: past it, TimeoutError. A failed connection raises
        RedisConnectionError for every caller waiting on it; the next call opens another."""
        futures = await self.submit(commands, deadline)
        try:
            return [await future for future in futures]
        except BaseException:
            for future in futures:  # all fail alike: one raised, the rest are read here
                if future.done():
                    _retrieve(future)
                else:  # the caller was cancelled: nobody will read it
                    future.add_done_callback(_retrieve)
            raise

    async def submit(
        self, commands: list[Command], deadline: float | None = None
    ) -> list[asyncio.Future[Any]]:
        """Queue `commands` on the connection (opened first if need be): their replies'
        futures, which fail as `execute` raises."""
        link = self._link
        if link is None:
            link = await self._open(deadline)
        when = float("inf") if deadline is None else deadline
        return link.send(pack(commands), len(commands), when)

    def idle(self) -> bool | None:
        """Whether a command sent now is written at once (nothing outstanding on the
        connection); None when the connection is not open."""
        link = self._link
        return None if link is None else not link.busy

    def send_now(self, command: Command, deadline: float) -> asyncio.Future[Any] | None:
        """`command`'s reply, or None when the connection is not open (then `execute`)."""
        link = self._link
        if link is None:
            return None
        return link.send(pack([command]), 1, deadline)[0]

    async def aclose(self) -> None:
        link, self._link = self._link, None
        if link is not None:
            link.drop(RedisConnectionError("closed"))

    async def _open(self, deadline: float | None) -> _Link:
        if self._opening is None:
            self._opening = asyncio.Lock()
        async with asyncio.timeout_at(deadline):
            async with self._opening:  # callers arriving meanwhile share the one connection
                if self._link is not None:
                    return self._link
                conn: AbstractConnection = self._pool.make_connection()  # type: ignore[no-untyped-call]
                try:
                    await conn.connect()  # type: ignore[no-untyped-call]
                    writer = _take_writer(conn)
                except BaseException:  # a deadline mid-handshake included: no socket left open
                    await conn.disconnect(nowait=True)
                    raise
                link = _Link(writer, self._forget)
                self._link = link
                return link

    def _forget(self, link: _Link) -> None:
        if self._link is link:
            self._link = None


def _take_writer(conn: AbstractConnection) -> asyncio.StreamWriter:
    """redis-py's stream writer, once its handshake is done; the connection object is left
    without its streams, so it no longer owns (or closes) the socket."""
    writer, reader = getattr(conn, "_writer", None), getattr(conn, "_reader", None)
    if not isinstance(writer, asyncio.StreamWriter):
        raise RedisConnectionError("this redis-py version does not expose its connection")
    # Closed during the handshake: redis-py's stream saw the end, the new protocol never
    # would, and its callers would wait out their deadlines.
    if writer.transport.is_closing() or (
        isinstance(reader, asyncio.StreamReader) and reader.at_eof()
    ):
        raise RedisConnectionError("connection to Redis closed during the handshake")
    conn._writer = conn._reader = None
    return writer


def _retrieve(future: asyncio.Future[Any]) -> None:
    if not future.cancelled():
        future.exception()


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
