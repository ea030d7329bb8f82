"""Usage extraction from JSON bodies and SSE streams split at any byte."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from appliance.upstream.usage import StreamScanner, Usage, usage_from_json

STREAM = (
    b'data: {"choices":[{"delta":{"content":"a"}}]}\n\n'
    b'data: {"choices":[{"delta":{"content":"b"}}],"usage":null}\n\n'
    b'data: {"choices":[],"usage":{"prompt_tokens":7,"completion_tokens":2,"total_tokens":9}}\n\n'
    b"data: [DONE]\n\n"
)


def test_usage_from_json() -> None:
    """The usage block of a JSON answer is read; absent or malformed gives None."""
    assert usage_from_json(b'{"usage":{"prompt_tokens":3,"completion_tokens":4}}') == Usage(3, 4)
    assert usage_from_json(b'{"usage":{"prompt_tokens":3}}') == Usage(3, 0)
    assert usage_from_json(b'{"id":"x"}') is None
    assert usage_from_json(b"not json") is None
    assert usage_from_json(b'{"usage":{"prompt_tokens":"3"}}') is None


def test_scanner_sees_usage_and_done() -> None:
    """A whole stream yields the final usage and [DONE]."""
    scanner = StreamScanner()
    scanner.feed(STREAM)
    scanner.finish()
    assert scanner.usage == Usage(7, 2)
    assert scanner.done


@given(st.lists(st.integers(min_value=0, max_value=len(STREAM)), max_size=12))
def test_scanner_is_indifferent_to_chunk_boundaries(cuts: list[int]) -> None:
    """However the bytes are split, the scanner reads the same usage and [DONE]."""
    points = sorted(set(cuts))
    scanner = StreamScanner()
    start = 0
    for point in [*points, len(STREAM)]:
        scanner.feed(STREAM[start:point])
        start = point
    scanner.finish()
    assert scanner.usage == Usage(7, 2)
    assert scanner.done


def test_scanner_without_done() -> None:
    """A stream cut before [DONE] is reported as not done."""
    scanner = StreamScanner()
    scanner.feed(STREAM[:60])
    scanner.finish()
    assert not scanner.done
    assert scanner.usage is None


def test_scanner_handles_crlf() -> None:
    """CRLF-framed events are parsed too."""
    scanner = StreamScanner()
    scanner.feed(STREAM.replace(b"\n", b"\r\n"))
    scanner.finish()
    assert scanner.done
    assert scanner.usage == Usage(7, 2)


FINISHING = (
    b'data: {"choices":[{"delta":{"content":"a"},"finish_reason":null}]}\n\n'
    b'data: {"choices":[{"delta":{},"finish_reason": "length"}]}\n\n'
    b'data: {"choices":[],"usage":{"prompt_tokens":7,"completion_tokens":2}}\n\n'
    b"data: [DONE]\n\n"
)


def test_finish_reasons_are_read_only_when_asked() -> None:
    """Finish reasons of a JSON answer (for tracing) come with its usage, and only on demand."""
    body = (
        b'{"choices":[{"message":{"content":"x"},"finish_reason":"stop"},'
        b'{"finish_reason":"length"}],"usage":{"prompt_tokens":3,"completion_tokens":4}}'
    )
    assert usage_from_json(body, finish_reasons=True) == Usage(3, 4, ("stop", "length"))
    assert usage_from_json(body) == Usage(3, 4)
    assert usage_from_json(b'{"choices":[{"finish_reason":"stop"}]}', True) is None


def test_scanner_reads_finish_reasons_before_or_after_usage() -> None:
    """A stream's finish reason joins its usage whichever event comes first; null ones and
    streams not asked for them give none."""
    asked = StreamScanner(finish_reasons=True)
    asked.feed(FINISHING)
    assert asked.usage == Usage(7, 2, ("length",))
    usage_first = FINISHING.split(b"\n\n")
    reordered = b"\n\n".join([usage_first[0], usage_first[2], usage_first[1], *usage_first[3:]])
    late = StreamScanner(finish_reasons=True)
    late.feed(reordered)
    assert late.usage == Usage(7, 2, ("length",))
    plain = StreamScanner()
    plain.feed(FINISHING)
    assert plain.usage == Usage(7, 2)
