"""Relay a backend's answer to the client unchanged: whole JSON, or SSE chunk by chunk
(only `model` is said as the client asked, where the route renames it: upstream/model_name).

A stream's first event is read before the client is answered, so a backend that fails before
it is failed over. A stream that breaks after that cannot become an HTTP error any more, so it
ends with one SSE event in OpenAI's error shape; SDKs raise it instead of hanging. An event
that is not a JSON object is never forwarded.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass

import msgspec

from appliance.errors import RouterError, UpstreamInvalidResponse, UpstreamStreamBroken
from appliance.upstream.ports import UpstreamResponse
from appliance.upstream.usage import ResponsesScanner, StreamScanner, Usage

_encode = msgspec.json.Encoder().encode

# Called once per relayed answer with the usage seen and an outcome: "ok", an error code,
# or "client_disconnected".
UsageCallback = Callable[[Usage | None, str], None]
# Called as a stream passes, with the usage seen so far and how many data events went by.
ProgressCallback = Callable[[Usage | None, int], None]
# Rewrites complete events before they go out (the model name the client asked for).
Rewrite = Callable[[bytes], bytes]


@dataclass(frozen=True, slots=True)
class Relayed:
    """What to answer the client: either `body` or `stream` is set."""

    status: int
    content_type: str
    body: bytes = b""
    stream: AsyncIterator[bytes] | None = None


def relay_whole(
    upstream: UpstreamResponse, body: bytes, usage: Usage | None, on_done: UsageCallback
) -> Relayed:
    """A whole answer judged fit to relay (see `verdict`), passed through unchanged."""
    on_done(usage, "ok" if upstream.status < 300 else f"http_{upstream.status}")
    return Relayed(status=upstream.status, content_type=upstream.content_type, body=body)


async def relay_stream(
    upstream: UpstreamResponse,
    on_done: UsageCallback,
    on_progress: ProgressCallback,
    *,
    strip_usage_chunk: bool,
    finish_reasons: bool = False,
    rewrite: Rewrite | None = None,
    scanner_type: type[StreamScanner] = StreamScanner,
) -> Relayed:
    """The stream, once its first event is in and sound. Until then nothing has reached the
    client, so a failure raises (the forwarder fails over) instead of ending the stream."""
    scanner = scanner_type(strip_usage_chunk, finish_reasons)
    try:
        first = await _first_bytes(upstream, scanner)
    except BaseException:
        upstream.close()
        raise
    # Before the bytes leave: the usage record may be committed as they go out.
    on_progress(scanner.usage, scanner.events)
    return Relayed(
        status=upstream.status,
        content_type=upstream.content_type,
        stream=_stream(first, upstream, on_done, on_progress, scanner, rewrite=rewrite),
    )


async def _first_bytes(upstream: UpstreamResponse, scanner: StreamScanner) -> bytes:
    while chunk := await upstream.next_chunk():
        out = scanner.feed(chunk)
        if scanner.broken:
            raise _invalid_event()
        if out:
            return out
    out = scanner.finish()
    if scanner.broken:
        raise _invalid_event()
    if not out:
        raise UpstreamStreamBroken("The backend ended the stream without sending an event.")
    return out


async def _stream(
    first: bytes,
    upstream: UpstreamResponse,
    on_done: UsageCallback,
    on_progress: ProgressCallback,
    scanner: StreamScanner,
    *,
    rewrite: Rewrite | None,
) -> AsyncIterator[bytes]:
    failure: RouterError | None = None
    try:
        yield first if rewrite is None else rewrite(first)
        while not scanner.broken and (chunk := await upstream.next_chunk()):
            out = scanner.feed(chunk)
            on_progress(scanner.usage, scanner.events)
            if out:
                yield out if rewrite is None else rewrite(out)
        rest = scanner.finish()
        on_progress(scanner.usage, scanner.events)
        if rest:
            yield rest if rewrite is None else rewrite(rest)
        failure = _ending(scanner)
    except RouterError as exc:
        failure = exc
    except (asyncio.CancelledError, GeneratorExit):
        on_done(scanner.usage, "client_disconnected")
        raise
    finally:
        upstream.close()
    on_done(scanner.usage, "ok" if failure is None else failure.code)
    if failure is not None:
        yield error_event(failure, responses=isinstance(scanner, ResponsesScanner))


def _ending(scanner: StreamScanner) -> RouterError | None:
    """What a stream that stopped without an error from the connection ended with."""
    if scanner.broken:
        return _invalid_event()
    if not scanner.done:
        return UpstreamStreamBroken(f"The backend ended the stream without {scanner.END}.")
    return None


def _invalid_event() -> UpstreamInvalidResponse:
    return UpstreamInvalidResponse("The backend sent a stream event that is not a JSON object.")


def error_event(error: RouterError, *, responses: bool = False) -> bytes:
    """The stream's last event, in OpenAI's error shape. A Responses stream gets the API's own
    `error` event, which carries the same `error` object too, so SDKs raise it either way."""
    if not responses:
        return b"data: " + error.body() + b"\n\n"
    shape = {"message": error.message, "type": error.type, "param": error.param, "code": error.code}
    event = {"type": "error", "code": error.code, "message": error.message, "param": error.param}
    return b"event: error\ndata: " + _encode({**event, "error": shape}) + b"\n\n"
