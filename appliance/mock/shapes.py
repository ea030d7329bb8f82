"""OpenAI response documents (pure dict builders; the server encodes them with msgspec).

Field sets and order follow OpenAI's API so SDKs, proxies and usage extractors see exactly what
they would see from the real service.
"""

from __future__ import annotations

from collections.abc import Sequence

from appliance.mock.behaviour import EmbeddingPlan, Plan, embedding_vector, vector_base64

Doc = dict[str, object]


def usage(prompt_tokens: int, completion_tokens: int) -> Doc:
    """The `usage` block of a completion."""
    return {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
    }


def plan_usage(plan: Plan) -> Doc:
    """The `usage` block a plan will report."""
    return usage(plan.prompt_tokens, plan.completion_tokens)


def completion(plan: Plan, rid: str, created: int, text: str) -> Doc:
    """A non-streamed `chat.completion` or `text_completion` document."""
    choice: Doc
    if plan.kind == "chat":
        choice = {
            "index": 0,
            "message": {"role": "assistant", "content": text, "refusal": None},
            "logprobs": None,
            "finish_reason": plan.finish_reason,
        }
        kind = "chat.completion"
    else:
        choice = {"text": text, "index": 0, "logprobs": None, "finish_reason": plan.finish_reason}
        kind = "text_completion"
    return {
        "id": rid,
        "object": kind,
        "created": created,
        "model": plan.model,
        "system_fingerprint": "fp_mock",
        "choices": [choice],
        "usage": plan_usage(plan),
    }


def chunk(plan: Plan, rid: str, created: int, index: int, text: str) -> Doc:
    """Stream chunk number `index` (0-based) carrying `text`; the last one has finish_reason."""
    finish = plan.finish_reason if index == plan.completion_tokens - 1 else None
    choice: Doc
    if plan.kind == "chat":
        delta: Doc = {"role": "assistant", "content": text} if index == 0 else {"content": text}
        choice = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}
        kind = "chat.completion.chunk"
    else:
        choice = {"text": text, "index": 0, "logprobs": None, "finish_reason": finish}
        kind = "text_completion"
    doc: Doc = {
        "id": rid,
        "object": kind,
        "created": created,
        "model": plan.model,
        "system_fingerprint": "fp_mock",
        "choices": [choice],
    }
    if plan.include_usage:
        doc["usage"] = None  # OpenAI sends an explicit null on every chunk but the last
    return doc


def usage_chunk(plan: Plan, rid: str, created: int) -> Doc:
    """The final `include_usage` chunk: no choices, the whole usage block."""
    kind = "chat.completion.chunk" if plan.kind == "chat" else "text_completion"
    return {
        "id": rid,
        "object": kind,
        "created": created,
        "model": plan.model,
        "system_fingerprint": "fp_mock",
        "choices": [],
        "usage": plan_usage(plan),
    }


def embeddings(plan: EmbeddingPlan) -> Doc:
    """A `list` of `embedding` objects, one per input, in input order."""
    data: list[Doc] = []
    for index, key in enumerate(plan.keys):
        vector = embedding_vector(key, plan.dimensions)
        encoded: object = vector_base64(vector) if plan.base64 else vector
        data.append({"object": "embedding", "index": index, "embedding": encoded})
    return {
        "object": "list",
        "data": data,
        "model": plan.model,
        "usage": {"prompt_tokens": plan.prompt_tokens, "total_tokens": plan.prompt_tokens},
    }


def model_entry(name: str, created: int) -> Doc:
    """One /v1/models entry."""
    return {"id": name, "object": "model", "created": created, "owned_by": "routerctl-mock"}


def models(names: Sequence[str], created: int) -> Doc:
    """The /v1/models list."""
    return {"object": "list", "data": [model_entry(name, created) for name in names]}
