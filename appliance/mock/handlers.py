"""aiohttp handlers of the inference endpoints: faults, JSON answers and SSE streams."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Mapping
from contextvars import ContextVar
from typing import Final, Protocol

import msgspec
from aiohttp import web

from appliance.mock import responses, shapes
from appliance.mock.behaviour import (
    Plan,
    piece,
    plan_chat,
    plan_completion,
    plan_embeddings,
    reply_text,
)
from appliance.mock.directives import Directives
from appliance.mock.errors import MockError, injected
from appliance.mock.state import MockState

BAD_JSON: Final = object()  # sentinel: the body was missing or not JSON
# The middleware decodes the body once (it logs it too) and hands it to the handler, which runs
# in the same task; a ContextVar needs no per-request dict key and works on every aiohttp 3.x.
REQUEST_BODY: Final[ContextVar[object]] = ContextVar("mock_request_body", default=BAD_JSON)
DONE: Final = b"data: [DONE]\n\n"
SSE_HEADERS: Final = {"Content-Type": "text/event-stream", "Cache-Control": "no-cache"}
_GARBAGE_JSON: Final = b'{"id": "mock-garbage", "choices": [ this is not JSON'
_GARBAGE_EVENT: Final = b'data: {"id": "mock-garbage", "choices": [\n\n'
_GARBAGE_SSE: Final = _GARBAGE_EVENT + DONE
_REDIRECT_TO: Final = "/_mock/moved"  # answers 404: a redirect must not be followed
_encode: Final = msgspec.json.Encoder().encode


def json_response(
    doc: object, status: int = 200, headers: Mapping[str, str] | None = None
) -> web.Response:
    """A JSON response encoded by msgspec (several times faster than the stdlib)."""
    return web.Response(
        body=_encode(doc), status=status, headers=headers, content_type="application/json"
    )


def error_response(error: MockError, retry_after: int | None = None) -> web.Response:
    """An OpenAI-shaped error; 429s carry Retry-After like the real service (`retry_after`
    seconds, default 1; 0 leaves the header out)."""
    seconds = 1 if retry_after is None else retry_after
    headers = {"Retry-After": str(seconds)} if error.status == 429 and seconds else None
    return json_response(error.body(), error.status, headers)


def redirect_response(status: int) -> web.Response:
    """A 3xx pointing elsewhere, as a misconfigured backend URL (http vs https) answers."""
    return web.Response(status=status, headers={"Location": _REDIRECT_TO}, text="Moved\n")


def request_body() -> object:
    """The decoded JSON body; a missing or undecodable body is OpenAI's 400."""
    body = REQUEST_BODY.get()
    if body is BAD_JSON:
        raise MockError(
            400,
            "We could not parse the JSON body of your request. (HINT: This likely means you "
            "aren't using your HTTP library correctly. The OpenAI API expects a JSON payload.)",
        )
    return body


def _event(doc: object) -> bytes:
    return b"data: " + _encode(doc) + b"\n\n"


