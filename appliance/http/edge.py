"""ASGI middleware at the edge: request id, body size and read deadline, metrics, access log.

The body is read here, bounded in size and time, before Quart sees the request: one place
for every server engine (hypercorn bounds neither). Quart then gets the buffered
body in one message; later `receive()` calls go to the server so disconnects still arrive.
"""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import Awaitable, Callable, MutableMapping
from dataclasses import dataclass
from typing import Any

from appliance.errors import (
    HeadersTooLarge,
    InvalidRequest,
    PayloadTooLarge,
    RequestTimeout,
    RouterError,
)
from appliance.http.context import CONTEXT_KEY, RequestContext
from appliance.http.ids import RecordIds
from appliance.http.listeners import ListenerSplit
from appliance.telemetry.metrics import Metrics
from appliance.telemetry.spans import Tracing

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]
AccessLog = Callable[[RequestContext], None]
UsageHook = Callable[[RequestContext], Awaitable[None]]

_SANE_REQUEST_ID = re.compile(rb"^[A-Za-z0-9._:\-]{1,128}$")
# W3C trace context: a traceparent of a known shape (future versions may append fields) and
# a bounded tracestate; anything else is not passed on.
_TRACEPARENT = re.compile(rb"^[0-9a-f]{2}-[0-9a-f]{32}-[0-9a-f]{16}-[0-9a-f]{2}(-[!-~]{0,64})?$")
_TRACESTATE = re.compile(rb"^[ -~]{1,512}$")
_BODY_METHODS = frozenset({"POST", "PUT", "PATCH", "DELETE"})
_SCANNED = frozenset({b"x-request-id", b"content-length", b"traceparent", b"tracestate"})
_BAD_LENGTH = -1


@dataclass(frozen=True, slots=True)
class EdgeLimits:
    max_body_bytes: int
    body_read_timeout_s: float
    max_header_bytes: int


class EdgeMiddleware:
    def __init__(
        self,
        app: ASGIApp,
        limits: EdgeLimits,
        metrics: Metrics,
        access_log: AccessLog,
        *,
        usage_hook: UsageHook | None = None,
        tracing: Tracing | None = None,
        listeners: ListenerSplit | None = None,
    ) -> None:
        self._app = app
        self._listeners = listeners
        self._limits = limits
        self._metrics = metrics
        self._access_log = access_log
        self._usage_hook = usage_hook
        self._tracing = tracing
        self._ids = RecordIds()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self._app(scope, receive, send)
            return
        started = time.perf_counter()
        head = _scan_headers(scope["headers"])
        context = self._context(scope, head)
        scope[CONTEXT_KEY] = context
        rid_header = (b"x-request-id", context.request_id.encode("ascii"))
        self._metrics.request_started()  # ended by _finish, which every path reaches

        async def send_with_id(message: Message) -> None:
            if message["type"] == "http.response.start":
                _on_start(context, message)
                message["headers"] = [*message.get("headers", ()), rid_header]
            elif message["type"] == "http.response.body":
                await self._before_body(context, message)
            await send(message)
            if message["type"] == "http.response.body" and not message.get("more_body", False):
                self._finish(context, started)

        try:
            admitted = await self._admit(scope, head, context, receive)
            if admitted is None:
                return  # the client left before sending its body; nobody to answer
            await self._app(scope, admitted, send_with_id)
        except RouterError as error:
            context.outcome = error.code
            await _send_error(send_with_id, error)
        finally:
            await self._close(context, started)

    async def _admit(
        self, scope: Scope, head: _Head, context: RequestContext, receive: Receive
    ) -> Receive | None:
        """The request's receive, its body read and bounded; None if the client left first.
        Raises the RouterError to answer with instead of the app."""
        if head.size > self._limits.max_header_bytes:
            raise HeadersTooLarge(
                f"The request headers exceed {self._limits.max_header_bytes} bytes."
            )
        if scope["method"] in _BODY_METHODS:
            body = await self._read_body(head.content_length, receive)
            if body is None:
                return None
            context.body = body
            receive = _replay(body, receive)
        # After the body: the connection stays usable for the client's next request.
        if self._listeners is not None and (refused := self._listeners.refusal(scope)):
            raise refused
        return receive

    def _context(self, scope: Scope, head: _Head) -> RequestContext:
        # Record ids must be unique whatever clients send: a reused client x-request-id must
        # not make two requests look like one to billing's de-duplication.
        record_id = self._ids()
        request_id = head.request_id or record_id
        context = RequestContext(request_id, scope["method"], scope["path"], record_id)
        context.started_at = time.time()
        context.traceparent, context.tracestate = head.traceparent, head.tracestate
        if self._tracing is not None:
            context.trace = self._tracing.start(context, head.traceparent, head.tracestate)
        return context

    async def _before_body(self, context: RequestContext, message: Message) -> None:
        """The usage record is committed before the last byte (or `[DONE]`) goes out."""
        body: bytes = message.get("body", b"")
        if body and context.first_byte_at is None:
            context.first_byte_at = time.time()
            context.first_byte_perf = time.perf_counter()
        context.response_bytes += len(body)
        if not context.record_usage or context.recorded:
            return
        # The last byte a client needs: the end of a sized body (Quart sends it before an
        # empty closing message), `[DONE]` in a stream, or the closing message itself.
        last = (
            not message.get("more_body", False)
            or (
                context.content_length is not None
                and context.response_bytes >= context.content_length
            )
            or (context.event_stream and b"data: [DONE]" in body)
        )
        if last:
            await self._record(context)

    async def _record(self, context: RequestContext) -> None:
        context.recorded = True
        if self._usage_hook is not None:
            await self._usage_hook(context)

    async def _close(self, context: RequestContext, started: float) -> None:
        try:
            for cleanup in context.cleanups:
                cleanup()
            if context.record_usage and not context.recorded:
                # The client left before the end: the record says what it got.
                context.client_disconnected = True
                await self._record(context)
        finally:
            if context.duration_s == 0.0:
                # The response never completed (client gone, task cancelled): still count it,
                # and end its in-flight count even when writing the record failed.
                self._finish(context, started, default_outcome="client_disconnected")

    def _finish(self, context: RequestContext, started: float, default_outcome: str = "") -> None:
        context.duration_s = time.perf_counter() - started or 1e-9
        if default_outcome and context.outcome == "ok":
            context.outcome = default_outcome
        self._metrics.observe_request(
            context.path, context.method, context.status or 499, context.duration_s
        )
        if context.first_byte_perf is not None:
            context.ttft_s = context.first_byte_perf - started
        if context.model_known and context.model is not None:
            self._metrics.observe_model(context.org or "", context.model, context.status or 499)
            if context.attempts:
                _observe_forwarded(self._metrics, context, context.model, started)
        self._access_log(context)
        if context.trace is not None:
            context.trace.finish()

    async def _read_body(self, declared: int | None, receive: Receive) -> bytes | None:
        limit = self._limits.max_body_bytes
        if declared == _BAD_LENGTH:
            raise InvalidRequest("The Content-Length header is not a number.")
        if declared is not None and declared > limit:
            raise PayloadTooLarge(f"The request body is {declared} bytes; the limit is {limit}.")
        parts: list[bytes] = []
        size = 0
        try:
            async with asyncio.timeout(self._limits.body_read_timeout_s):
                while True:
                    message = await receive()
                    if message["type"] == "http.disconnect":
                        return None
                    chunk: bytes = message.get("body", b"")
                    size += len(chunk)
                    if size > limit:
                        raise PayloadTooLarge(f"The request body exceeds {limit} bytes.")
                    parts.append(chunk)
                    if not message.get("more_body", False):
                        break
        except TimeoutError:
            raise RequestTimeout(
                f"The request body did not arrive within {self._limits.body_read_timeout_s:g} s."
            ) from None
        return b"".join(parts)


