"""One connection to a backend: one exchange at a time, the answer parsed by llhttp.

The protocol's callbacks feed the exchange directly: no reader task, no stream object, the
head resolved when llhttp has it and body pieces queued for whoever reads them. A reader
slower than the backend pauses the socket once `BUFFER_HIGH` bytes wait, so a slow client
costs the router no memory beyond that.
"""

from __future__ import annotations

import asyncio
from collections import deque
from typing import cast

import httptools

from appliance.errors import RouterError, UpstreamError, UpstreamStreamBroken, UpstreamTimeout

BUFFER_HIGH = 256 * 1024  # body bytes queued before the socket is paused
MAX_HEAD_BYTES = 64 * 1024  # a backend's response head beyond this is refused
_HEAD_TOO_LARGE = "The backend's answer head is over 64 KiB."
_NOT_HTTP = "The backend's answer is not valid HTTP/1.1."


class _HeadTooLarge(Exception):
    pass


class BackendConnection(asyncio.Protocol):
    """Call `start()` with a whole request, await `head`, then `chunk()` until b""."""

    def __init__(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._parser = httptools.HttpResponseParser(self)
        self._transport: asyncio.Transport | None = None
        self.alive = True  # until the socket closes or is dropped
        self.idle_since = 0.0
        self.busy = False  # an exchange is under way
        self.reusable = False  # the last answer ended cleanly on a kept-alive connection
        self.status = 0
        self.headers: dict[str, str] = {}
        self.head: asyncio.Future[None] | None = None
        self._head_bytes = 0  # bytes fed while the answer's head was incomplete
        self._head_size = 0  # its header lines
        self._informational = False
        self._until_eof = False  # no length, not chunked: the body ends when the socket does
        self._chunks: deque[bytes] = deque()
        self._buffered = 0
        self._paused = False
        self._ended = False
        self._error: RouterError | None = None
        self._waiter: asyncio.Future[None] | None = None
        self._deadline: asyncio.TimerHandle | None = None
        self._end_at = 0.0

    # Driven by the client.

    def start(self, request: bytes | list[bytes], head_at: float, end_at: float) -> None:
        """Send a request; `head` resolves with its answer's head, or with the error that
        ended the exchange: UpstreamTimeout without a head by `head_at` or an end by `end_at`
        (loop times)."""
        assert self._transport is not None
        assert not self.busy
        self.busy, self.reusable = True, False
        self.status, self.headers, self._head_bytes, self._head_size = 0, {}, 0, 0
        self._until_eof = self._ended = False
        self._error = None
        self.head = self._loop.create_future()
        # One timer: at the head's deadline, then (if the head came) moved to the end's.
        self._end_at = end_at
        self._deadline = self._loop.call_at(min(head_at, end_at), self._expire)
        if isinstance(request, list):
            self._transport.writelines(request)
        else:
            self._transport.write(request)

    async def chunk(self) -> bytes:
        """The body bytes received since the last call (joined), b"" once the body ended."""
        while not self._chunks:
            if self._error is not None:
                raise self._error
            if self._ended:
                return b""
            self._waiter = self._loop.create_future()
            try:
                await self._waiter
            finally:
                self._waiter = None
        data = self._chunks.popleft() if len(self._chunks) == 1 else b"".join(self._chunks)
        self._chunks.clear()
        self._buffered = 0
        if self._paused and self._transport is not None:
            self._paused = False
            self._transport.resume_reading()
        return data

    def finished(self) -> bool:
        """The body was read to its end without error: the exchange is over."""
        return self._ended and not self._chunks and self._error is None

    def fail(self, error: RouterError) -> None:
        """End the exchange with `error` (its readers raise it) and drop the connection; an
        answer already received whole stays readable."""
        if self._error is None and not self._ended:
            self._error = error
        self._wake()
        if self.head is not None and not self.head.done():
            self.head.set_exception(error)
            self.head.exception()  # retrieved: a caller gone (timed out) must not log it
        self.abort()

    def abort(self) -> None:
        if self.busy and not self._ended and self._error is None:
            self._error = UpstreamStreamBroken()  # a body ending at EOF is cut, not complete
        self.alive = False
        self.reusable = False
        self._stop_deadline()
        if self._transport is not None:
            self._transport.abort()

    # asyncio.Protocol

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast(asyncio.Transport, transport)  # uvloop's is not a subclass

    def data_received(self, data: bytes) -> None:
        if not self.busy or self._ended:  # bytes no request asked for: not to be trusted
            self.abort()
            return
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserCallbackError as exc:
            too_large = isinstance(exc.__context__, _HeadTooLarge)
            self.fail(UpstreamError(_HEAD_TOO_LARGE if too_large else _NOT_HTTP))
            return
        except httptools.HttpParserUpgrade:
            self.fail(UpstreamError("The backend switched protocols, which it was not asked to."))
            return
        except Exception:
            self.fail(UpstreamError(_NOT_HTTP))
            return
        # llhttp buffers a header line until it ends: the head is bounded by what was fed.
        if self.head is not None and not self.head.done():
            self._head_bytes += len(data)
            if self._head_bytes > MAX_HEAD_BYTES:
                self.fail(UpstreamError(_HEAD_TOO_LARGE))

    def eof_received(self) -> bool | None:
        return False  # a half-closed backend is a closed one

    def connection_lost(self, exc: Exception | None) -> None:
        self.alive = False
        self.reusable = False
        if not self.busy or self._ended:
            self._stop_deadline()
            return
        if self._until_eof and self.head is not None and self.head.done() and exc is None:
            self._end()  # the socket's end is the body's
            return
        if self.head is not None and not self.head.done():
            self.fail(UpstreamError("The backend closed the connection without answering."))
        else:
            self.fail(UpstreamStreamBroken())

    # llhttp callbacks

    def on_message_begin(self) -> None:
        if self._ended:  # a second answer to one request
            raise ValueError("answer after the answer")
        self.headers = {}

    def on_header(self, name: bytes, value: bytes) -> None:
        self._head_size += len(name) + len(value) + 4
        if self._head_size > MAX_HEAD_BYTES:  # a whole head that arrived in one read
            raise _HeadTooLarge
        self.headers.setdefault(name.decode("latin-1").lower(), value.decode("latin-1"))

    def on_headers_complete(self) -> None:
        status = self._parser.get_status_code()
        self._informational = 100 <= status < 200  # e.g. 103 Early Hints: the answer follows
        if self._informational:
            return
        self.status = status
        headers = self.headers
        self._until_eof = (
            "content-length" not in headers
            and "chunked" not in headers.get("transfer-encoding", "").lower()
            and status not in (204, 304)
        )
        if self.head is not None and not self.head.done():
            self.head.set_result(None)

    def on_body(self, body: bytes) -> None:
        self._chunks.append(body)
        self._buffered += len(body)
        if self._buffered >= BUFFER_HIGH and not self._paused and self._transport is not None:
            self._paused = True
            self._transport.pause_reading()
        self._wake()

    def on_message_complete(self) -> None:
        if self._informational:
            self._informational = False
            return
        # Answered before the request was all sent (an early 413): the rest is still queued.
        self.reusable = (
            self._parser.should_keep_alive()
            and not self._until_eof
            and self._transport is not None
            and self._transport.get_write_buffer_size() == 0
        )
        self._end()

    # Inside.

    def _end(self) -> None:
        self._ended = True
        self._stop_deadline()
        self._wake()

    def _wake(self) -> None:
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)

    def _expire(self) -> None:
        self._deadline = None
        head_in = self.head is not None and self.head.done()
        if head_in and self._loop.time() < self._end_at - 0.001:  # a tick early is on time
            self._deadline = self._loop.call_at(self._end_at, self._expire)
        else:
            self.fail(UpstreamTimeout())

    def _stop_deadline(self) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None
