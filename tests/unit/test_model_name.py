"""The model name said as the client asked: only the top-level `model`, values kept raw."""

from __future__ import annotations

import msgspec

from appliance.upstream.model_name import ModelName

NAME = ModelName("chat", "llama-3-70b")


def test_a_json_answer_gets_the_asked_name_and_keeps_the_rest_byte_for_byte() -> None:
    """Numbers, nested objects and a mention of the upstream name in the text stay as sent."""
    body = b'{"id":"x","model":"llama-3-70b","choices":[{"text":"I am llama-3-70b"}],"p":1.50}'
    assert NAME.whole(body) == body.replace(b'"model":"llama-3-70b"', b'"model":"chat"')


def test_answers_without_the_name_or_not_objects_pass_unchanged() -> None:
    """No `model`, an array, broken JSON, or no mention at all: the same bytes come back."""
    for body in (b'{"id":"llama-3-70b"}', b'["llama-3-70b"]', b'{"model": llama-3-70b', b"{}"):
        assert NAME.whole(body) is body


def test_stream_events_each_get_the_asked_name() -> None:
    """Data events are renamed one by one; comments, [DONE] and multi-line data are not."""
    chunk = (
        b": keep-alive\n\n"
        b'data: {"model":"llama-3-70b","choices":[]}\n\n'
        b'data: {"model": "llama-3-70b", "x": 1}\n\n'
        b'data: {"model":\ndata: "llama-3-70b"}\n\n'
        b"data: [DONE]\n\n"
    )
    events = NAME.events(chunk).split(b"\n\n")
    assert events[0] == b": keep-alive"
    assert msgspec.json.decode(events[1].removeprefix(b"data: "))["model"] == "chat"
    assert msgspec.json.decode(events[2].removeprefix(b"data: ")) == {"model": "chat", "x": 1}
    assert events[3] == b'data: {"model":\ndata: "llama-3-70b"}'
    assert events[4] == b"data: [DONE]"
