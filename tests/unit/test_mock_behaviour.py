"""Pure logic of the mock backend: directives, token rules, validation, embeddings, config."""

from __future__ import annotations

import base64
import struct

import pytest

from appliance.mock import shapes
from appliance.mock.behaviour import (
    DEFAULT_COMPLETION_TOKENS,
    MAX_COMPLETION_TOKENS,
    content_text,
    count_words,
    embedding_vector,
    piece,
    plan_chat,
    plan_completion,
    plan_embeddings,
    reply_text,
    vector_base64,
)
from appliance.mock.directives import NONE, Directives, parse_directives
from appliance.mock.errors import MockError, error_type
from appliance.mock.state import MockConfig, MockState


def _chat(content: str, **extra: object) -> dict[str, object]:
    return {"model": "m", "messages": [{"role": "user", "content": content}], **extra}


def _state(fail_rate: float, seed: int = 0) -> MockState:
    return MockState(
        models=("m",), config=MockConfig(fail_rate=fail_rate), require_key=None, seed=seed, name="t"
    )


def test_text_without_directives_parses_to_none() -> None:
    """Ordinary text (and square brackets that are not directives) means normal behaviour."""
    assert parse_directives("hello [world] [mock] mock:status=500") is NONE


def test_every_directive_parses() -> None:
    """All ten directives are recognised, with values, anywhere in the text."""
    text = (
        "a [mock:status=503] b [mock:latency_ms=12.5] [mock:chunks=3] [mock:chunk_delay_ms=7]"
        " [mock:break_after=2] [mock:hang] [mock:garbage] [mock:garbage_after=1]"
        " [mock:stall_after=4] [mock:retry_after=30] c"
    )
    assert parse_directives(text) == Directives(
        status=503,
        latency_ms=12.5,
        chunks=3,
        chunk_delay_ms=7.0,
        break_after=2,
        garbage_after=1,
        stall_after=4,
        retry_after=30,
        hang=True,
        garbage=True,
    )
    assert parse_directives("[mock:status=307]").status == 307


def test_later_directive_wins() -> None:
    """A repeated directive takes the last value."""
    assert parse_directives("[mock:chunks=2] [mock:chunks=5]").chunks == 5


@pytest.mark.parametrize(
    "text",
    [
        "[mock:nosuch]",
        "[mock:status=200]",
        "[mock:status=299]",
        "[mock:retry_after=90000]",
        "[mock:stall_after=-1]",
        "[mock:status=abc]",
        "[mock:status]",
        "[mock:chunks=0]",
        "[mock:latency_ms=-1]",
        "[mock:latency_ms=nan]",
        "[mock:hang=1]",
        "[mock:break_after=x]",
    ],
)
def test_bad_directives_are_400(text: str) -> None:
    """Unknown names and malformed values fail loudly instead of running the happy path."""
    with pytest.raises(MockError) as caught:
        parse_directives(text)
    assert caught.value.status == 400
    assert caught.value.body()["error"]["type"] == "invalid_request_error"  # type: ignore[index]


def test_word_counting_rules() -> None:
    """Tokens are whitespace-separated words; content parts contribute only their text."""
    assert count_words("  one two\tthree\nfour ") == 4
    assert count_words("") == 0
    parts = [{"type": "text", "text": "a b"}, {"type": "image_url", "image_url": {}}]
    assert content_text(parts) == "a b"
    assert content_text(None) == ""


def test_chat_usage_numbers_are_deterministic() -> None:
    """prompt_tokens counts words in every message; completion defaults to 16 with 'stop'."""
    body = {
        "model": "m",
        "messages": [
            {"role": "system", "content": "be brief"},
            {"role": "user", "content": "what is two plus two"},
        ],
    }
    plan = plan_chat(body)
    assert (plan.prompt_tokens, plan.completion_tokens, plan.finish_reason) == (
        7,
        DEFAULT_COMPLETION_TOKENS,
        "stop",
    )
    assert plan_chat(body) == plan


def test_empty_prompt_counts_one_token() -> None:
    """A prompt with no words still costs one token."""
    assert plan_chat(_chat("")).prompt_tokens == 1