class Inference:
    """POST /v1/chat/completions, /v1/completions, /v1/embeddings and /v1/responses."""

    def __init__(self, state: MockState) -> None:
        self._state = state

    async def chat(self, request: web.Request) -> web.StreamResponse:
        """POST /v1/chat/completions."""
        return await self._complete(request, plan_chat, "chatcmpl")

    async def completions(self, request: web.Request) -> web.StreamResponse:
        """POST /v1/completions."""
        return await self._complete(request, plan_completion, "cmpl")

    async def responses(self, request: web.Request) -> web.StreamResponse:
        """POST /v1/responses."""
        return await self._complete(request, responses.plan_responses, "resp")

    async def embeddings(self, _request: web.Request) -> web.StreamResponse:
        """POST /v1/embeddings."""
        try:
            plan = plan_embeddings(request_body(), self._state.config.directives)
        except MockError as exc:
            return error_response(exc)
        fault = await self._faults(plan.directives, stream=False)
        return fault if fault is not None else json_response(shapes.embeddings(plan))

    async def _complete(
        self, request: web.Request, planner: Callable[[object, str], Plan], prefix: str
    ) -> web.StreamResponse:
        try:
            plan = planner(request_body(), self._state.config.directives)
        except MockError as exc:
            return error_response(exc)
        fault = await self._faults(plan.directives, stream=plan.stream)
        if fault is not None:
            return fault
        rid, created = self._state.next_id(prefix), int(time.time())
        if plan.stream:
            return await self._stream(request, plan, rid, created)
        if plan.kind == "responses":
            return json_response(responses.response(plan, rid, created))
        text = reply_text(plan.completion_tokens)
        return json_response(shapes.completion(plan, rid, created, text))

    async def _faults(self, directives: Directives, *, stream: bool) -> web.Response | None:
        """Apply hang, latency and failure faults; a response means "answer with this"."""
        state = self._state
        if directives.hang:
            state.stats.hangs += 1
            # Never set: only the client going away (handler cancellation) or stop() ends this.
            await asyncio.Event().wait()
        latency = directives.latency_ms
        if latency is None:
            latency = state.config.latency_ms
        if latency > 0:
            await asyncio.sleep(latency / 1000.0)
        if directives.status is not None:
            if directives.status < 400:
                return redirect_response(directives.status)
            why = f"[mock:status={directives.status}] directive"
            return error_response(injected(directives.status, why), directives.retry_after)
        if directives.garbage:
            # 200 with the right content type but a body no parser accepts.
            if stream:
                return web.Response(body=_GARBAGE_SSE, headers=SSE_HEADERS)
            return web.Response(body=_GARBAGE_JSON, content_type="application/json")
        if state.should_fail():
            state.stats.failures_injected += 1
            status = state.config.fail_status
            return error_response(injected(status, "fail_rate"), directives.retry_after)
        return None

    def _gap(self, directives: Directives) -> float:
        """Seconds between stream chunks: the directive, else the tokens_per_s pacing."""
        if directives.chunk_delay_ms is not None:
            return directives.chunk_delay_ms / 1000.0
        rate = self._state.config.tokens_per_s
        return 1.0 / rate if rate > 0 else 0.0

    async def _stream(
        self, request: web.Request, plan: Plan, rid: str, created: int
    ) -> web.StreamResponse:
        response = web.StreamResponse(headers=SSE_HEADERS)
        self._state.stats.streams_started += 1
        try:
            await response.prepare(request)
            events: _Events = (
                responses.ResponseEvents(plan, rid, created)
                if plan.kind == "responses"
                else _ChatEvents(plan, rid, created)
            )
            completed = await self._pump(response, plan, events)
        except asyncio.CancelledError:
            # handler_cancellation: aiohttp cancels us when the client disconnects.
            self._state.stats.streams_cancelled += 1
            raise
        except ConnectionResetError:
            # The write noticed the closed socket before the cancellation arrived.
            self._state.stats.streams_cancelled += 1
            return response
        if completed:
            self._state.stats.streams_completed += 1
        else:
            self._state.stats.streams_broken += 1
            # close() flushes what was written, then FINs without the chunked terminator:
            # the peer sees a truncated body, exactly like a backend process dying mid-stream.
            if request.transport is not None:
                request.transport.close()
        return response

    async def _pump(self, response: web.StreamResponse, plan: Plan, events: _Events) -> bool:
        """Write the chunks; False when `break_after` says to cut the stream instead of ending."""
        directives = plan.directives
        gap = self._gap(directives)
        for event in events.opening():
            await response.write(event)
        for index in range(plan.completion_tokens):
            if index in (directives.break_after, directives.garbage_after, directives.stall_after):
                break
            if index and gap:
                await asyncio.sleep(gap)
            # One write per chunk: aiohttp hands each to the transport at once (no buffering),
            # so a proxy can observe chunk-by-chunk delivery.
            await response.write(events.delta(index))
        return await self._end(response, plan, events)

    async def _end(self, response: web.StreamResponse, plan: Plan, events: _Events) -> bool:
        """The stream's end: cut (`break_after`), a broken event, silence, or the closing
        events (chat: usage and [DONE])."""
        directives = plan.directives
        if directives.break_after is not None:
            return False
        if directives.garbage_after is not None:
            await response.write(_GARBAGE_SSE)
            return True
        if directives.stall_after is not None:
            self._state.stats.hangs += 1
            await asyncio.Event().wait()  # never set: only the client going away ends this
        for event in events.closing():
            await response.write(event)
        return True


class _Events(Protocol):
    """The SSE events of one stream, in order: opening, one delta per token, closing."""

    def opening(self) -> list[bytes]: ...
    def delta(self, index: int) -> bytes: ...
    def closing(self) -> list[bytes]: ...


class _ChatEvents:
    """Chat and text completion chunks; usage (when asked) and `[DONE]` close the stream."""

    def __init__(self, plan: Plan, rid: str, created: int) -> None:
        self._plan, self._rid, self._created = plan, rid, created

    def opening(self) -> list[bytes]:
        return []

    def delta(self, index: int) -> bytes:
        return _event(shapes.chunk(self._plan, self._rid, self._created, index, piece(index)))

    def closing(self) -> list[bytes]:
        if not self._plan.include_usage:
            return [DONE]
        return [_event(shapes.usage_chunk(self._plan, self._rid, self._created)), DONE]
