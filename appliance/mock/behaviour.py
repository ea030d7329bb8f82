"""Pure request logic of the mock backend: validation, token rules, reply text, embeddings.

Everything here is deterministic and free of I/O so the rules can be unit-tested without a loop
and so a proxy's usage accounting can be checked against numbers a test computes in advance.

Token rules (documented in docs/mock-backend.md):
- prompt_tokens = whitespace-separated words in every message's text (chat), in the prompt
  (completions) or in the input (embeddings; token arrays count their length); at least 1.
- completion_tokens = the `chunks` directive, else `max_completion_tokens`/`max_tokens`, else 16;
  never more than `max_tokens` and never more than 4096.
- finish_reason = "length" when `max_tokens` was reached, else "stop".
- reply text = "tok0 tok1 ... tok{n-1}"; stream chunk i carries "tok0" or " tok{i}".
"""

from __future__ import annotations

import base64
import hashlib
import struct
from dataclasses import dataclass
from functools import lru_cache
from typing import Final, Literal

from appliance.mock.directives import Directives, parse_directives
from appliance.mock.errors import MockError

DEFAULT_COMPLETION_TOKENS: Final = 16
MAX_COMPLETION_TOKENS: Final = 4096
DEFAULT_DIMENSIONS: Final = 8
MAX_DIMENSIONS: Final = 4096

Kind = Literal["chat", "completion", "responses"]


@dataclass(frozen=True, slots=True)
class Plan:
    """What a chat, text completion or Responses API request will be answered with."""

    kind: Kind
    model: str
    stream: bool
    include_usage: bool
    prompt_tokens: int
    completion_tokens: int
    finish_reason: str
    directives: Directives


@dataclass(frozen=True, slots=True)
class EmbeddingPlan:
    """What an embeddings request will be answered with; `keys` seed one vector each."""

    model: str
    keys: tuple[bytes, ...]
    prompt_tokens: int
    dimensions: int
    base64: bool
    directives: Directives


def _invalid(message: str, param: str | None) -> MockError:
    return MockError(400, message, param=param)


def _object(body: object) -> dict[str, object]:
    if not isinstance(body, dict):
        raise _invalid("The request body must be a JSON object.", None)
    return body


def _model(body: dict[str, object]) -> str:
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise _invalid("you must provide a model parameter", "model")
    return model


def _positive_int(body: dict[str, object], name: str) -> int | None:
    value = body.get(name)
    if value is None:
        return None
    # bool is an int subclass; `"max_tokens": true` is a client bug, not 1.
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise _invalid(f"'{name}' must be a positive integer", name)
    return value


def _stream_flags(body: dict[str, object]) -> tuple[bool, bool]:
    stream = body.get("stream", False)
    if stream is None:
        stream = False
    if not isinstance(stream, bool):
        raise _invalid("'stream' must be a boolean", "stream")
    options = body.get("stream_options")
    if options is None:
        return stream, False
    if not stream:
        raise _invalid(
            "The 'stream_options' parameter is only allowed when 'stream' is enabled.",
            "stream_options",
        )
    if not isinstance(options, dict):
        raise _invalid("'stream_options' must be an object", "stream_options")
    return stream, options.get("include_usage") is True


def count_words(text: str) -> int:
    """Words separated by whitespace: the mock's whole tokenizer."""
    return len(text.split())


def content_text(content: object) -> str:
    """Text of a chat message `content`: a string or a list of parts (only text parts count)."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        texts = [
            part["text"]
            for part in content
            if isinstance(part, dict) and isinstance(part.get("text"), str)
        ]
        return " ".join(texts)
    return ""


def completion_size(max_tokens: int | None, directives: Directives) -> tuple[int, str]:
    """(completion_tokens, finish_reason) under the rules in this module's docstring."""
    wanted = directives.chunks or max_tokens or DEFAULT_COMPLETION_TOKENS
    n = min(wanted, MAX_COMPLETION_TOKENS)
    if max_tokens is not None:
        n = min(n, max_tokens)
    return n, "length" if max_tokens is not None and n >= max_tokens else "stop"


def _messages(body: dict[str, object]) -> list[dict[str, object]]:
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise _invalid("'messages' must be a non-empty array", "messages")
    for index, message in enumerate(messages):
        if not isinstance(message, dict) or not isinstance(message.get("role"), str):
            raise _invalid(f"messages[{index}] must be an object with a 'role'", "messages")
    return messages


