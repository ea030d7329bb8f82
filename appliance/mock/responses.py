"""The mock's Responses API (POST /v1/responses): the plan of an answer and its documents (pure).

Same token rules as chat (behaviour.py): prompt tokens are the words of `instructions` and of
every input item's text, the reply is `tok0 tok1 …`. A reply cut by `max_output_tokens` is
`incomplete` (reason `max_output_tokens`) and its stream ends with `response.incomplete`, as
OpenAI's does; otherwise the stream ends with `response.completed`. Usage is
`{input_tokens, output_tokens, total_tokens}` with OpenAI's detail blocks.
"""

from __future__ import annotations

from typing import Final

import msgspec

from appliance.mock.behaviour import (
    Plan,
    completion_size,
    content_text,
    count_words,
    piece,
    reply_text,
)
from appliance.mock.directives import parse_directives
from appliance.mock.errors import MockError

Doc = dict[str, object]
_BAD_INPUT: Final = "'input' must be a string or a non-empty array of input items"
_encode: Final = msgspec.json.Encoder().encode


def plan_responses(body: object, defaults: str = "") -> Plan:
    """Validate a /v1/responses body and decide the answer."""
    if not isinstance(body, dict):
        raise MockError(400, "The request body must be a JSON object.")
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise MockError(400, "you must provide a model parameter", param="model")
    texts, last_user = _input_texts(body.get("input"))
    stream = body.get("stream") or False
    if not isinstance(stream, bool):
        raise MockError(400, "'stream' must be a boolean", param="stream")
    limit = body.get("max_output_tokens")
    if limit is not None and (not isinstance(limit, int) or isinstance(limit, bool) or limit < 1):
        why = "'max_output_tokens' must be a positive integer"
        raise MockError(400, why, param="max_output_tokens")
    instructions = body.get("instructions")
    words = count_words(instructions) if isinstance(instructions, str) else 0
    directives = parse_directives(last_user, defaults)
    n, finish = completion_size(limit, directives)
    prompt_tokens = max(1, words + sum(count_words(text) for text in texts))
    return Plan("responses", model, stream, True, prompt_tokens, n, finish, directives)


def _input_texts(value: object) -> tuple[list[str], str]:
    """The text of each input item, and the last user text (where directives ride)."""
    if isinstance(value, str) and value:
        return [value], value
    if not isinstance(value, list) or not value or not all(isinstance(i, dict) for i in value):
        raise MockError(400, _BAD_INPUT, param="input")
    texts = [content_text(item.get("content")) for item in value]
    users = [t for item, t in zip(value, texts, strict=True) if item.get("role") == "user"]
    return texts, users[-1] if users else ""


def _message_id(rid: str) -> str:
    return rid.replace("resp", "msg", 1)  # resp-mock-7 answers with message msg-mock-7


def usage(plan: Plan) -> Doc:
    return {
        "input_tokens": plan.prompt_tokens,
        "input_tokens_details": {"cached_tokens": 0},
        "output_tokens": plan.completion_tokens,
        "output_tokens_details": {"reasoning_tokens": 0},
        "total_tokens": plan.prompt_tokens + plan.completion_tokens,
    }


def _part(text: str) -> Doc:
    return {"type": "output_text", "text": text, "annotations": [], "logprobs": []}


def _message(rid: str, status: str, content: list[Doc]) -> Doc:
    return {
        "id": _message_id(rid),
        "type": "message",
        "status": status,
        "role": "assistant",
        "content": content,
    }


def response(plan: Plan, rid: str, created: int, *, done: bool = True) -> Doc:
    """A `response` object: the whole answer, or (not `done`) one still in progress."""
    cut = plan.finish_reason == "length"
    status = ("incomplete" if cut else "completed") if done else "in_progress"
    output = [_message(rid, status, [_part(reply_text(plan.completion_tokens))])] if done else []
    return {
        "id": rid,
        "object": "response",
        "created_at": created,
        "status": status,
        "error": None,
        "incomplete_details": {"reason": "max_output_tokens"} if done and cut else None,
        "instructions": None,
        "max_output_tokens": None,
        "model": plan.model,
        "output": output,
        "parallel_tool_calls": True,
        "previous_response_id": None,
        "temperature": 1.0,
        "text": {"format": {"type": "text"}},
        "tool_choice": "auto",
        "tools": [],
        "top_p": 1.0,
        "truncation": "disabled",
        "usage": usage(plan) if done else None,
        "metadata": {},
    }


class ResponseEvents:
    """The SSE events of one streamed answer, numbered as they are made: the opening, one
    `response.output_text.delta` per token, then the closing."""

    def __init__(self, plan: Plan, rid: str, created: int) -> None:
        self._plan, self._rid, self._created = plan, rid, created
        self._sequence = 0
        self._where: Doc = {"item_id": _message_id(rid), "output_index": 0}

    def _event(self, kind: str, fields: Doc) -> bytes:
        doc = {"type": kind, "sequence_number": self._sequence, **fields}
        self._sequence += 1
        return f"event: {kind}\n".encode() + b"data: " + _encode(doc) + b"\n\n"

    def opening(self) -> list[bytes]:
        pending = response(self._plan, self._rid, self._created, done=False)
        empty = {"type": "output_text", "text": "", "annotations": []}
        return [
            self._event("response.created", {"response": pending}),
            self._event("response.in_progress", {"response": pending}),
            self._event(
                "response.output_item.added",
                {"output_index": 0, "item": _message(self._rid, "in_progress", [])},
            ),
            self._event(
                "response.content_part.added", {**self._where, "content_index": 0, "part": empty}
            ),
        ]

    def delta(self, index: int) -> bytes:
        fields = {**self._where, "content_index": 0, "delta": piece(index), "logprobs": []}
        return self._event("response.output_text.delta", fields)

    def closing(self) -> list[bytes]:
        final = response(self._plan, self._rid, self._created)
        text = reply_text(self._plan.completion_tokens)
        item = final["output"]
        assert isinstance(item, list)
        end = "response.incomplete" if final["status"] == "incomplete" else "response.completed"
        return [
            self._event(
                "response.output_text.done",
                {**self._where, "content_index": 0, "text": text, "logprobs": []},
            ),
            self._event(
                "response.content_part.done",
                {**self._where, "content_index": 0, "part": _part(text)},
            ),
            self._event("response.output_item.done", {"output_index": 0, "item": item[0]}),
            self._event(end, {"response": final}),
        ]
