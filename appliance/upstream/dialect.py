"""How each endpoint's answers say their usage, end their streams and name their model (pure).

Chat, completions and embeddings speak OpenAI's chat dialect (`usage.prompt_tokens`, streams
ending with `[DONE]`, `model` at the top of each event); the Responses API speaks its own.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from appliance.upstream.model_name import ModelName
from appliance.upstream.payload import Endpoint
from appliance.upstream.relay import Rewrite
from appliance.upstream.usage import (
    ResponsesScanner,
    StreamScanner,
    Usage,
    answer_usage,
    response_usage,
)


@dataclass(frozen=True, slots=True)
class Dialect:
    # The usage of a whole answer (raises NotAnObject when it is not a JSON object).
    answer_usage: Callable[[bytes, bool], Usage | None]
    scanner: type[StreamScanner]
    # The rewrite of streamed events that says the model as the client asked.
    renamer: Callable[[ModelName], Rewrite]


_OPENAI = Dialect(answer_usage, StreamScanner, lambda name: name.events)
_RESPONSES = Dialect(response_usage, ResponsesScanner, lambda name: name.response_events)


def dialect_of(endpoint: Endpoint) -> Dialect:
    # By `is`, not a dict: an Enum's hash is a Python call, ~0.2 us a lookup per request.
    return _RESPONSES if endpoint is Endpoint.RESPONSES else _OPENAI