def plan_chat(body: object, defaults: str = "") -> Plan:
    """Validate a /v1/chat/completions body and decide the answer."""
    doc = _object(body)
    model = _model(doc)
    messages = _messages(doc)
    stream, include_usage = _stream_flags(doc)
    max_tokens = _positive_int(doc, "max_completion_tokens") or _positive_int(doc, "max_tokens")
    texts = [content_text(message.get("content")) for message in messages]
    users = [t for m, t in zip(messages, texts, strict=True) if m.get("role") == "user"]
    directives = parse_directives(users[-1] if users else "", defaults)
    n, finish = completion_size(max_tokens, directives)
    prompt_tokens = max(1, sum(count_words(text) for text in texts))
    return Plan("chat", model, stream, include_usage, prompt_tokens, n, finish, directives)


def _text_or_tokens(value: object, param: str) -> tuple[list[bytes], int, str]:
    """(vector keys, token count, directive text) of a prompt / embedding input."""
    items: list[object] = value if isinstance(value, list) else [value]
    if not items or (isinstance(value, list) and all(isinstance(i, int) for i in value)):
        items = [value]  # one token array, or an empty list (rejected below)
    keys: list[bytes] = []
    tokens = 0
    texts: list[str] = []
    for item in items:
        if isinstance(item, str) and item:
            keys.append(item.encode())
            tokens += count_words(item)
            texts.append(item)
        elif (
            isinstance(item, list)
            and item
            and all(isinstance(t, int) and not isinstance(t, bool) for t in item)
        ):
            keys.append(b"tokens:" + ",".join(map(str, item)).encode())
            tokens += len(item)
        else:
            raise _invalid(
                f"'{param}' must be a non-empty string, array of strings or token arrays", param
            )
    return keys, tokens, "\n".join(texts)


def plan_completion(body: object, defaults: str = "") -> Plan:
    """Validate a /v1/completions body and decide the answer."""
    doc = _object(body)
    model = _model(doc)
    if "prompt" not in doc:
        raise _invalid("'prompt' is required", "prompt")
    _keys, tokens, text = _text_or_tokens(doc["prompt"], "prompt")
    stream, include_usage = _stream_flags(doc)
    directives = parse_directives(text, defaults)
    n, finish = completion_size(_positive_int(doc, "max_tokens"), directives)
    return Plan("completion", model, stream, include_usage, max(1, tokens), n, finish, directives)


def plan_embeddings(body: object, defaults: str = "") -> EmbeddingPlan:
    """Validate a /v1/embeddings body and decide the answer."""
    doc = _object(body)
    model = _model(doc)
    if "input" not in doc:
        raise _invalid("'input' is required", "input")
    keys, tokens, text = _text_or_tokens(doc["input"], "input")
    dimensions = _positive_int(doc, "dimensions") or DEFAULT_DIMENSIONS
    if dimensions > MAX_DIMENSIONS:
        raise _invalid(f"'dimensions' must be at most {MAX_DIMENSIONS}", "dimensions")
    encoding = doc.get("encoding_format", "float")
    if encoding not in ("float", "base64", None):
        raise _invalid("'encoding_format' must be 'float' or 'base64'", "encoding_format")
    directives = parse_directives(text, defaults)
    return EmbeddingPlan(
        model, tuple(keys), max(1, tokens), dimensions, encoding == "base64", directives
    )


def piece(index: int) -> str:
    """Text of completion token `index`; the pieces concatenate to `reply_text`."""
    return f"tok{index}" if index == 0 else f" tok{index}"


@lru_cache(maxsize=256)
def reply_text(n: int) -> str:
    """The whole non-streamed reply of `n` tokens (cached: load tests repeat a few sizes)."""
    return "".join(piece(i) for i in range(n))


@lru_cache(maxsize=1024)
def embedding_vector(key: bytes, dimensions: int) -> tuple[float, ...]:
    """A unit-length vector derived from sha256(key); values are exact float32 numbers.

    float32 rounding makes the float and base64 encodings decode to identical numbers; explicit
    little-endian struct formats make the vectors identical on every platform.
    """
    raw = b"".join(
        hashlib.sha256(block.to_bytes(4, "big") + key).digest()
        for block in range((dimensions + 7) // 8)  # one digest yields eight uint32s
    )
    ints = struct.unpack(f"<{dimensions}I", raw[: 4 * dimensions])
    values = [u / 2147483648.0 - 1.0 for u in ints]  # uniform in [-1, 1)
    norm = sum(v * v for v in values) ** 0.5 or 1.0
    fmt = f"<{dimensions}f"
    return struct.unpack(fmt, struct.pack(fmt, *(v / norm for v in values)))


def vector_base64(vector: tuple[float, ...]) -> str:
    """OpenAI's `encoding_format="base64"`: little-endian float32 bytes, base64-encoded."""
    return base64.b64encode(struct.pack(f"<{len(vector)}f", *vector)).decode("ascii")
