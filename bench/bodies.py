"""Fixed request and response bodies: what wrk sends and what the nginx upstream answers.

The answers are shaped like OpenAI's (a chat.completion with a usage block; a stream of
chat.completion.chunk events, a usage chunk and `[DONE]`) so the router parses what it
would parse in production. They are plain ASCII without `'`, `$` or `\\`, which lets them
sit inside an nginx `return 200 '...'` directive unescaped.
"""

from __future__ import annotations

import json

JSON_MODEL = "bench"
STREAM_MODEL = "bench-stream"
_CREATED = 1764115200
_ANSWER = (
    "A load balancer spreads incoming requests over several servers so that no single one "
    "is overwhelmed. It checks which servers are healthy, sends each request to one of them, "
    "and takes a server out of rotation when it stops answering."
)
_USAGE = {
    "prompt_tokens": 27,
    "completion_tokens": 44,
    "total_tokens": 71,
    "prompt_tokens_details": {"cached_tokens": 0, "audio_tokens": 0},
    "completion_tokens_details": {
        "reasoning_tokens": 0,
        "audio_tokens": 0,
        "accepted_prediction_tokens": 0,
        "rejected_prediction_tokens": 0,
    },
}
_STREAM_PIECES = 10


def _dump(value: object) -> str:
    return json.dumps(value, separators=(",", ":"))


def request_body(*, stream: bool) -> str:
    """The POST body wrk sends: a short two-message chat, streaming with usage when asked."""
    body: dict[str, object] = {
        "model": STREAM_MODEL if stream else JSON_MODEL,
        "messages": [
            {"role": "system", "content": "You are a concise assistant."},
            {"role": "user", "content": "Explain what a load balancer does in three sentences."},
        ],
        "max_tokens": 128,
        "temperature": 0.2,
    }
    if stream:
        body["stream"] = True
        body["stream_options"] = {"include_usage": True}
    return _dump(body)


def completion_body() -> str:
    """A non-streaming chat.completion answer."""
    return _dump(
        {
            "id": "chatcmpl-bench0000000000000000000001",
            "object": "chat.completion",
            "created": _CREATED,
            "model": JSON_MODEL,
            "system_fingerprint": "fp_bench",
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": _ANSWER, "refusal": None},
                    "logprobs": None,
                    "finish_reason": "stop",
                }
            ],
            "usage": _USAGE,
        }
    )


def stream_body() -> str:
    """A text/event-stream answer: role, ~10 content pieces, finish, usage, [DONE]."""
    step = -(-len(_ANSWER) // _STREAM_PIECES)
    pieces = [_ANSWER[i : i + step] for i in range(0, len(_ANSWER), step)]
    deltas: list[tuple[dict[str, object], str | None]] = [({"role": "assistant"}, None)]
    deltas += [({"content": piece}, None) for piece in pieces]
    deltas.append(({}, "stop"))
    events = [
        _chunk([{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}], None)
        for delta, finish in deltas
    ]
    events.append(_chunk([], _USAGE))
    return "".join(f"data: {event}\n\n" for event in events) + "data: [DONE]\n\n"


def _chunk(choices: list[dict[str, object]], usage: dict[str, object] | None) -> str:
    return _dump(
        {
            "id": "chatcmpl-bench0000000000000000000002",
            "object": "chat.completion.chunk",
            "created": _CREATED,
            "model": STREAM_MODEL,
            "system_fingerprint": "fp_bench",
            "choices": choices,
            "usage": usage,
        }
    )
