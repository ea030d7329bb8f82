"""Token usage read from a backend's answer: the JSON body or the SSE stream (pure).

Finish reasons are read only when asked (tracing records them): otherwise the choices of an
answer are skipped unbuilt, as before. The Responses API says `input_tokens` and
`output_tokens`: they are read as prompt and completion tokens by decoders of their own, so
the chat decoders stay as they were.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TypeVar

import msgspec

_T = TypeVar("_T")


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


class _AnyObject(msgspec.Struct):
    """Any JSON object: msgspec checks the syntax and skips every field without building it."""


_decoder = msgspec.json.Decoder(_Answer)
_finished_decoder = msgspec.json.Decoder(_Finished)
_object_decoder = msgspec.json.Decoder(_AnyObject)


class NotAnObject(ValueError):
    """A backend's answer or stream event that is not a JSON object."""


def _decode_object(decoder: msgspec.json.Decoder[_T], data: bytes) -> _T | None:
    """`data` decoded; None for a JSON object whose fields are not what the decoder expects;
    raises NotAnObject when it is not a JSON object at all."""
    try:
        return decoder.decode(data)
    except msgspec.ValidationError:
        pass  # a wrong field type stops the decoder early: check the rest is JSON
    except msgspec.DecodeError:
        raise NotAnObject from None
    try:
        _object_decoder.decode(data)
    except msgspec.DecodeError:
        raise NotAnObject from None
    return None


def answer_usage(body: bytes, finish_reasons: bool = False) -> Usage | None:
    """The `usage` block of a whole answer (None when absent or malformed); with
    `finish_reasons`, also the choices' finish reasons. Raises NotAnObject when the body is
    not a JSON object: the same single decode reads the usage and checks the body."""
    if finish_reasons:
        answer = _decode_object(_finished_decoder, body)
        if answer is None or answer.usage is None:
            return None
        usage, reasons = answer.usage, tuple(answer.reasons())
    else:
        plain = _decode_object(_decoder, body)
        if plain is None or plain.usage is None:
            return None
        usage, reasons = plain.usage, ()
    return Usage(usage.prompt_tokens, usage.completion_tokens, reasons)


def usage_from_json(body: bytes, finish_reasons: bool = False) -> Usage | None:
    """Like `answer_usage`, but None for a body that is not a JSON object."""
    try:
        return answer_usage(body, finish_reasons)
    except NotAnObject:
        return None


class _ResponseUsage(msgspec.Struct):
    input_tokens: int
    output_tokens: int = 0


class _Response(msgspec.Struct):
    """Only the usage of a Responses API answer (a `response` object)."""

    usage: _ResponseUsage | None = None

    def read(self) -> Usage | None:
        usage = self.usage
        return None if usage is None else Usage(usage.input_tokens, usage.output_tokens)


_response_decoder = msgspec.json.Decoder(_Response)


def response_usage(body: bytes, finish_reasons: bool = False) -> Usage | None:
    """`answer_usage` for a Responses API answer (finish reasons: the API has none)."""
    del finish_reasons
    answer = _decode_object(_response_decoder, body)
    return None if answer is None else answer.read()


class _Chunk(msgspec.Struct):
    usage: _UsageBlock | None = None
    choices: list[msgspec.Raw] | None = None


_chunk_decoder = msgspec.json.Decoder(_Chunk)
_USAGE = b'"usage"'
_FINISH = b'"finish_reason"'
_NO_FINISH = (b'"finish_reason":null', b'"finish_reason": null')
# What `_inspect` says of an event.
_KEEP, _DROP, _BROKEN = 0, 1, 2


