"""Relay a backend's answer to the client unchanged: whole JSON, or SSE chunk by chunk.

A stream that breaks after the first byte cannot become an HTTP error any more, so it ends
with one SSE event in OpenAI's error shape; SDKs raise it instead of hanging.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass

from appliance.errors import RouterError, UpstreamStreamBroken
from appliance.upstream.client import UpstreamResponse
from appliance.upstream.usage import StreamScanner, Usage, usage_from_json

# Called once per relayed answer with the usage seen and an outcome: "ok", an error code,
# or "client_disconnected".
UsageCallback = Callable[[Usage | None, str], None]
# Called as a stream passes, with the usage seen so far and how many data events went by.
ProgressCallback = Callable[[Usage | None, int], None]


@dataclass(frozen=True, slots=True)
class Relayed:
    """What to answer the client: either `body` or `stream` is set."""

    status: int
    content_type: str
    body: bytes = b""
    stream: AsyncIterator[bytes] | None = None


def relay_whole(
    upstream: UpstreamResponse, body: bytes, on_done: UsageCallback, finish_reasons: bool = False
) -> Relayed:
    """A whole answer (2xx or the backend's own 4xx), passed through unchanged."""
    ok = upstream.status < 300
    usage = usage_from_json(body, finish_reasons) if ok else None
    on_done(usage, "ok" if ok else f"http_{upstream.status}")
    return Relayed(status=upstream.status, content_type=upstream.content_type, body=body)


def relay_stream(
    upstream: UpstreamResponse,
    on_done: UsageCallback,
    on_progress: ProgressCallback,
    strip_usage_chunk: bool,
    finish_reasons: bool = False,
) -> Relayed:
    scanner = StreamScanner(strip_usage_chunk, finish_reasons)
    return Relayed(
        status=upstream.status,
        content_type=upstream.content_type,
        stream=_stream(upstream, on_done, on_progress, scanner),
    )


async def _stream(
    upstream: UpstreamResponse,
    on_done: UsageCallback,
    on_progress: ProgressCallback,
    scanner: StreamScanner,
) -> AsyncIterator[bytes]:
    failure: RouterError | None = None
    try:
        async for chunk in upstream.chunks():
            out = scanner.feed(chunk)
            # Before the bytes leave: the usage record may be committed as they go out.
            on_progress(scanner.usage, scanner.events)
            if out:
                yield out
        rest = scanner.finish()
        on_progress(scanner.usage, scanner.events)
        if rest:
            yield rest
        if not scanner.done:
            failure = UpstreamStreamBroken("The backend ended the stream without [DONE].")
    except RouterError as exc:
        failure = exc
    except (asyncio.CancelledError, GeneratorExit):
        on_done(scanner.usage, "client_disconnected")
        raise
    finally:
        upstream.close()
    on_done(scanner.usage, "ok" if failure is None else failure.code)
    if failure is not None:
        yield error_event(failure)


def error_event(error: RouterError) -> bytes:
    return b"data: " + error.body() + b"\n\n"
