"""Token usage read from a backend's answer: the JSON body or the SSE stream (pure).

Finish reasons are read only when asked (tracing records them): otherwise the choices of an
answer are skipped unbuilt, as before.
"""

from __future__ import annotations

from dataclasses import dataclass

import msgspec

_DONE = b"data: [DONE]"


@dataclass(frozen=True, slots=True)
class Usage:
    prompt_tokens: int
    completion_tokens: int
    finish_reasons: tuple[str, ...] = ()

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens


class _UsageBlock(msgspec.Struct):
    prompt_tokens: int
    completion_tokens: int = 0


class _Answer(msgspec.Struct):
    """Only the usage of an answer: msgspec skips every other field without building it."""

    usage: _UsageBlock | None = None


class _Choice(msgspec.Struct):
    finish_reason: str | None = None


class _Finished(msgspec.Struct):
    """The usage and the finish reasons of an answer or a stream chunk."""

    usage: _UsageBlock | None = None
    choices: list[_Choice] | None = None

    def reasons(self) -> list[str]:
        return [c.finish_reason for c in self.choices or () if c.finish_reason]


_decoder = msgspec.json.Decoder(_Answer)
_finished_decoder = msgspec.json.Decoder(_Finished)


def usage_from_json(body: bytes, finish_reasons: bool = False) -> Usage | None:
    """The `usage` block of a response body or SSE event, or None when absent or malformed;
    with `finish_reasons`, also the choices' finish reasons."""
    try:
        if finish_reasons:
            answer = _finished_decoder.decode(body)
            usage, reasons = answer.usage, tuple(answer.reasons())
        else:
            usage, reasons = _decoder.decode(body).usage, ()
    except (msgspec.DecodeError, msgspec.ValidationError):
        return None
    return None if usage is None else Usage(usage.prompt_tokens, usage.completion_tokens, reasons)


class _Chunk(msgspec.Struct):
    usage: _UsageBlock | None = None
    choices: list[msgspec.Raw] | None = None


_chunk_decoder = msgspec.json.Decoder(_Chunk)
_FINISH = b'"finish_reason"'
_NO_FINISH = (b'"finish_reason":null', b'"finish_reason": null')


class StreamScanner:
    """Watches SSE bytes as they pass: usage, `[DONE]`, and how many data events went by.

    With `strip_usage_chunk` it also removes the usage-only chunk (`"choices": []`) that the
    router asked the backend for on a client's behalf; then complete events are forwarded
    as soon as they are complete. Otherwise bytes pass through exactly as they came. Only
    events mentioning usage are decoded, so relaying a chunk costs a split and a search.
    With `finish_reasons`, events carrying a non-null finish reason are decoded too.
    """

    __slots__ = ("_finish", "_reasons", "_strip", "_tail", "done", "events", "usage")

    def __init__(self, strip_usage_chunk: bool = False, finish_reasons: bool = False) -> None:
        self._strip = strip_usage_chunk
        self._finish = finish_reasons
        self._reasons: tuple[str, ...] = ()
        self._tail = b""
        self.usage: Usage | None = None
        self.done = False
        self.events = 0

    def feed(self, chunk: bytes) -> bytes:
        """Inspect a chunk; returns the bytes to forward to the client now."""
        data = self._tail + chunk if self._tail else chunk
        events = data.replace(b"\r\n", b"\n").split(b"\n\n")
        self._tail = events.pop()
        kept = [event for event in events if self._inspect(event)]
        if not self._strip:
            return chunk
        return b"".join(event + b"\n\n" for event in kept)

    def finish(self) -> bytes:
        """The stream ended: inspect what is left; returns any bytes still to forward."""
        tail, self._tail = self._tail, b""
        if not tail.strip():
            return tail if self._strip else b""
        keep = self._inspect(tail)
        return tail if self._strip and keep else b""

    def _inspect(self, event: bytes) -> bool:
        """Record what the event says; False when it is the usage chunk to strip."""
        for line in event.split(b"\n"):
            if not line.startswith(b"data:"):
                continue
            if line.startswith(_DONE):
                self.done = True
                continue
            self.events += 1
            if self._finish and _FINISH in line:
                self._note_finish(line)
            if b'"usage"' not in line:
                continue
            try:
                parsed = _chunk_decoder.decode(line[5:])
            except (msgspec.DecodeError, msgspec.ValidationError):
                continue
            if parsed.usage is not None:
                usage = parsed.usage
                self.usage = Usage(usage.prompt_tokens, usage.completion_tokens, self._reasons)
                if self._strip and parsed.choices == []:
                    self.events -= 1
                    return False
        return True

    def _note_finish(self, line: bytes) -> None:
        if any(null in line for null in _NO_FINISH):
            return
        try:
            reasons = _finished_decoder.decode(line[5:]).reasons()
        except (msgspec.DecodeError, msgspec.ValidationError):
            return
        if reasons:
            self._reasons += tuple(reasons)
            if self.usage is not None:  # usage came first: keep it, with the reasons
                self.usage = Usage(
                    self.usage.prompt_tokens, self.usage.completion_tokens, self._reasons
                )