def _observe_forwarded(
    metrics: Metrics, context: RequestContext, model: str, started: float
) -> None:
    """Router overhead and time to first token of a request a backend served.

    `model` was routed, so it is a configured one: a bounded label. A stream's overhead is
    counted up to its first byte; after that the router only passes chunks along while the
    backend generates, and timing each chunk would cost more than it tells.
    """
    if not context.event_stream:
        metrics.observe_forwarded(model, context.duration_s - context.upstream_s, None)
    elif context.first_byte_perf is not None:
        first = context.first_byte_perf - started
        metrics.observe_forwarded(model, first - context.upstream_s, first)


def _on_start(context: RequestContext, message: Message) -> None:
    context.status = message["status"]
    for name, value in message.get("headers", ()):
        if name == b"content-type":
            context.event_stream = value.startswith(b"text/event-stream")
        elif name == b"content-length" and value.isdigit():
            context.content_length = int(value)


def _replay(body: bytes, receive: Receive) -> Receive:
    sent = False

    async def replay() -> Message:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()

    return replay


async def _send_error(send: Send, error: RouterError) -> None:
    body = error.body()
    headers = [
        (b"content-type", b"application/json"),
        (b"content-length", str(len(body)).encode()),
        *((k.encode(), v.encode()) for k, v in error.headers().items()),
    ]
    if error.status in (408, 413, 431):
        headers.append((b"connection", b"close"))  # the unread body makes the connection unusable
    await send({"type": "http.response.start", "status": error.status, "headers": headers})
    await send({"type": "http.response.body", "body": body, "more_body": False})


@dataclass(slots=True)  # not frozen: a frozen init costs a setattr call per field per request
class _Head:
    request_id: str | None
    size: int
    content_length: int | None
    traceparent: str | None
    tracestate: str | None


def _scan_headers(headers: list[tuple[bytes, bytes]]) -> _Head:
    """One pass over the headers: a sane client request id, wire size, declared body length,
    W3C trace context."""
    request_id: str | None = None
    content_length: int | None = None
    traceparent: bytes | None = None
    tracestate: bytes | None = None
    # Size counted as on the wire ("name: value\r\n"): the parser only bounds incomplete heads.
    size = 0
    for name, value in headers:
        size += len(name) + len(value) + 4
        if name not in _SCANNED:  # one set lookup for the usual header: cheaper than a chain
            continue
        if name == b"x-request-id":
            if _SANE_REQUEST_ID.match(value):
                request_id = value.decode("ascii")
        elif name == b"content-length":
            content_length = int(value) if value.isdigit() else _BAD_LENGTH
        elif name == b"traceparent":
            traceparent = value
        else:
            tracestate = value
    if traceparent is None:
        return _Head(request_id, size, content_length, None, None)
    return _Head(request_id, size, content_length, *parse_trace_context(traceparent, tracestate))


def parse_trace_context(
    traceparent: bytes, tracestate: bytes | None
) -> tuple[str | None, str | None]:
    """The client's trace context when well formed; tracestate only with a valid traceparent."""
    if not _TRACEPARENT.match(traceparent):
        return None, None
    state = tracestate.decode("ascii") if tracestate and _TRACESTATE.match(tracestate) else None
    return traceparent.decode("ascii"), state
