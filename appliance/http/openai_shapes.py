"""The OpenAI-compatible routes' bodies, as msgspec Structs for the OpenAPI document.

Inference bodies are relayed unchanged: the request Structs hold the fields the router itself
checks (upstream/payload.py, whose sampling table they are built from) and admit any other;
the answers are the backend's, with the fields OpenAI's SDKs need. `Model` and `ModelList`
are what GET /v1/models answers, built by that route.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

import msgspec
from msgspec import Meta

from appliance.upstream.payload import SAMPLING

Name = Annotated[str, Meta(min_length=1)]
PositiveInt = Annotated[int, Meta(ge=1)]
_PYTHON_TYPE: dict[tuple[type, ...], type] = {(int, float): float, (int,): int}


class Model(msgspec.Struct, frozen=True):
    id: str
    object: Literal["model"] = "model"
    created: int = 0
    owned_by: str = "routerctl"


class ModelList(msgspec.Struct, frozen=True, kw_only=True):
    object: Literal["list"] = "list"
    data: list[Model]


class Message(msgspec.Struct, frozen=True):
    role: Name  # content, name, tool calls...: relayed as sent


class StreamOptions(msgspec.Struct, frozen=True):
    include_usage: bool | None = None


class TokenUsage(msgspec.Struct, frozen=True):
    prompt_tokens: int
    total_tokens: int
    completion_tokens: int | None = None


class ChatCompletion(msgspec.Struct, frozen=True):
    """A non-streamed answer; streamed ones are server-sent events of chunks."""

    id: str
    object: str
    created: int
    model: str  # the name the client asked for
    choices: list[dict[str, Any]]
    usage: TokenUsage | None = None


class Completion(ChatCompletion, frozen=True):
    pass


class StreamEvent(msgspec.Struct, frozen=True):
    """One server-sent event of a streamed answer, relayed as the backend sent it."""

    data: str  # a chunk's JSON (`model` is the name the client asked for); the last: [DONE]
    event: str | None = None
    id: str | None = None


class EmbeddingList(msgspec.Struct, frozen=True):
    object: str
    data: list[dict[str, Any]]
    model: str
    usage: TokenUsage | None = None


class ResponseUsage(msgspec.Struct, frozen=True):
    input_tokens: int
    output_tokens: int
    total_tokens: int


class ResponseObject(msgspec.Struct, frozen=True):
    """A non-streamed Responses answer; streamed ones are typed events ending with
    `response.completed`, `response.failed` or `response.incomplete` (no [DONE])."""

    id: str
    object: str
    created_at: int
    model: str  # the name the client asked for
    output: list[dict[str, Any]]
    status: str | None = None
    usage: ResponseUsage | None = None


class EmbeddingRequest(msgspec.Struct, frozen=True):
    model: Name
    input: str | list[Any]


def _sampling_fields() -> list[tuple[str, Any, None]]:
    """SAMPLING's (name, types, kind, bounds) as optional Struct fields with their bounds."""
    fields: list[tuple[str, Any, None]] = []
    for name, types, _, bounds in SAMPLING:
        kind: Any = _PYTHON_TYPE.get(types, types[0])
        if bounds is not None:
            kind = Annotated[kind, Meta(ge=bounds[0], le=bounds[1])]
        fields.append((name, kind | None, None))
    return fields


def _generation_request(name: str, input_field: tuple[str, Any]) -> type[msgspec.Struct]:
    fields: list[tuple[str, Any] | tuple[str, Any, Any]] = [
        ("model", Name),
        input_field,
        ("stream", bool | None, None),
        ("stream_options", StreamOptions | None, None),  # only with "stream": true
        ("max_tokens", PositiveInt | None, None),
        ("max_completion_tokens", PositiveInt | None, None),
        ("stop", str | list[str] | None, None),
        *_sampling_fields(),
    ]
    return msgspec.defstruct(name, fields, kw_only=True, frozen=True)


ChatCompletionRequest = _generation_request(
    "ChatCompletionRequest", ("messages", Annotated[list[Message], Meta(min_length=1)])
)
CompletionRequest = _generation_request("CompletionRequest", ("prompt", str | list[Any]))
ResponsesRequest = msgspec.defstruct(
    "ResponsesRequest",
    [
        ("model", Name),
        ("input", str | list[dict[str, Any]]),
        ("instructions", str | None, None),
        ("stream", bool | None, None),
        ("max_output_tokens", PositiveInt | None, None),
        *_sampling_fields(),
    ],
    kw_only=True,
    frozen=True,
)
