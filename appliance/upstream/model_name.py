"""The answer says the model the client asked for, not the backend's name for it (pure).

A route may send model `chat` to a backend that calls it `llama-3-70b`; the client must see
`chat` back, as from any OpenAI-compatible endpoint (the usage record keeps the upstream
name). Only the top-level `model` field of a JSON answer or of each SSE data event changes
(in a Responses API stream: the `model` of the `response` an event carries); every other
value passes through as the backend wrote it (msgspec.Raw), key order kept.
"""

from __future__ import annotations

import msgspec

_decoder = msgspec.json.Decoder(dict[str, msgspec.Raw])
_encoder = msgspec.json.Encoder()
_DATA = b"data:"


class ModelName:
    """Rewrites `model` to `asked` in answers of a backend that names it `upstream`."""

    __slots__ = ("_asked", "_upstream")

    def __init__(self, asked: str, upstream: str) -> None:
        self._asked = msgspec.Raw(_encoder.encode(asked))
        self._upstream = upstream.encode()

    def whole(self, body: bytes) -> bytes:
        """A JSON answer with its `model` said as asked; anything else unchanged."""
        if self._upstream not in body:
            return body  # no mention of the upstream name: nothing to say differently
        try:
            fields = _decoder.decode(body)
        except msgspec.DecodeError:
            return body  # not a JSON object (the verdict let it through): leave it
        if "model" not in fields:
            return body
        fields["model"] = self._asked
        return _encoder.encode(fields)

    def events(self, chunk: bytes) -> bytes:
        """Complete SSE events (as the stream scanner forwards them), each data event's
        `model` said as asked; comments, `[DONE]` and multi-line data pass unchanged."""
        if self._upstream not in chunk:
            return chunk
        events = chunk.split(b"\n\n")
        for i, event in enumerate(events):
            if event.startswith(_DATA) and b"\n" not in event and self._upstream in event:
                payload = event[len(_DATA) :].lstrip()
                renamed = self.whole(payload)
                if renamed is not payload:
                    events[i] = b"data: " + renamed
        return b"\n\n".join(events)

    def response_events(self, chunk: bytes) -> bytes:
        """`events` for a Responses API stream: its events have an `event:` line, and the model
        is that of the `response` object some of them carry."""
        if self._upstream not in chunk:
            return chunk
        events = chunk.split(b"\n\n")
        for i, event in enumerate(events):
            if self._upstream in event:
                events[i] = b"\n".join(self._response_line(line) for line in event.split(b"\n"))
        return b"\n\n".join(events)

    def _response_line(self, line: bytes) -> bytes:
        if not line.startswith(_DATA) or self._upstream not in line:
            return line
        try:
            fields = _decoder.decode(line[len(_DATA) :])
        except msgspec.DecodeError:
            return line
        raw = fields.get("response")
        if raw is None:
            return line
        response = bytes(raw)
        renamed = self.whole(response)
        if renamed is response:
            return line
        fields["response"] = msgspec.Raw(renamed)
        return b"data: " + _encoder.encode(fields)
