"""The mock backend's Responses API: token rules, validation and the documents it answers."""

from __future__ import annotations

import msgspec
import pytest

from appliance.mock.errors import MockError
from appliance.mock.responses import ResponseEvents, plan_responses, response


def test_tokens_count_instructions_and_every_input_text() -> None:
    """Prompt tokens are the words of `instructions` and of every item's text; directives
    ride in the last user text; `max_output_tokens` caps the reply."""
    plan = plan_responses(
        {
            "model": "m",
            "instructions": "be brief",
            "input": [
                {"role": "user", "content": "[mock:chunks=2] old"},
                {"role": "assistant", "content": [{"type": "output_text", "text": "a b"}]},
                {"role": "user", "content": [{"type": "input_text", "text": "[mock:chunks=7]"}]},
            ],
            "max_output_tokens": 5,
        }
    )
    assert (plan.prompt_tokens, plan.completion_tokens, plan.finish_reason) == (7, 5, "length")


@pytest.mark.parametrize(
    ("fields", "param"),
    [
        ({"input": "x"}, "model"),
        ({"model": "m"}, "input"),
        ({"model": "m", "input": []}, "input"),
        ({"model": "m", "input": ["x"]}, "input"),
        ({"model": "m", "input": "x", "stream": "yes"}, "stream"),
        ({"model": "m", "input": "x", "max_output_tokens": True}, "max_output_tokens"),
    ],
)
def test_bad_requests_are_400_naming_the_field(fields: dict[str, object], param: str) -> None:
    """Invalid bodies are refused as OpenAI refuses them."""
    with pytest.raises(MockError) as caught:
        plan_responses(fields)
    assert (caught.value.status, caught.value.param) == (400, param)


def test_answer_and_stream_agree() -> None:
    """The whole answer and the stream's final response carry the same text and usage; a
    reply cut by `max_output_tokens` is incomplete and its stream ends so."""
    plan = plan_responses({"model": "m", "input": "a b c", "max_output_tokens": 3})
    whole = response(plan, "resp-mock-1", 0)
    events = ResponseEvents(plan, "resp-mock-1", 0)
    stream = [*events.opening(), *(events.delta(i) for i in range(3)), *events.closing()]
    name, data = stream[-1].removesuffix(b"\n\n").split(b"\n")
    assert name == b"event: response.incomplete"
    final = msgspec.json.decode(data.removeprefix(b"data: "))
    assert final["response"] == whole
    assert whole["usage"] == {
        "input_tokens": 3,
        "input_tokens_details": {"cached_tokens": 0},
        "output_tokens": 3,
        "output_tokens_details": {"reasoning_tokens": 0},
        "total_tokens": 6,
    }
    sequence = [msgspec.json.decode(e.split(b"data: ")[1])["sequence_number"] for e in stream]
    assert sequence == list(range(len(stream)))
