"""Parse and check an inference request body, and render it for a backend (pure).

The body is relayed as the client sent it; only `model` is rewritten. Checks cover what the
router itself relies on (model, stream, the endpoint's required input) so a bad request is
answered 400 here with the offending `param`, not by a backend.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Any, cast

import msgspec

from appliance.errors import InvalidJson, InvalidRequest


class Endpoint(enum.Enum):
    CHAT = "chat/completions"
    COMPLETIONS = "completions"
    EMBEDDINGS = "embeddings"
    RESPONSES = "responses"

    @property
    def route(self) -> str:
        """The public path clients POST to."""
        return f"/v1/{self.value}"

    @property
    def streams(self) -> bool:
        return self is not Endpoint.EMBEDDINGS


# The input each endpoint cannot do without, and the JSON types it may take.
_REQUIRED_INPUT: dict[Endpoint, tuple[str, tuple[type, ...]]] = {
    Endpoint.CHAT: ("messages", (list,)),
    Endpoint.COMPLETIONS: ("prompt", (str, list)),
    Endpoint.EMBEDDINGS: ("input", (str, list)),
    Endpoint.RESPONSES: ("input", (str, list)),
}
# The fields that cap the answer's tokens (the first found wins), and the text fields the
# limits' token estimate counts as the prompt. Chosen by `is`, not by a dict: an Enum's hash
# is a Python call, ~0.2 us a lookup on the hot path.
_OPENAI_MAX_TOKENS = ("max_completion_tokens", "max_tokens")
_RESPONSES_MAX_TOKENS = ("max_output_tokens",)
_OPENAI_PROMPT = ("messages", "prompt", "input")
# Backends hold the token cap in 32 bits (vLLM, TGI, llama.cpp), and the limits' arithmetic
# converts it to a float: a larger value is a client bug, refused before any of that.
MAX_TOKENS_BOUND = 2**31 - 1
_RESPONSES_PROMPT = ("input", "instructions")


def prompt_fields(endpoint: Endpoint) -> tuple[str, ...]:
    """The request's text fields that the token estimate counts as its prompt."""
    return _RESPONSES_PROMPT if endpoint is Endpoint.RESPONSES else _OPENAI_PROMPT


# Deeper bodies are refused: real requests nest a handful of levels, and recursive code
# (decoding, encoding for the backend) must never meet an unbounded depth.
MAX_JSON_DEPTH = 64

_decoder = msgspec.json.Decoder()
_encoder = msgspec.json.Encoder()


@dataclass(frozen=True, slots=True)
class InferenceRequest:
    endpoint: Endpoint
    model: str
    stream: bool
    include_usage: bool
    max_tokens: int | None
    payload: dict[str, Any]


def parse_request(endpoint: Endpoint, body: bytes) -> InferenceRequest:
    """Decode and check a request body; raises InvalidRequest naming the bad `param`."""
    if not body.strip():
        raise InvalidJson("The request body is empty; send a JSON object.")
    payload = _decode(body)
    if not isinstance(payload, dict):
        raise InvalidRequest("The request body must be a JSON object.")
    model = payload.get("model")
    if model is None:
        raise InvalidRequest("You must provide a model parameter.", param="model")
    if not isinstance(model, str) or not model:
        raise InvalidRequest("'model' must be a non-empty string.", param="model")
    _check_input(endpoint, payload)
    stream = _optional(payload, "stream", bool) or False
    if stream and not endpoint.streams:
        raise InvalidRequest("This endpoint does not stream.", param="stream")
    options = _optional(payload, "stream_options", dict)
    responses = endpoint is Endpoint.RESPONSES
    # A Responses stream always ends with its usage (response.completed): nothing to ask for.
    include_usage = responses or bool(options and options.get("include_usage") is True)
    if options is not None and not stream:
        raise InvalidRequest("'stream_options' needs 'stream': true.", param="stream_options")
    max_tokens = _max_tokens(payload, _RESPONSES_MAX_TOKENS if responses else _OPENAI_MAX_TOKENS)
    _check_sampling(payload)
    return InferenceRequest(endpoint, model, stream, include_usage, max_tokens, payload)


def _decode(body: bytes) -> Any:
    try:
        payload = _decoder.decode(body)
    except msgspec.DecodeError as exc:
        raise InvalidJson(f"The request body is not valid JSON: {exc}.") from None
    except RecursionError:  # ~1000 levels: the decoder gave up before the bound below
        raise _too_deep() from None
    # The walk costs per container, not per byte: ~2-6 us for an ordinary chat body however
    # long its text, less than counting brackets in the bytes from ~2 KB up.
    if _deeper_than_bound(payload):
        raise _too_deep()
    return payload


def _deeper_than_bound(payload: Any) -> bool:
    """Whether containers nest more than MAX_JSON_DEPTH levels (iterative, level by level)."""
    level = [payload] if type(payload) is dict or type(payload) is list else []
    for _ in range(MAX_JSON_DEPTH):
        level = [
            value
            for container in level
            for value in (container.values() if type(container) is dict else container)
            if type(value) is dict or type(value) is list
        ]
        if not level:
            return False
    return True


