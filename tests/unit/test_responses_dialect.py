"""The Responses API's dialect: its usage names, its stream ends, its error event and where its
streamed events carry the model."""

from __future__ import annotations

import msgspec
import pytest
from hypothesis import given
from hypothesis import strategies as st

from appliance.errors import UpstreamStreamBroken
from appliance.mock.responses import ResponseEvents, plan_responses
from appliance.upstream.model_name import ModelName
from appliance.upstream.relay import error_event, relay_stream
from appliance.upstream.usage import ResponsesScanner, StreamScanner, Usage, response_usage

_PLAN = plan_responses({"model": "up", "input": "one two [mock:chunks=3]"})
_EVENTS = ResponseEvents(_PLAN, "resp-mock-1", 0)
OPENING, DELTAS, CLOSING = (
    b"".join(_EVENTS.opening()),
    b"".join(_EVENTS.delta(i) for i in range(3)),
    b"".join(_EVENTS.closing()),
)
STREAM = OPENING + DELTAS + CLOSING


def test_answer_usage_maps_input_and_output_tokens() -> None:
    """A Responses answer's input/output tokens are read as prompt/completion tokens; chat's
    field names are not read from it, nor its names from a chat answer."""
    body = b'{"object":"response","usage":{"input_tokens":7,"output_tokens":3,"total_tokens":10}}'
    assert response_usage(body) == Usage(7, 3)
    assert response_usage(b'{"usage":{"prompt_tokens":7,"completion_tokens":3}}') is None
    assert response_usage(b'{"usage":null}') is None


def test_a_whole_stream_ends_complete_with_its_usage() -> None:
    """`response.completed` ends the stream and carries its usage; the deltas are counted."""
    scanner = ResponsesScanner()
    assert scanner.feed(STREAM) == STREAM  # relayed unchanged
    assert scanner.finish() == b""
    assert (scanner.done, scanner.usage, scanner.events) == (True, Usage(3, 3), 3)


@given(st.lists(st.integers(min_value=0, max_value=len(STREAM)), max_size=12))
def test_scanner_is_indifferent_to_chunk_boundaries(cuts: list[int]) -> None:
    """However the bytes are split, the same bytes pass and the same usage and end are seen."""
    scanner, out, start = ResponsesScanner(), b"", 0
    for point in [*sorted(set(cuts)), len(STREAM)]:
        out += scanner.feed(STREAM[start:point])
        start = point
    out += scanner.finish()
    assert out == STREAM
    assert (scanner.done, scanner.usage) == (True, Usage(3, 3))


@pytest.mark.parametrize("end", ["response.failed", "response.incomplete"])
def test_failed_and_incomplete_end_a_stream_too(end: str) -> None:
    """A stream ending with `response.failed` or `.incomplete` is complete, not cut."""
    scanner = ResponsesScanner()
    scanner.feed(OPENING + DELTAS + f'event: {end}\ndata: {{"type":"{end}"}}\n\n'.encode())
    assert scanner.done
    assert scanner.usage is None


def test_a_stream_cut_before_its_end_is_not_done() -> None:
    """Deltas without an ending event, or a delta merely mentioning the end, are not done;
    `[DONE]` means nothing here and chat's scanner does not take the Responses end."""
    mention = (
        b'event: response.output_text.delta\ndata: {"type":"response.output_text.delta",'
        b'"delta":"response.completed"}\n\ndata: [DONE]\n\n'
    )
    scanner = ResponsesScanner()
    scanner.feed(OPENING + DELTAS + mention)
    chat = StreamScanner()
    chat.feed(STREAM)
    assert (scanner.done, scanner.events, chat.done) == (False, 4, False)


def test_an_event_that_is_not_a_json_object_breaks_the_stream() -> None:
    """A broken event is held back, as in chat streams."""
    scanner = ResponsesScanner()
    assert scanner.feed(OPENING + b"event: x\ndata: {broken\n\n" + DELTAS) == OPENING
    assert scanner.broken


def test_the_error_event_is_the_apis_and_openais_shape() -> None:
    """The terminal error event is `event: error` with the Responses fields and `error`."""
    event = error_event(UpstreamStreamBroken("cut"), responses=True)
    head, data = event.removesuffix(b"\n\n").split(b"\n")
    assert head == b"event: error"
    body = msgspec.json.decode(data.removeprefix(b"data: "))
    assert (body["type"], body["code"], body["message"]) == (
        "error",
        "upstream_stream_broken",
        "cut",
    )
    assert body["error"] == msgspec.json.decode(UpstreamStreamBroken("cut").body())["error"]


class _Upstream:
    """A backend's stream answer, fed from a list of chunks."""

    status, content_type = 200, "text/event-stream"

    def __init__(self, chunks: list[bytes]) -> None:
        self._chunks = chunks

    async def next_chunk(self) -> bytes:
        return self._chunks.pop(0) if self._chunks else b""

    def close(self) -> None:
        self._chunks = []


async def _relay(chunks: list[bytes]) -> tuple[bytes, list[str]]:
    outcomes: list[str] = []
    relayed = await relay_stream(
        _Upstream(chunks),  # type: ignore[arg-type]
        lambda _usage, outcome: outcomes.append(outcome),
        lambda _usage, _events: None,
        strip_usage_chunk=False,
        scanner_type=ResponsesScanner,
    )
    assert relayed.stream is not None
    return b"".join([chunk async for chunk in relayed.stream]), outcomes


async def test_relay_accepts_the_end_and_flags_a_stream_without_it() -> None:
    """A Responses stream relayed to its end is ok; one that stops before it ends with the
    error event naming the missing end, and the outcome is the stream's break."""
    body, outcomes = await _relay([OPENING, DELTAS, CLOSING])
    assert (body, outcomes) == (STREAM, ["ok"])
    body, outcomes = await _relay([OPENING, DELTAS])
    assert body.startswith(OPENING + DELTAS + b"event: error\n")
    assert b"without response.completed" in body
    assert outcomes == ["upstream_stream_broken"]


def test_streamed_events_name_the_model_asked_in_their_response() -> None:
    """`response.model` of created/completed events is renamed; deltas mentioning the upstream
    name, and chat's top-level rewrite, leave it alone."""
    name = ModelName("chat", "up")
    renamed = name.response_events(STREAM)
    events = [e for e in renamed.split(b"\n\n") if e]
    models = [
        msgspec.json.decode(e.split(b"\ndata: ")[1])["response"]["model"]
        for e in events
        if b'"response":' in e
    ]
    assert models == ["chat"] * 3
    mention = b'event: x\ndata: {"type":"x","delta":"up"}\n\n'
    assert name.response_events(mention) == mention
    assert name.events(STREAM) == STREAM