@pytest.mark.parametrize(
    ("extra", "content", "expected"),
    [
        ({"max_tokens": 5}, "hi", (5, "length")),
        ({"max_completion_tokens": 3, "max_tokens": 9}, "hi", (3, "length")),
        ({"max_tokens": 10}, "hi [mock:chunks=4]", (4, "stop")),
        ({"max_tokens": 2}, "hi [mock:chunks=4]", (2, "length")),
        ({}, "hi [mock:chunks=4]", (4, "stop")),
        ({"max_tokens": 100_000}, "hi", (MAX_COMPLETION_TOKENS, "stop")),
    ],
)
def test_completion_size_rules(
    extra: dict[str, object], content: str, expected: tuple[int, str]
) -> None:
    """completion_tokens follows chunks/max_tokens/16, capped; 'length' when max_tokens is hit."""
    plan = plan_chat(_chat(content, **extra))
    assert (plan.completion_tokens, plan.finish_reason) == expected


def test_chat_directives_come_from_the_last_user_message() -> None:
    """Only the last user message is scanned, so a replayed history cannot re-trigger faults."""
    body = {
        "model": "m",
        "messages": [
            {"role": "user", "content": "[mock:status=500]"},
            {"role": "assistant", "content": "ok"},
            {"role": "user", "content": "again [mock:chunks=2]"},
        ],
    }
    assert plan_chat(body).directives == Directives(chunks=2)


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ([], None),
        ({"messages": [{"role": "user", "content": "x"}]}, "model"),
        ({"model": "", "messages": [{"role": "user", "content": "x"}]}, "model"),
        ({"model": "m"}, "messages"),
        ({"model": "m", "messages": []}, "messages"),
        ({"model": "m", "messages": ["hi"]}, "messages"),
        ({**_chat("x"), "max_tokens": 0}, "max_tokens"),
        ({**_chat("x"), "max_tokens": True}, "max_tokens"),
        ({**_chat("x"), "stream": "yes"}, "stream"),
        ({**_chat("x"), "stream_options": {"include_usage": True}}, "stream_options"),
    ],
)
def test_chat_validation_is_openai_shaped(body: object, param: str | None) -> None:
    """Invalid chat bodies raise a 400 naming the offending parameter."""
    with pytest.raises(MockError) as caught:
        plan_chat(body)
    assert caught.value.status == 400
    assert caught.value.param == param


def test_stream_flags() -> None:
    """include_usage is honoured only inside stream_options of a streaming request."""
    plan = plan_chat(_chat("x", stream=True, stream_options={"include_usage": True}))
    assert (plan.stream, plan.include_usage) == (True, True)
    assert plan_chat(_chat("x", stream=True)).include_usage is False


def test_completion_prompts() -> None:
    """Prompts may be text, text lists or token arrays; directives come from the text."""
    assert plan_completion({"model": "m", "prompt": "a b c"}).prompt_tokens == 3
    assert plan_completion({"model": "m", "prompt": ["a b", "c"]}).prompt_tokens == 3
    assert plan_completion({"model": "m", "prompt": [1, 2, 3, 4]}).prompt_tokens == 4
    assert plan_completion({"model": "m", "prompt": [[1, 2], [3]]}).prompt_tokens == 3
    plan = plan_completion({"model": "m", "prompt": "x [mock:status=502]"})
    assert (plan.kind, plan.directives.status) == ("completion", 502)
    with pytest.raises(MockError):
        plan_completion({"model": "m"})
    with pytest.raises(MockError):
        plan_completion({"model": "m", "prompt": [1, "a"]})


def test_reply_text_and_pieces_agree() -> None:
    """Stream pieces concatenate to exactly the non-streamed reply text."""
    assert reply_text(3) == "tok0 tok1 tok2"
    assert "".join(piece(i) for i in range(40)) == reply_text(40)
    assert count_words(reply_text(40)) == 40


