"""Token-bucket math (pure): state in, state out, `now` passed in.

The in-process store calls these functions; the Redis store's Lua script (redis_store.py)
repeats them line by line, so both stores decide identically. A bucket that was never seen
(or was forgotten because it refilled) is full. A bucket never holds less than 0 tokens: a
charge beyond what it holds empties it, so no wait is ever longer than one full refill.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from appliance.limits.ports import Admission, BucketReading, BucketSpec


@dataclass(frozen=True, slots=True)
class BucketState:
    """Tokens at `updated_at`, between 0 and capacity."""

    tokens: float
    updated_at: float


def refilled(state: BucketState | None, capacity: float, refill_per_s: float, now: float) -> float:
    """Tokens at `now`: continuous refill, capped at capacity; a new bucket is full."""
    if state is None:
        return capacity
    elapsed = max(0.0, now - state.updated_at)  # a clock stepping back must not drain
    return min(capacity, state.tokens + elapsed * refill_per_s)


def admits(tokens: float, spec: BucketSpec) -> bool:
    """A full bucket admits any cost, so a request larger than the burst is not locked out."""
    return tokens >= min(spec.cost, spec.capacity)


def seconds_until(tokens: float, target: float, refill_per_s: float) -> float:
    """How long refill takes to raise `tokens` to `target` (inf when it never refills)."""
    if tokens >= target:
        return 0.0
    if refill_per_s <= 0:
        return math.inf
    return (target - tokens) / refill_per_s


def full_at(state: BucketState, capacity: float, refill_per_s: float) -> float:
    """When the bucket is full again if left alone: from then on it can be forgotten."""
    return state.updated_at + seconds_until(state.tokens, capacity, refill_per_s)


def reading(spec: BucketSpec, tokens: float, admitted: bool) -> BucketReading:
    """The reading for one bucket, from its tokens before the (possible) charge."""
    capacity, refill = spec.capacity, spec.refill_per_s
    remaining = max(0.0, tokens - spec.cost) if admitted else tokens
    # 0 when this bucket admits (even if another one denied the request).
    retry_after = seconds_until(tokens, min(spec.cost, capacity), refill)
    reset = seconds_until(remaining, capacity, refill)
    return BucketReading(spec.key, capacity, remaining, reset, retry_after)


def admission(specs: Sequence[BucketSpec], tokens: Sequence[float], admitted: bool) -> Admission:
    """Readings for every spec, given each bucket's tokens before the charge."""
    return Admission(
        admitted, tuple([reading(s, t, admitted) for s, t in zip(specs, tokens, strict=True)])
    )


def require_distinct(specs: Sequence[BucketSpec]) -> None:
    """One take names each bucket once; a repeated key would be charged only once."""
    if len({spec.key for spec in specs}) != len(specs):
        raise ValueError("a take names each bucket key once")


def charge(tokens: float, spec: BucketSpec, now: float) -> BucketState:
    """The bucket after taking the spec's cost from `tokens` (read at `now`); never below 0."""
    return BucketState(max(0.0, tokens - spec.cost), now)


def take(
    states: Sequence[BucketState | None], specs: Sequence[BucketSpec], now: float
) -> tuple[Admission, tuple[BucketState, ...] | None]:
    """All or nothing: the new states when every bucket admits, else None (nothing charged)."""
    require_distinct(specs)
    tokens = [
        refilled(state, spec.capacity, spec.refill_per_s, now)
        for state, spec in zip(states, specs, strict=True)
    ]
    admitted = all(admits(t, spec) for t, spec in zip(tokens, specs, strict=True))
    charged = (
        tuple(charge(t, spec, now) for t, spec in zip(tokens, specs, strict=True))
        if admitted
        else None
    )
    return admission(specs, tokens, admitted), charged


def adjust(
    state: BucketState | None, capacity: float, refill_per_s: float, delta: float, now: float
) -> BucketState:
    """Settle a request: add `delta` (negative charges more), kept between 0 and capacity."""
    tokens = refilled(state, capacity, refill_per_s, now)
    return BucketState(max(0.0, min(capacity, tokens + delta)), now)


__all__ = [
    "BucketState",
    "adjust",
    "admission",
    "admits",
    "charge",
    "full_at",
    "reading",
    "refilled",
    "require_distinct",
    "seconds_until",
    "take",
]
