"""The usage record (what orgs are billed from) and its pure builder; no I/O here."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import msgspec

SCHEMA_VERSION = 1

TokenSource = Literal["reported", "estimated", "none"]


class UsageRecord(msgspec.Struct, frozen=True, kw_only=True):
    """One request's usage, schema version 1 (docs/usage-records.md describes every field).

    Additive changes (a new field with a default) keep version 1; anything that renames,
    removes or changes the meaning of a field bumps it, so consumers can tell.
    """

    schema_version: int = SCHEMA_VERSION
    id: str  # the request id (x-request-id): the key for downstream de-duplication
    started_at: float  # unix seconds
    first_byte_at: float | None
    ended_at: float
    org: str | None
    key_id: str | None
    model: str | None  # as the client asked for it
    backend: str | None
    upstream_model: str | None
    decision: str | None  # PRIMARY / WEIGHTED / LEAST_LOADED / OVERRIDE / FAILOVER
    attempts: int
    status: int
    error_code: str | None
    stream: bool
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int
    token_source: TokenSource
    cost_usd: float
    latency_ms: float
    ttft_ms: float | None
    client_disconnected: bool


@dataclass(slots=True)
class RequestFacts:
    """What a request learns about itself as it runs; `build_record` turns it into a record.

    `prompt_tokens`/`completion_tokens` stay None unless the backend reported them; the
    `estimate_*` fields hold the router's own count, used when it did not.
    """

    id: str
    started_at: float
    first_byte_at: float | None = None
    ended_at: float | None = None
    org: str | None = None
    key_id: str | None = None
    model: str | None = None
    backend: str | None = None
    upstream_model: str | None = None
    decision: str | None = None
    attempts: int = 0
    status: int = 0
    error_code: str | None = None
    stream: bool = False
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    estimate_prompt_tokens: int = 0
    estimate_completion_tokens: int = 0
    client_disconnected: bool = False


def build_record(facts: RequestFacts, prices: tuple[float, float]) -> UsageRecord:
    """The record for `facts`; `prices` are USD per 1k input and output tokens."""
    source, prompt, completion = _tokens(facts)
    price_in, price_out = prices
    # A record must never be lost for want of an end time: fall back to the last moment seen.
    ended_at = facts.ended_at
    if ended_at is None:
        ended_at = facts.started_at if facts.first_byte_at is None else facts.first_byte_at
    ttft_ms = None
    if facts.first_byte_at is not None:
        ttft_ms = max(0.0, (facts.first_byte_at - facts.started_at) * 1000.0)
    return UsageRecord(
        id=facts.id,
        started_at=facts.started_at,
        first_byte_at=facts.first_byte_at,
        ended_at=ended_at,
        org=facts.org,
        key_id=facts.key_id,
        model=facts.model,
        backend=facts.backend,
        upstream_model=facts.upstream_model,
        decision=facts.decision,
        attempts=facts.attempts,
        status=facts.status,
        error_code=facts.error_code,
        stream=facts.stream,
        prompt_tokens=prompt,
        completion_tokens=completion,
        total_tokens=prompt + completion,
        token_source=source,
        # Rounded to 1e-10 USD so sums of records do not carry float noise like ...0000004.
        cost_usd=round((prompt * price_in + completion * price_out) / 1000.0, 10),
        latency_ms=max(0.0, (ended_at - facts.started_at) * 1000.0),
        ttft_ms=ttft_ms,
        client_disconnected=facts.client_disconnected,
    )


def _tokens(facts: RequestFacts) -> tuple[TokenSource, int, int]:
    if facts.prompt_tokens is not None or facts.completion_tokens is not None:
        # Backends report both or neither; a lone number is completed from our estimate.
        prompt = _first(facts.prompt_tokens, facts.estimate_prompt_tokens)
        completion = _first(facts.completion_tokens, facts.estimate_completion_tokens)
        return "reported", max(0, prompt), max(0, completion)
    if facts.backend is not None and facts.first_byte_at is not None:
        # The backend answered (fully or until the client left) without usage: bill our count.
        return (
            "estimated",
            max(0, facts.estimate_prompt_tokens),
            max(0, facts.estimate_completion_tokens),
        )
    # Refused before any backend, or no backend ever answered: nothing was consumed.
    return "none", 0, 0


def _first(reported: int | None, estimate: int) -> int:
    return estimate if reported is None else reported


_encoder = msgspec.json.Encoder()
_decoder = msgspec.json.Decoder(UsageRecord)


def encode_record(record: UsageRecord) -> bytes:
    """The record as compact JSON, fields in schema order (the outbox payload)."""
    return _encoder.encode(record)


def decode_record(payload: bytes) -> UsageRecord:
    """The inverse of encode_record; msgspec.ValidationError if it is not a usage record."""
    return _decoder.decode(payload)