def _too_deep() -> InvalidJson:
    return InvalidJson(
        f"The request body nests arrays and objects deeper than {MAX_JSON_DEPTH} levels."
    )


def render_upstream(request: InferenceRequest, upstream_model: str) -> bytes:
    """The body for a backend: the client's body with the backend's model name.

    Streams always ask for usage (the record of every request needs real token counts);
    the relay removes the extra usage chunk when the client had not asked for it.
    """
    changes: dict[str, Any] = {}
    if upstream_model != request.model:
        changes["model"] = upstream_model
    if request.stream and not request.include_usage:
        options = request.payload.get("stream_options") or {}
        changes["stream_options"] = {**options, "include_usage": True}
    return _encoder.encode({**request.payload, **changes} if changes else request.payload)


def _check_input(endpoint: Endpoint, payload: dict[str, Any]) -> None:
    name, types = _REQUIRED_INPUT[endpoint]
    value = payload.get(name)
    if value is None:
        raise InvalidRequest(f"Missing required parameter: '{name}'.", param=name)
    if not isinstance(value, types):
        kinds = " or ".join("an array" if t is list else "a string" for t in types)
        raise InvalidRequest(f"'{name}' must be {kinds}.", param=name)
    if isinstance(value, list) and endpoint is Endpoint.CHAT:
        _check_messages(value)
    elif endpoint is Endpoint.RESPONSES:
        _check_responses_input(value, payload)


def _check_messages(messages: list[Any]) -> None:
    if not messages:
        raise InvalidRequest("'messages' must not be empty.", param="messages")
    for i, message in enumerate(messages):
        if not isinstance(message, dict):
            raise InvalidRequest("Each message must be an object.", param=f"messages[{i}]")
        role = message.get("role")
        if not isinstance(role, str) or not role:
            raise InvalidRequest("Each message needs a string 'role'.", param=f"messages[{i}].role")


def _check_responses_input(value: Any, payload: dict[str, Any]) -> None:
    if isinstance(value, list):
        for i, item in enumerate(value):
            if not isinstance(item, dict):
                raise InvalidRequest("Each input item must be an object.", param=f"input[{i}]")
    instructions = payload.get("instructions")
    if instructions is not None and not isinstance(instructions, str):
        got = _json_kind(instructions)
        raise InvalidRequest(
            f"Invalid type for 'instructions': expected a string, but got {got} instead.",
            param="instructions",
        )


def _max_tokens(payload: dict[str, Any], names: tuple[str, ...]) -> int | None:
    for name in names:
        value = payload.get(name)
        if value is None:
            continue
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise InvalidRequest(f"'{name}' must be a positive integer.", param=name)
        if value > MAX_TOKENS_BOUND:
            raise InvalidRequest(f"'{name}' must be at most {MAX_TOKENS_BOUND}.", param=name)
        return value
    return None


# OpenAI's sampling fields: (what the value must be, its range or None). A wrong type is
# refused here, as OpenAI refuses it, rather than passed to a backend that may ignore it.
_NUMBER = (int, float)
SAMPLING: tuple[tuple[str, tuple[type, ...], str, tuple[float, float] | None], ...] = (
    ("temperature", _NUMBER, "a number", (0, 2)),
    ("top_p", _NUMBER, "a number", (0, 1)),
    ("presence_penalty", _NUMBER, "a number", (-2, 2)),
    ("frequency_penalty", _NUMBER, "a number", (-2, 2)),
    ("n", (int,), "an integer", (1, 128)),
    ("seed", (int,), "an integer", None),
    ("logprobs", (bool,), "a boolean", None),
    ("top_logprobs", (int,), "an integer", (0, 20)),
    ("user", (str,), "a string", None),
)


def _check_sampling(payload: dict[str, Any]) -> None:
    for name, types, kind, bounds in SAMPLING:
        value = payload.get(name)
        if value is None:
            continue
        if not isinstance(value, types) or (isinstance(value, bool) and bool not in types):
            got = _json_kind(value)
            raise InvalidRequest(
                f"Invalid type for '{name}': expected {kind}, but got {got} instead.", param=name
            )
        if bounds is not None and not bounds[0] <= cast(float, value) <= bounds[1]:
            raise InvalidRequest(
                f"'{name}' must be between {bounds[0]:g} and {bounds[1]:g}; got {value}.",
                param=name,
            )
    stop = payload.get("stop")
    if stop is not None and not (
        isinstance(stop, str) or (isinstance(stop, list) and all(isinstance(s, str) for s in stop))
    ):
        raise InvalidRequest(
            "Invalid type for 'stop': expected a string or an array of strings.", param="stop"
        )


def _json_kind(value: Any) -> str:
    if isinstance(value, bool):
        return "a boolean"
    return {str: "a string", dict: "an object", list: "an array", int: "an integer"}.get(
        type(value), "a number"
    )


def _optional(payload: dict[str, Any], name: str, kind: type) -> Any:
    value = payload.get(name)
    if value is not None and not isinstance(value, kind):
        expected = {bool: "a boolean", dict: "an object"}.get(kind, kind.__name__)
        raise InvalidRequest(f"'{name}' must be {expected}.", param=name)
    return value
