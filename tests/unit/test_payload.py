"""Request parsing: what is rejected with which param, and the upstream rewrite."""

from __future__ import annotations

import re

import msgspec
import pytest

from appliance.errors import InvalidJson, InvalidRequest
from appliance.upstream.payload import Endpoint, parse_request, render_upstream

CHAT = Endpoint.CHAT
RESPONSES = Endpoint.RESPONSES


def body(**fields: object) -> bytes:
    return msgspec.json.encode(fields)


def test_parses_chat_request() -> None:
    """A valid chat body gives model, stream flags and max_tokens."""
    parsed = parse_request(
        CHAT,
        body(
            model="m",
            messages=[{"role": "user", "content": "hi"}],
            stream=True,
            stream_options={"include_usage": True},
            max_tokens=5,
        ),
    )
    assert (parsed.model, parsed.stream, parsed.include_usage, parsed.max_tokens) == (
        "m", True, True, 5,
    )  # fmt: skip


@pytest.mark.parametrize(
    ("endpoint", "raw", "param"),
    [
        (CHAT, body(messages=[{"role": "user"}]), "model"),
        (CHAT, body(model=3, messages=[{"role": "user"}]), "model"),
        (CHAT, body(model=""), "model"),
        (CHAT, body(model="m"), "messages"),
        (CHAT, body(model="m", messages="hi"), "messages"),
        (CHAT, body(model="m", messages=[]), "messages"),
        (CHAT, body(model="m", messages=["hi"]), "messages[0]"),
        (CHAT, body(model="m", messages=[{"content": "x"}]), "messages[0].role"),
        (CHAT, body(model="m", messages=[{"role": "u"}], stream="yes"), "stream"),
        (CHAT, body(model="m", messages=[{"role": "u"}], max_tokens=0), "max_tokens"),
        (CHAT, body(model="m", messages=[{"role": "u"}], max_tokens=True), "max_tokens"),
        (CHAT, body(model="m", messages=[{"role": "u"}], max_tokens=2**31), "max_tokens"),
        (
            CHAT,
            body(model="m", messages=[{"role": "u"}], max_completion_tokens=10**400),
            "max_completion_tokens",
        ),
        (CHAT, body(model="m", messages=[{"role": "u"}], stream_options={}), "stream_options"),
        (Endpoint.COMPLETIONS, body(model="m"), "prompt"),
        (Endpoint.COMPLETIONS, body(model="m", prompt=5), "prompt"),
        (Endpoint.EMBEDDINGS, body(model="m"), "input"),
        (Endpoint.EMBEDDINGS, body(model="m", input="x", stream=True), "stream"),
        (RESPONSES, body(model="m"), "input"),
        (RESPONSES, body(model="m", input={"role": "user"}), "input"),
        (RESPONSES, body(model="m", input=["hi"]), "input[0]"),
        (RESPONSES, body(model="m", input="x", instructions=["be"]), "instructions"),
        (RESPONSES, body(model="m", input="x", max_output_tokens=0), "max_output_tokens"),
        (RESPONSES, body(model="m", input="x", max_output_tokens=2**63), "max_output_tokens"),
        (RESPONSES, body(model="m", input="x", temperature="hot"), "temperature"),
        (RESPONSES, body(model="m", input="x", stream=1), "stream"),
    ],
)
def test_rejects_with_param(endpoint: Endpoint, raw: bytes, param: str) -> None:
    """Each kind of bad body is a 400 naming the offending parameter."""
    with pytest.raises(InvalidRequest) as caught:
        parse_request(endpoint, raw)
    assert caught.value.param == param
    assert caught.value.status == 400


@pytest.mark.parametrize("raw", [b"", b"   ", b"{", b"nope", b'{"model": "m",}'])
def test_rejects_malformed_json(raw: bytes) -> None:
    """Bodies that are not JSON are 400 invalid_json."""
    with pytest.raises(InvalidJson):
        parse_request(CHAT, raw)


@pytest.mark.parametrize("raw", [b"[]", b"3", b'"s"'])
def test_rejects_non_object(raw: bytes) -> None:
    """JSON that is not an object is 400."""
    with pytest.raises(InvalidRequest, match="JSON object"):
        parse_request(CHAT, raw)


def test_render_rewrites_only_model() -> None:
    """The upstream body is the client's body with the backend's model name."""
    parsed = parse_request(
        CHAT, body(model="m", messages=[{"role": "user", "content": "hi"}], temperature=0.5)
    )
    out = msgspec.json.decode(render_upstream(parsed, "llama-3"))
    assert out == {
        "model": "llama-3",
        "messages": [{"role": "user", "content": "hi"}],
        "temperature": 0.5,
    }
    assert msgspec.json.decode(render_upstream(parsed, "m"))["model"] == "m"


@pytest.mark.parametrize(
    ("field", "value", "says"),
    [
        (
            "temperature",
            "hot",
            "Invalid type for 'temperature': expected a number, but got a string",
        ),
        ("temperature", 2.5, "'temperature' must be between 0 and 2; got 2.5."),
        ("top_p", -0.1, "'top_p' must be between 0 and 1"),
        ("n", True, "expected an integer, but got a boolean"),
        ("n", 0, "'n' must be between 1 and 128"),
        ("presence_penalty", [1], "expected a number, but got an array"),
        ("logprobs", "yes", "expected a boolean, but got a string"),
        ("user", 42, "expected a string, but got an integer"),
        ("stop", ["a", 1], "Invalid type for 'stop'"),
    ],
)
def test_sampling_fields_of_the_wrong_type_or_range_are_400(
    field: str, value: object, says: str
) -> None:
    """OpenAI's sampling fields are checked as OpenAI checks them, naming the field."""
    with pytest.raises(InvalidRequest, match=re.escape(says)) as caught:
        parse_request(
            CHAT, body(model="m", messages=[{"role": "user", "content": "hi"}], **{field: value})
        )
    assert caught.value.param == field


def test_sampling_fields_in_range_pass() -> None:
    """Ordinary values, ints for numbers included, go through untouched."""
    request = parse_request(
        CHAT,
        body(
            model="m", messages=[{"role": "user", "content": "hi"}], temperature=1, top_p=0.9,
            n=2, stop=["\n"], seed=7, logprobs=True, top_logprobs=3, user="u-1",
        ),
    )  # fmt: skip
    assert request.payload["temperature"] == 1


def test_parses_a_responses_request_and_renders_it_as_sent() -> None:
    """A Responses body gives model, stream and max_output_tokens as the token cap; its stream
    needs no `stream_options` (it always ends with usage), so only `model` is rewritten."""
    sent = {
        "model": "m",
        "input": [{"role": "user", "content": [{"type": "input_text", "text": "hi"}]}],
        "instructions": "be brief",
        "stream": True,
        "max_output_tokens": 9,
        "max_tokens": 3,
    }
    parsed = parse_request(RESPONSES, body(**sent))
    assert (parsed.model, parsed.stream, parsed.max_tokens) == ("m", True, 9)
    assert msgspec.json.decode(render_upstream(parsed, "up")) == {**sent, "model": "up"}
    assert parse_request(RESPONSES, body(model="m", input="hi")).max_tokens is None
