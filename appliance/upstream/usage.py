"""Token usage read from a backend's answer: the JSON body or the SSE stream (pure)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import msgspec

_decoder = msgspec.json.Decoder()
_DONE = b"data: [DONE]"


@dataclass(frozen=True, slots=True)
class Usage:
    prompt_tokens: int
    completion_tokens: int

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens


def usage_from_json(body: bytes) -> Usage | None:
    """The `usage` block of a non-streaming response, or None when absent or malformed."""
    try:
        document = _decoder.decode(body)
    except msgspec.DecodeError:
        return None
    return _usage_of(document)


def _usage_of(document: Any) -> Usage | None:
    if not isinstance(document, dict):
        return None
    usage = document.get("usage")
    if not isinstance(usage, dict):
        return None
    prompt = usage.get("prompt_tokens")
    completion = usage.get("completion_tokens", 0)
    if not isinstance(prompt, int) or not isinstance(completion, int):
        return None
    return Usage(prompt, completion)


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
                try:
                    found = _usage_of(_decoder.decode(line[5:]))
                except msgspec.DecodeError:
                    continue
                if found is not None:
                    self.usage = found
