"""One request and its response, as the ASGI app sees them: `receive` and `send`.

The request body arrives from the connection's parser (`feed`, `end`); `receive` hands it
over and, while the app is not reading, the connection stops reading the socket once
`BODY_HIGH_WATER` bytes wait here. The response head is held back until the first body
message so head and body leave in one write; a response without a content-length is sent
chunked (close-delimited for HTTP/1.0).
"""

from __future__ import annotations

import asyncio
from typing import Any, Protocol

from appliance.server.h1.refusal import reason_phrase

BODY_HIGH_WATER = 256 * 1024
_NO_BODY_STATUS = frozenset({204, 304})
_CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"
_DISCONNECT = {"type": "http.disconnect"}
_LAST_CHUNK = b"0\r\n\r\n"

Message = dict[str, Any]


class Connection(Protocol):
    """What a cycle needs of its connection (protocol.H1Connection)."""

    def write(self, data: bytes) -> None: ...
    async def drain(self) -> None: ...
    def resume_reading(self) -> None: ...
    def pause_reading(self) -> None: ...
    def date_line(self) -> bytes: ...
    def cycle_done(self, cycle: Cycle) -> None: ...


class ResponseError(RuntimeError):
    """The app sent messages that do not make one HTTP response."""


class Cycle:
    __slots__ = (
        "_body",
        "_body_size",
        "_chunked",
        "_conn",
        "_end_given",
        "_expect_100",
        "_head",
        "_head_only",
        "_length_left",
        "_waiter",
        "disconnected",
        "http_10",
        "keep_alive",
        "more_body",
        "response_complete",
        "response_started",
        "scope",
    )

    def __init__(
        self,
        conn: Connection,
        scope: dict[str, Any],
        *,
        keep_alive: bool,
        expect_100: bool,
    ) -> None:
        self._conn = conn
        self.scope = scope
        self.keep_alive = keep_alive
        self.http_10 = scope["http_version"] == "1.0"
        self._expect_100 = expect_100
        self._head_only = scope["method"] == "HEAD"
        self._body: list[bytes] = []
        self._body_size = 0
        self._waiter: asyncio.Future[None] | None = None
        self._head = b""
        self._chunked = False
        self._length_left = -1  # the declared content-length not yet sent; -1: none declared
        self.more_body = True
        self._end_given = False
        self.disconnected = False
        self.response_started = False
        self.response_complete = False

    # -- from the connection ------------------------------------------------------------

    def feed(self, data: bytes) -> None:
        self._body.append(data)
        self._body_size += len(data)
        if self._body_size > BODY_HIGH_WATER:
            self._conn.pause_reading()
        self._wake()

    def end(self) -> None:
        self.more_body = False
        self._wake()

    def lost(self) -> None:
        self.disconnected = True
        self._wake()

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    # -- ASGI -------------------------------------------------------------------------------

    async def receive(self) -> Message:
        if self._expect_100:
            self._expect_100 = False
            if not self.response_started and not self.disconnected:
                self._conn.write(_CONTINUE)
        while not self._body and self.more_body and not self._finished():
            self._conn.resume_reading()
            self._waiter = asyncio.get_running_loop().create_future()
            try:
                await self._waiter
            finally:
                self._waiter = None
        if self._body:
            body = self._body[0] if len(self._body) == 1 else b"".join(self._body)
            self._body.clear()
            self._body_size = 0
            self._conn.resume_reading()
            self._end_given = not self.more_body
            return {"type": "http.request", "body": body, "more_body": self.more_body}
        if not self.more_body and not self._end_given and not self.disconnected:
            self._end_given = True  # a body-less request, or one whose end came on its own
            return {"type": "http.request", "body": b"", "more_body": False}
        if not self._finished():
            # The whole body was handed over: what is left to wait for is the end.
            self._waiter = asyncio.get_running_loop().create_future()
            try:
                await self._waiter
            finally:
                self._waiter = None
        return _DISCONNECT

    def _finished(self) -> bool:
        return self.disconnected or self.response_complete

    async def send(self, message: Message) -> None:
        kind = message["type"]
        if kind == "http.response.start":
            if self.response_started:
                raise ResponseError("http.response.start sent twice")
            self._head = self._response_head(message["status"], message.get("headers", ()))
            self.response_started = True
            return
        if kind != "http.response.body" or not self.response_started or self.response_complete:
            raise ResponseError(f"{kind!r} outside a response")
        more: bool = message.get("more_body", False)
        data = self._framed(message.get("body", b""), more)
        if data and not self.disconnected:
            self._conn.write(data)
        if more:
            await self._conn.drain()
            return
        self.response_complete = True
        self._wake()  # a receive() waiting for the end gets its disconnect
        if not self.disconnected:
            self._conn.cycle_done(self)

    def _framed(self, body: bytes, more: bool) -> bytes:
        """`body` as it goes on the wire: chunked or counted, after the held head."""
        if self._head_only:
            body = b""
        elif self._length_left >= 0:
            self._length_left -= len(body)
            if self._length_left < 0 or (not more and self._length_left):
                self.keep_alive = False  # the framing is broken: the connection cannot be reused
                raise ResponseError("the body does not match its content-length")
        if self._chunked:
            if body:
                body = b"%x\r\n%b\r\n" % (len(body), body)
            if not more:
                body += _LAST_CHUNK
        if self._head:
            body = self._head + body
            self._head = b""
        return body

    def _response_head(self, status: int, headers: Any) -> bytes:
        lines, length, close = _head_lines(status, headers)
        if status in _NO_BODY_STATUS or status < 200:
            self._length_left = 0
        elif length >= 0:
            self._length_left = 0 if self._head_only else length
        elif self.http_10:
            close = True  # close-delimited
        elif not self._head_only:
            self._chunked = True
            lines.append(b"transfer-encoding: chunked\r\n")
        if close:
            self.keep_alive = False
        if not self.keep_alive:
            lines.append(b"connection: close\r\n")
        elif self.http_10:
            lines.append(b"connection: keep-alive\r\n")
        lines.append(self._conn.date_line())
        lines.append(b"\r\n")
        return b"".join(lines)

    @property
    def head_on_wire(self) -> bool:
        """The answer's head was written (it is held until the first body message)."""
        return self.response_started and not self._head

    @property
    def body_unread(self) -> bool:
        """The request's body has not all arrived: the connection cannot serve another."""
        return self.more_body


def _head_lines(status: int, headers: Any) -> tuple[list[bytes], int, bool]:
    """The status line and the app's headers, its content-length (-1: none) and whether it
    asked for a close. Framing headers are this layer's: the app's are not passed on."""
    lines = [b"HTTP/1.1 %d %s\r\n" % (status, reason_phrase(status))]
    length = -1
    close = False
    for name, value in headers:
        if b"\r" in name or b"\n" in name or b"\r" in value or b"\n" in value:
            raise ResponseError("a response header holds a line break")
        lower = name.lower()
        if lower == b"content-length":
            if not value.isdigit():
                raise ResponseError("the content-length is not a whole number")
            length = int(value)
        elif lower == b"connection":
            close = close or b"close" in value.lower()
            continue
        elif lower == b"transfer-encoding":
            continue
        lines.append(b"%s: %s\r\n" % (name, value))
    return lines, length, close
