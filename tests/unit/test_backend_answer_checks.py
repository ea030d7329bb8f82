"""Checks on backend answers: JSON objects only, broken stream events held back, 429 rests."""

from __future__ import annotations

import random

import pytest
from hypothesis import given
from hypothesis import strategies as st

from appliance.routing.engine import decide
from appliance.upstream.usage import NotAnObject, StreamScanner, Usage, answer_usage
from appliance.upstream.verdict import retry_after_s
from tests.unit.test_routing_engine import NONE, setup

STREAM = (
    b'data: {"choices":[{"delta":{"content":"a"}}]}\n\n'
    b": keep-alive comment\n\n"
    b'data: {"choices":[{"delta":{"content":"b"}}],"usage":null}\n\n'
    b'data: {"choices":[],"usage":{"prompt_tokens":7,"completion_tokens":2,"total_tokens":9}}\n\n'
    b"data: [DONE]\n\n"
)
BROKEN = b'data: {"id": "x", "choices": [\n\n'


@pytest.mark.parametrize(
    "body",
    [b"not json", b"", b"[1, 2]", b'"text"', b'{"id": 1} trailing', b'{"usage": 5, broken'],
)
def test_answers_that_are_not_json_objects_are_refused(body: bytes) -> None:
    """A whole answer must be a JSON object; anything else raises NotAnObject."""
    with pytest.raises(NotAnObject):
        answer_usage(body)
    with pytest.raises(NotAnObject):
        answer_usage(body, finish_reasons=True)


def test_objects_with_odd_usage_are_valid_without_usage() -> None:
    """A JSON object whose usage has the wrong shape is a valid answer with unknown usage."""
    assert answer_usage(b'{"usage": {"prompt_tokens": "3"}}') is None
    assert answer_usage(b'{"choices": [{"finish_reason": 5}]}', finish_reasons=True) is None
    assert answer_usage(b'{"usage": {"prompt_tokens": 3}}') == Usage(3, 0)


@given(st.lists(st.integers(min_value=0, max_value=len(STREAM)), max_size=12))
def test_a_sound_stream_passes_unchanged_whatever_the_chunking(cuts: list[int]) -> None:
    """Forwarding only complete events still relays every byte of a sound stream, in order."""
    scanner = StreamScanner()
    out, start = b"", 0
    for point in [*sorted(set(cuts)), len(STREAM)]:
        out += scanner.feed(STREAM[start:point])
        start = point
    out += scanner.finish()
    assert out == STREAM
    assert (scanner.usage, scanner.done, scanner.broken, scanner.events) == (
        Usage(7, 2),
        True,
        False,
        3,
    )


@pytest.mark.parametrize("strip", [False, True])
def test_a_broken_event_is_held_back_with_everything_after_it(strip: bool) -> None:
    """The events before a broken one are forwarded; it and what follows never are."""
    cut = STREAM.index(b"\n\n") + 2
    first, rest = STREAM[:cut], STREAM[cut:]
    scanner = StreamScanner(strip_usage_chunk=strip)
    assert scanner.feed(first + BROKEN[:10]) == first
    assert scanner.feed(BROKEN[10:] + rest) == b""
    assert scanner.broken
    assert scanner.feed(rest) == b""
    assert scanner.finish() == b""
    assert (scanner.events, scanner.done) == (1, False)


def test_non_object_events_and_a_broken_last_event_count_as_broken() -> None:
    """A data event that is JSON but not an object is broken, and so is a broken tail."""
    scanner = StreamScanner()
    assert scanner.feed(b"data: 42\n\n") == b""
    assert scanner.broken
    tail = StreamScanner()
    assert tail.feed(b'data: {"a": 1}\n\ndata: {"b": ') == b'data: {"a": 1}\n\n'
    assert tail.finish() == b""
    assert tail.broken


def test_multi_line_data_crlf_and_empty_keepalives_are_sound() -> None:
    """Data split over several lines is joined before the check; CRLF framing becomes LF;
    an empty data line is a keep-alive, not a broken event."""
    scanner = StreamScanner()
    sent = b'event: chunk\r\ndata: {"a":\r\ndata: 1}\r\n\r\ndata:\r\n\r\ndata: [DONE]\r\n\r\n'
    assert scanner.feed(sent) == sent.replace(b"\r\n", b"\n")
    assert (scanner.broken, scanner.done, scanner.events) == (False, True, 1)


def test_usage_chunk_is_still_stripped() -> None:
    """With strip_usage_chunk the usage-only chunk goes, and usage is still read."""
    scanner = StreamScanner(strip_usage_chunk=True)
    out = scanner.feed(STREAM)
    assert b'"usage":{' not in out
    assert out.endswith(b"data: [DONE]\n\n")
    assert scanner.usage == Usage(7, 2)


@pytest.mark.parametrize(
    ("value", "seconds"),
    [(None, None), ("7", 7.0), (" 2.5 ", 2.5), ("0", None), ("-3", None), ("soon", None),
     ("Wed, 21 Oct 2015 07:28:00 GMT", None), ("inf", None), ("nan", None)],
)  # fmt: skip
def test_retry_after_seconds(value: str | None, seconds: float | None) -> None:
    """Retry-After is read as positive seconds; anything else counts as absent."""
    assert retry_after_s(value) == seconds


def test_a_busy_backend_gets_traffic_only_when_all_are_busy() -> None:
    """After a 429 with Retry-After, a backend is skipped until then unless every one is busy;
    the rest is capped at max_ejection_s and frees the slot without a health failure."""
    route, reg = setup()
    reg.begin("b0")
    reg.end_busy("b0", 5.0, now=0.0)
    assert reg.get("b0").inflight == 0
    assert reg.get("b0").consecutive_failures == 0

    rng = random.Random(1)
    picks = [decide(route, reg, NONE, tried=(), now=1.0, rng=rng) for _ in range(50)]
    assert {d.target.backend_id for d in picks} == {"b1", "b2"}
    last = decide(route, reg, NONE, tried=("b1", "b2"), now=1.0, rng=rng)
    assert (last.target.backend_id, last.panic) == ("b0", False)  # the only one left
    assert reg.get("b0").busy(4.9)
    assert not reg.get("b0").busy(5.0)
    reg.end_busy("b1", 10_000.0, now=0.0)
    assert reg.get("b1").busy_until == reg.policy.max_ejection_s
