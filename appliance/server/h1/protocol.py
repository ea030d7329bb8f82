"""One HTTP/1.1 connection: llhttp (httptools) parses, this decides, `Cycle` talks ASGI.

What is decided here, before any app runs (the hardening issue 16 asked of the server):
- a head must be complete `header_timeout_s` after its first byte (else 408) and at most
  `max_header_bytes` long (else 431);
- only HTTP/1.0 and 1.1 are served; an HTTP/1.1 request needs exactly one Host;
- Content-Length with Transfer-Encoding, duplicate lengths, bad characters: 400 (llhttp's
  strict mode refuses them), and the connection is closed, so nothing after a smuggled
  request's end is ever parsed as another request;
- no protocol is switched to: an Upgrade header is dropped and the request served as
  HTTP/1.1; CONNECT and the HTTP/2 preface are refused;
- every refusal is the catalog's JSON error with a fresh x-request-id;
- a connection closed while the client may still be sending lingers: it is half-closed and
  what arrives is dropped, never parsed, for at most LINGER_S and LINGER_BYTES.
Pipelined requests are answered in order, one at a time.
"""

from __future__ import annotations

import asyncio
from collections import deque
from typing import Any, cast

import httptools

from appliance.errors import RouterError
from appliance.server.h1.cycle import Cycle
from appliance.server.h1.head import Head
from appliance.server.h1.refusal import Refused, invalid, refusal_bytes, too_large, too_slow
from appliance.server.h1.shared import Shared
from appliance.server.lingering_close import LINGER_BYTES, LINGER_S
from appliance.telemetry.logging import get_logger

MAX_PIPELINED = 64  # requests parsed ahead of their answers on one connection

_log = get_logger("routerctl.http")