def test_embedding_plan() -> None:
    """Embeddings accept strings, string lists and token arrays, with dimensions and base64."""
    plan = plan_embeddings({"model": "e", "input": ["a b", "c"], "dimensions": 3})
    assert (len(plan.keys), plan.prompt_tokens, plan.dimensions, plan.base64) == (2, 3, 3, False)
    assert plan_embeddings({"model": "e", "input": [5, 6]}).prompt_tokens == 2
    assert plan_embeddings({"model": "e", "input": "x", "encoding_format": "base64"}).base64
    for bad in ("", [], [""], None, {"x": 1}):
        with pytest.raises(MockError):
            plan_embeddings({"model": "e", "input": bad})
    with pytest.raises(MockError):
        plan_embeddings({"model": "e", "input": "x", "encoding_format": "int8"})
    with pytest.raises(MockError):
        plan_embeddings({"model": "e", "input": "x", "dimensions": 10_000})


def test_embedding_vectors_are_deterministic_unit_vectors() -> None:
    """Same input, same vector; different input, different vector; length 1; any dimension."""
    first = embedding_vector(b"hello", 8)
    assert first == embedding_vector(b"hello", 8)
    assert first != embedding_vector(b"hello!", 8)
    assert len(embedding_vector(b"x", 1000)) == 1000
    assert sum(v * v for v in embedding_vector(b"x", 1000)) == pytest.approx(1.0, abs=1e-5)
    decoded = struct.unpack("<8f", base64.b64decode(vector_base64(first)))
    assert decoded == first


def test_chunk_shapes() -> None:
    """Only the first chat chunk has the role, only the last has finish_reason."""
    plan = plan_chat(_chat("x", stream=True, stream_options={"include_usage": True}, max_tokens=3))
    first, last = shapes.chunk(plan, "id", 1, 0, "tok0"), shapes.chunk(plan, "id", 1, 2, " tok2")
    assert first["choices"] == [
        {
            "index": 0,
            "delta": {"role": "assistant", "content": "tok0"},
            "logprobs": None,
            "finish_reason": None,
        }
    ]
    assert last["choices"][0]["finish_reason"] == "length"  # type: ignore[index]
    assert first["usage"] is None
    final = shapes.usage_chunk(plan, "id", 1)
    assert final["choices"] == []
    assert final["usage"] == {"prompt_tokens": 1, "completion_tokens": 3, "total_tokens": 4}


def test_error_types_follow_openai() -> None:
    """Statuses map to OpenAI's error types and codes."""
    assert error_type(429) == "rate_limit_error"
    assert error_type(503) == "server_error"
    assert error_type(418) == "invalid_request_error"
    assert MockError(401, "no").body()["error"] == {
        "message": "no",
        "type": "authentication_error",
        "param": None,
        "code": "invalid_api_key",
    }


def test_config_patch_validates() -> None:
    """/_mock/config accepts known numeric fields in range and rejects anything else."""
    config = MockConfig().patched({"latency_ms": 5, "fail_rate": 0.5, "fail_status": 429})
    assert config.as_dict() == {
        "latency_ms": 5,
        "fail_rate": 0.5,
        "tokens_per_s": 0.0,
        "fail_status": 429,
        "directives": "",
    }
    for bad in (
        {"fail_rate": 2},
        {"latency_ms": -1},
        {"bogus": 1},
        {"fail_rate": True},
        {"fail_status": 302},
        {"fail_status": 429.5},
        {"directives": "[mock:nope]"},
        {"directives": 1},
        [1],
    ):
        with pytest.raises(MockError):
            config.patched(bad)
    with pytest.raises(ValueError, match="fail_rate"):
        MockConfig(fail_rate=float("nan"))


def test_fail_rate_extremes_and_reproducibility() -> None:
    """fail_rate 1 always fails, 0 never, and a seed fixes which requests fail in between."""
    assert all(_state(1.0).should_fail() for _ in range(100))
    assert not any(_state(0.0).should_fail() for _ in range(100))
    one, two = _state(0.3, seed=7), _state(0.3, seed=7)
    draws = [one.should_fail() for _ in range(200)]
    assert draws == [two.should_fail() for _ in range(200)]
    assert 20 < sum(draws) < 100
    one.reset()
    assert [one.should_fail() for _ in range(200)] == draws


def test_state_rejects_bad_construction() -> None:
    """No models or an empty key is a programming error, reported at construction."""
    with pytest.raises(ValueError, match="model"):
        MockState(models=(), config=MockConfig(), require_key=None, seed=0, name="x")
    with pytest.raises(ValueError, match="require_key"):
        MockState(models=("m",), config=MockConfig(), require_key="", seed=0, name="x")