class StreamScanner:
    """Watches SSE as it passes: usage, `[DONE]`, how many data events went by, and whether
    each one is a JSON object.

    Only complete events are forwarded, so an event found broken never reaches the client:
    `feed` returns the events before it, and sets `broken`. With `strip_usage_chunk` the
    usage-only chunk (`"choices": []`) that the router asked the backend for on a client's
    behalf is removed too; otherwise events pass exactly as they came (CRLF made LF). Each
    data event is decoded once: into an empty Struct (a syntax check that builds nothing),
    or, when it mentions usage (or a finish reason, when asked), into the fields wanted.
    """

    END = "[DONE]"  # what a complete stream ends with, as error messages say it

    __slots__ = (
        "_finish",
        "_reasons",
        "_strip",
        "_tail",
        "broken",
        "done",
        "events",
        "usage",
    )

    def __init__(self, strip_usage_chunk: bool = False, finish_reasons: bool = False) -> None:
        self._strip = strip_usage_chunk
        self._finish = finish_reasons
        self._reasons: tuple[str, ...] = ()
        self._tail = b""
        self.usage: Usage | None = None
        self.done = False
        self.broken = False  # an event was not a JSON object: nothing after it is forwarded
        self.events = 0

    def feed(self, chunk: bytes) -> bytes:
        """Inspect a chunk; returns the bytes to forward to the client now."""
        if self.broken:
            return b""
        data = self._tail + chunk if self._tail else chunk
        if b"\r" in data:
            data = data.replace(b"\r\n", b"\n")
        events = data.split(b"\n\n")
        self._tail = events.pop()
        for index, event in enumerate(events):
            verdict = self._inspect(event)
            if verdict != _KEEP:
                return self._filtered(events, index, verdict)
        return data[: len(data) - len(self._tail)] if self._tail else data

    def finish(self) -> bytes:
        """The stream ended: inspect what is left; returns any bytes still to forward."""
        tail, self._tail = self._tail, b""
        if self.broken or not tail.strip():
            return b""
        verdict = self._inspect(tail)
        if verdict == _BROKEN:
            self.broken = True
        return tail if verdict == _KEEP else b""

    def _filtered(self, events: list[bytes], first: int, verdict: int) -> bytes:
        """The slow path: events[first] is dropped or broken; join what is forwarded."""
        kept = events[:first]
        for event in events[first + 1 :] if verdict == _DROP else ():
            verdict = self._inspect(event)
            if verdict == _BROKEN:
                break
            if verdict == _KEEP:
                kept.append(event)
        if verdict == _BROKEN:
            self.broken = True
            self._tail = b""
        return b"".join(event + b"\n\n" for event in kept)

    def _inspect(self, event: bytes) -> int:
        """Record what the event says: keep it, drop it (the usage chunk to strip), or broken."""
        data = _data(event)
        if data is None:
            return _KEEP  # a comment or an event without data
        if len(data) < 16 and data.strip() == b"[DONE]":
            self.done = True
            return _KEEP
        self.events += 1
        try:
            if self._finish and _FINISH in data and not any(n in data for n in _NO_FINISH):
                return self._finished(data)
            if _USAGE in data:
                return self._usage(_decode_object(_chunk_decoder, data))
            _object_decoder.decode(data)
        except (NotAnObject, msgspec.DecodeError):
            self.events -= 1
            # An empty data line (a keep-alive some servers send) is not an event.
            return _KEEP if not data.strip() else _BROKEN
        return _KEEP

    def _usage(self, parsed: _Chunk | _Finished | None) -> int:
        if parsed is None or parsed.usage is None:
            return _KEEP
        usage = parsed.usage
        self.usage = Usage(usage.prompt_tokens, usage.completion_tokens, self._reasons)
        if self._strip and parsed.choices == []:
            self.events -= 1
            return _DROP
        return _KEEP

    def _finished(self, data: bytes) -> int:
        parsed = _decode_object(_finished_decoder, data)
        reasons = parsed.reasons() if parsed is not None else []
        if reasons:
            self._reasons += tuple(reasons)
            if self.usage is not None:  # usage came first: keep it, with the reasons
                self.usage = Usage(
                    self.usage.prompt_tokens, self.usage.completion_tokens, self._reasons
                )
        return self._usage(parsed)


def _data(event: bytes) -> bytes | None:
    """The data of an SSE event (its `data:` lines joined), or None when it has none."""
    if event.startswith(b"data:") and b"\n" not in event:
        return event[5:]  # the usual event: one data line
    lines = [line[5:] for line in event.split(b"\n") if line.startswith(b"data:")]
    return b"\n".join(lines) if lines else None


class _ResponseEvent(msgspec.Struct):
    """A Responses API stream event: its type, and the usage of the response it carries."""

    type: str = ""
    response: _Response | None = None


_event_decoder = msgspec.json.Decoder(_ResponseEvent)
# The events a Responses stream ends with; the usage is in their `response`.
_RESPONSE_ENDS = frozenset({"response.completed", "response.failed", "response.incomplete"})


class ResponsesScanner(StreamScanner):
    """A StreamScanner for the Responses API: its streams end with `response.completed` (or
    `.failed`, `.incomplete`), whose `response.usage` is read; there is no `[DONE]` and no
    usage chunk to strip. `events` counts the `.delta` events, the content the client got."""

    END = "response.completed"
    __slots__ = ()

    def _inspect(self, event: bytes) -> int:
        data = _data(event)
        if data is None or (len(data) < 16 and data.strip() == b"[DONE]"):
            return _KEEP  # some servers add chat's [DONE]: passed on, not taken for an end
        try:
            parsed = _decode_object(_event_decoder, data)
        except NotAnObject:
            return _KEEP if not data.strip() else _BROKEN
        if parsed is None:
            return _KEEP
        if parsed.type.endswith(".delta"):
            self.events += 1
        elif parsed.type in _RESPONSE_ENDS:
            self.done = True
        if parsed.response is not None and parsed.response.usage is not None:
            self.usage = parsed.response.read()
        return _KEEP