class H1Connection(asyncio.Protocol):
    def __init__(self, shared: Shared) -> None:
        self._shared = shared
        self._limits = shared.limits
        self._loop = asyncio.get_running_loop()
        self._parser = httptools.HttpRequestParser(self)
        self._transport: asyncio.Transport | None = None
        self._server: tuple[str, int] | None = None
        self._client: tuple[str, int] | None = None
        # the request being parsed
        self._head = Head(self._limits.max_header_bytes)
        self._unparsed = 0  # bytes fed since the parser last reported progress (a head piece)
        self._progress = False
        self._parsing: Cycle | None = None
        # the requests being answered
        self._cycle: Cycle | None = None
        self._queue: deque[Cycle] = deque()
        self._requests = 0
        self._refusal: RouterError | None = None  # answered once the cycles before it are
        self._refusal_head_only = False
        # timers and flow
        self._head_timer: asyncio.TimerHandle | None = None
        self._idle_timer: asyncio.TimerHandle | None = None
        self._linger: asyncio.TimerHandle | None = None
        self._dropped = 0
        self._reading = True
        self._write_paused = False
        self._out: list[bytes] | None = None  # written this pass of the loop, sent at its end
        self._drained: asyncio.Future[None] | None = None
        self._closing = False

    # -- transport events -------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports do not subclass asyncio's; the interface is the same.
        self._transport = transport = cast(asyncio.Transport, transport)
        if self._shared.draining:  # accepted as the listener closed
            transport.close()
            return
        self._shared.connections.add(self)
        self._shared.gone.clear()
        self._server = _address(transport.get_extra_info("sockname"))
        self._client = _address(transport.get_extra_info("peername"))
        self._start_idle()

    # No eof_received: the default closes, so a client gone or half-closed stops the request
    # in progress (its app gets http.disconnect), as a backend generating for no one costs
    # tokens. Lingering ends there too.

    def connection_lost(self, exc: Exception | None) -> None:  # noqa: ARG002
        self._closing = True
        for timer in (self._head_timer, self._idle_timer, self._linger):
            if timer is not None:
                timer.cancel()
        for cycle in (self._cycle, *self._queue):
            if cycle is not None:
                cycle.lost()
        if self._parsing is not None:
            self._parsing.lost()
        if self._drained is not None and not self._drained.done():
            self._drained.set_result(None)
        self._shared.closed(self)

    def pause_writing(self) -> None:
        self._write_paused = True

    def resume_writing(self) -> None:
        self._write_paused = False
        if self._drained is not None and not self._drained.done():
            self._drained.set_result(None)

    def data_received(self, data: bytes) -> None:
        if self._closing:
            self._drop(len(data))
            return
        if self._refusal is not None:
            return  # a refusal waits for the answers before it: nothing after it is parsed
        self._progress = False
        while True:
            try:
                self._parser.feed_data(data)
            except httptools.HttpParserUpgrade as upgrade:
                # llhttp ends an upgrade request at its head; it is served as the plain
                # request it also is, so the head is parsed again without the Upgrade.
                data = (
                    self._head.without_upgrade(
                        self._parser.get_method(), self._parser.get_http_version()
                    )
                    + data[upgrade.args[0] :]
                )
                self._parser = httptools.HttpRequestParser(self)
                continue
            except httptools.HttpParserCallbackError as error:
                refused = error.__context__
                if isinstance(refused, Refused):
                    self._refuse(refused.error, head_only=self._head.is_head)
                else:  # a defect of ours: never an exception out of a transport callback
                    _log.error("http_callback_failed", error=type(refused).__name__)
                    self._refuse(RouterError())
            except httptools.HttpParserError as error:
                self._refuse(self._parse_error(error), head_only=self._head.is_head)
            else:
                self._bound_partial_piece(len(data))
            return

    def _bound_partial_piece(self, size: int) -> None:
        # llhttp buffers a head piece (the target, a header, a trailer) until it is whole; a
        # piece that never ends is bounded here. A feed that made progress counts from there.
        if not self._head.open and self._parsing is None:
            return
        self._unparsed = 0 if self._progress else self._unparsed + size
        if self._head.size + self._unparsed > self._limits.max_header_bytes:
            self._refuse(too_large(self._limits.max_header_bytes).error)

    # -- parser callbacks (httptools) ---------------------------------------------------------

    def on_message_begin(self) -> None:
        if self._idle_timer is not None:  # bare CRLFs between requests do not end idleness
            self._idle_timer.cancel()
            self._idle_timer = None
        self._head.begin()
        self._unparsed = 0
        if self._head_timer is None:
            self._head_timer = self._loop.call_later(
                self._limits.header_timeout_s, self._head_too_slow
            )

    def on_url(self, url: bytes) -> None:
        self._progress = True
        self._head.add_url(url)

    def on_header(self, name: bytes, value: bytes) -> None:
        self._progress = True
        self._head.add_header(name, value)

    def on_headers_complete(self) -> None:
        self._stop_head_timer()
        parser = self._parser
        version: str = parser.get_http_version()
        method: str = parser.get_method().decode("ascii")
        self._head.complete(method, version)
        if len(self._queue) >= MAX_PIPELINED:
            raise invalid(f"more than {MAX_PIPELINED} requests sent ahead of their answers")
        if parser.should_upgrade():
            return  # llhttp ends the message here; it is parsed again without the Upgrade
        scope = self._head.scope(method, version, self._client, self._server)
        self._requests += 1
        keep_alive = (
            parser.should_keep_alive()
            and not self._shared.draining
            and self._requests < self._limits.keep_alive_max_requests
        )
        expect_100 = self._head.expect_100 and version == "1.1"  # HTTP/1.0 has no 100
        cycle = Cycle(self, scope, keep_alive=keep_alive, expect_100=expect_100)
        self._parsing = cycle
        if self._cycle is None:
            self._start(cycle)
        else:
            self._queue.append(cycle)
            self.pause_reading()  # one request ahead is enough

    def on_body(self, body: bytes) -> None:
        self._progress = True
        if self._parsing is not None:
            self._parsing.feed(body)

    def on_message_complete(self) -> None:
        if self._parsing is not None:
            self._parsing.end()
            self._parsing = None

    def _parse_error(self, error: Exception) -> RouterError:
        reason = str(error)
        if reason.startswith("Pause on PRI"):
            reason = "HTTP/2 is not served"
        return invalid(reason.rstrip(".")).error

    # -- the requests ---------------------------------------------------------------------------

    def _start(self, cycle: Cycle) -> None:
        self._cycle = cycle
        task = self._loop.create_task(self._run(cycle))
        self._shared.tasks.add(task)  # the drain waits for it, connection gone or not
        task.add_done_callback(self._shared.tasks.discard)

    async def _run(self, cycle: Cycle) -> None:
        try:
            await self._shared.app(cycle.scope, cycle.receive, cycle.send)
        except Exception:
            _log.exception("http_app_error", path=cycle.scope["path"])
            self._app_failed(cycle)
        else:
            if not cycle.response_complete:
                if not cycle.disconnected:
                    _log.error("http_app_no_response", path=cycle.scope["path"])
                self._app_failed(cycle)

    def _app_failed(self, cycle: Cycle) -> None:
        if cycle.response_complete:
            return
        if not cycle.head_on_wire and not cycle.disconnected and self._cycle is cycle:
            self._cycle = None  # its held head, if any, is dropped with it
            # 500 in the catalog's shape, then a close
            self._refuse(RouterError(), head_only=cycle.scope["method"] == "HEAD")
            return
        self.close()  # a response cut short: its framing tells the client it is incomplete

    def cycle_done(self, cycle: Cycle) -> None:
        self._cycle = None
        if not cycle.keep_alive or cycle.body_unread or self._shared.draining:
            self.close()
            return
        if self._queue:
            self._start(self._queue.popleft())
            self.resume_reading()
            return
        if self._refusal is not None:
            error, self._refusal = self._refusal, None
            self._refuse(error, head_only=self._refusal_head_only)
            return
        self.resume_reading()
        self._start_idle()

    def _refuse(self, error: RouterError, *, head_only: bool = False) -> None:
        """Answer `error` and close, after the answers owed to requests before it.

        `head_only`: the refused request is a HEAD, whose answer has no body."""
        if self._closing:
            return
        cycle, parsing = self._cycle, self._parsing
        if cycle is not None and cycle is not parsing:
            # The bytes came after a request still being answered: it is answered first,
            # with those queued before the bad bytes; one whose own body was bad never runs.
            if parsing is not None and parsing in self._queue:
                self._queue.remove(parsing)
                parsing.lost()
            self._parsing = None
            self._refusal, self._refusal_head_only = error, head_only
            self.pause_reading()
            return
        if cycle is not None:  # the bytes were its own body: it ends here, unanswered
            cycle.lost()
            self._cycle = None
            if cycle.head_on_wire:
                self.close()  # a second answer after a head already sent would not parse
                return
        self._queue.clear()
        self._stop_head_timer()
        self._parsing = None
        self.write(refusal_bytes(error, self._shared.date_line(), with_body=not head_only))
        self.close()

    def _head_too_slow(self) -> None:
        self._head_timer = None
        if not self._head.open or self._closing:
            return
        if self._cycle is not None:
            # An answer is still owed: the server is not reading (pipelined ahead), so the
            # head is timed again from now rather than blamed on the client.
            self._head_timer = self._loop.call_later(
                self._limits.header_timeout_s, self._head_too_slow
            )
            return
        self._refuse(too_slow(self._limits.header_timeout_s).error)

    # -- for Cycle --------------------------------------------------------------------------

    def write(self, data: bytes) -> None:
        """Queue `data`; what is written in one pass of the loop leaves in one send()."""
        if self._out is not None:
            self._out.append(data)
            return
        transport = self._transport
        if transport is not None and not transport.is_closing():
            self._out = [data]
            self._loop.call_soon(self._flush)

    def _flush(self) -> None:
        out = self._out
        if out is None:
            return
        self._out = None
        transport = self._transport
        if transport is not None and not transport.is_closing():
            transport.write(out[0] if len(out) == 1 else b"".join(out))

    async def drain(self) -> None:
        if self._write_paused and not self._closing:
            self._drained = self._loop.create_future()
            await self._drained

    def pause_reading(self) -> None:
        if self._reading and self._transport is not None:
            self._reading = False
            self._transport.pause_reading()

    def resume_reading(self) -> None:
        if (
            not (self._reading or self._closing or self._queue)
            and self._refusal is None
            and self._transport is not None
        ):
            self._reading = True
            self._transport.resume_reading()

    def date_line(self) -> bytes:
        return self._shared.date_line()

    # -- closing ---------------------------------------------------------------------------------

    def drain_and_close(self) -> None:
        """The server drains: close now when idle, else after the answer in progress."""
        if self._cycle is None and self._parsing is None:
            self.close()
        elif self._cycle is not None:
            self._cycle.keep_alive = False  # its head says `connection: close` if not sent yet

    def close(self) -> None:
        """Close, lingering while the client may still be sending (RFC 9112 §9.6)."""
        if self._closing or self._transport is None:
            return
        self._flush()
        self._closing = True
        for timer in (self._head_timer, self._idle_timer):
            if timer is not None:
                timer.cancel()
        transport = self._transport
        if not transport.can_write_eof():
            transport.close()
            return
        try:
            transport.write_eof()
        except (OSError, RuntimeError):
            transport.close()
            return
        self._linger = self._loop.call_later(LINGER_S, self._linger_over)
        self._reading = True
        transport.resume_reading()

    def _linger_over(self) -> None:
        transport = self._transport
        if transport is None:
            return
        if transport.get_write_buffer_size():
            transport.abort()  # a client that reads nothing does not keep what it was sent
        else:
            transport.close()

    def abort(self) -> None:
        """Reset the connection (the drain's deadline; it cancels the apps itself)."""
        if self._transport is not None:
            self._transport.abort()

    def _stop_head_timer(self) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None

    def _drop(self, size: int) -> None:
        # Lingering: read and dropped. Past the byte bound, stop reading but keep the
        # connection until the timer, so a client busy sending can still read its answer.
        self._dropped += size
        if self._dropped > LINGER_BYTES and self._reading and self._transport is not None:
            self._reading = False
            self._transport.pause_reading()

    def _start_idle(self) -> None:
        self._idle_timer = self._loop.call_later(self._limits.keep_alive_timeout_s, self._idle)

    def _idle(self) -> None:
        self._idle_timer = None
        if self._cycle is None and self._parsing is None and not self._head.open:
            self.close()


def _address(info: Any) -> tuple[str, int] | None:
    if isinstance(info, tuple) and len(info) >= 2:
        return (str(info[0]), int(info[1]))
    return None
