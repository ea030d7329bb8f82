"""Token usage read from a backend's answer: the JSON body or the SSE stream (pure)."""

from __future__ import annotations

from dataclasses import dataclass

import msgspec

_DONE = b"data: [DONE]"


@dataclass(frozen=True, slots=True)
class Usage:
    prompt_tokens: int
    completion_tokens: int

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens


class _UsageBlock(msgspec.Struct):
    prompt_tokens: int
    completion_tokens: int = 0


class _Answer(msgspec.Struct):
    """Only the usage of an answer: msgspec skips every other field without building it."""

    usage: _UsageBlock | None = None


_decoder = msgspec.json.Decoder(_Answer)


def usage_from_json(body: bytes) -> Usage | None:
    """The `usage` block of a response body or SSE event, or None when absent or malformed."""
    try:
        usage = _decoder.decode(body).usage
    except (msgspec.DecodeError, msgspec.ValidationError):
        return None
    return None if usage is None else Usage(usage.prompt_tokens, usage.completion_tokens)


class StreamScanner:
    """Watches SSE bytes as they pass: the last usage seen and whether `[DONE]` arrived.

    Only complete events are inspected and only those mentioning usage are decoded, so
    relaying a chunk costs a split and a substring search.
    """

    __slots__ = ("_tail", "done", "usage")

    def __init__(self) -> None:
        self._tail = b""
        self.usage: Usage | None = None
        self.done = False

    def feed(self, chunk: bytes) -> None:
        data = self._tail + chunk if self._tail else chunk
        events = data.replace(b"\r\n", b"\n").split(b"\n\n")
        self._tail = events.pop()
        for event in events:
            self._inspect(event)

    def finish(self) -> None:
        if self._tail.strip():
            self._inspect(self._tail)
        self._tail = b""

    def _inspect(self, event: bytes) -> None:
        for line in event.split(b"\n"):
            if line.startswith(_DONE):
                self.done = True
            elif b'"usage"' in line and line.startswith(b"data:"):
                found = usage_from_json(line[5:])
                if found is not None:
                    self.usage = found
