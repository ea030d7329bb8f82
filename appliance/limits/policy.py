"""Which limits apply to a request, what it costs, and the headers that report them (pure)."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from appliance.limits.ports import BucketReading, BucketSpec, SlotSpec
from appliance.settings import ApiKey, Org

_SECONDS_PER_MINUTE = 60.0
_CHARS_PER_TOKEN = 4  # the usual rough ratio for English text with BPE tokenizers
_ESTIMATE = -1  # a tpm spec's cost in LimitPolicy's made-once specs: the request's estimate


@dataclass(frozen=True, slots=True)
class Limit:
    """One configured limit: scope ("org" or "key"), owner id, name, value, shadow or not."""

    scope: str
    owner: str
    name: str  # "rpm" | "tpm" | "max_concurrent"
    value: int
    shadow: bool
    key: str = field(init=False, compare=False)  # "org:acme:rpm": made once, read per request

    def __post_init__(self) -> None:
        object.__setattr__(self, "key", f"{self.scope}:{self.owner}:{self.name}")


@dataclass(frozen=True, slots=True)
class LimitPolicy:
    """Every limit of one key and its org; built once per config snapshot, read per request."""

    org: str
    key_id: str
    rates: tuple[Limit, ...]  # rpm and tpm limits, org first
    concurrency: tuple[Limit, ...]
    budget_usd: float  # 0 = none (unless an external authority is configured)
    budget_shadow: bool
    enforced: tuple[Limit, ...] = field(init=False, compare=False)  # rates not in shadow
    shadow: tuple[Limit, ...] = field(init=False, compare=False)  # rates in shadow
    # The buckets and slots of the whole limits (a share of 1), made once: a tpm bucket's
    # cost is the request's estimate, filled in by `whole_buckets`.
    _enforced_specs: tuple[BucketSpec, ...] = field(init=False, compare=False, repr=False)
    _shadow_specs: tuple[BucketSpec, ...] = field(init=False, compare=False, repr=False)
    whole_slots: tuple[SlotSpec, ...] = field(init=False, compare=False, repr=False)

    def __post_init__(self) -> None:
        enforced = tuple(r for r in self.rates if not r.shadow)
        shadow = tuple(r for r in self.rates if r.shadow)
        object.__setattr__(self, "enforced", enforced)
        object.__setattr__(self, "shadow", shadow)
        object.__setattr__(
            self, "_enforced_specs", tuple(bucket_spec(r, _ESTIMATE) for r in enforced)
        )
        object.__setattr__(self, "_shadow_specs", tuple(bucket_spec(r, _ESTIMATE) for r in shadow))
        object.__setattr__(self, "whole_slots", tuple(slot_spec(c) for c in self.concurrency))

    def whole_buckets(self, estimate: int) -> tuple[tuple[BucketSpec, ...], tuple[BucketSpec, ...]]:
        """The enforced and shadow buckets of the whole limits, for a request of `estimate`
        tokens: `bucket_spec` of each, at a share of 1."""
        return _costed(self._enforced_specs, estimate), _costed(self._shadow_specs, estimate)

    @property
    def limited(self) -> bool:
        return bool(self.rates or self.concurrency)


def build_policy(org: Org, key: ApiKey) -> LimitPolicy:
    rates: list[Limit] = []
    concurrency: list[Limit] = []
    scopes: tuple[tuple[str, str, Org | ApiKey], ...] = (("org", org.id, org), ("key", key.id, key))
    for scope, owner, item in scopes:
        for name, value in (("rpm", item.rpm), ("tpm", item.tpm)):
            if value:
                rates.append(Limit(scope, owner, name, value, name in item.shadow))
        if item.max_concurrent:
            concurrency.append(
                Limit(
                    scope,
                    owner,
                    "max_concurrent",
                    item.max_concurrent,
                    "max_concurrent" in item.shadow,
                )
            )
    return LimitPolicy(
        org=org.id,
        key_id=key.id,
        rates=tuple(rates),
        concurrency=tuple(concurrency),
        budget_usd=org.monthly_budget_usd,
        budget_shadow="monthly_budget_usd" in org.shadow,
    )


def _costed(specs: tuple[BucketSpec, ...], estimate: int) -> tuple[BucketSpec, ...]:
    if not specs:
        return ()
    cost = float(estimate)
    return tuple(
        s if s.cost != _ESTIMATE else BucketSpec(s.key, s.capacity, s.refill_per_s, cost)
        for s in specs
    )


def bucket_spec(limit: Limit, estimate_tokens: int, share: float = 1.0) -> BucketSpec:
    """A per-minute limit as a bucket: capacity one minute's worth, refilled evenly.

    `share` < 1 is a replica's slice while the shared store is down.
    """
    capacity = max(limit.value * share, 1.0)
    cost = 1.0 if limit.name == "rpm" else float(estimate_tokens)
    return BucketSpec(limit.key, capacity, capacity / _SECONDS_PER_MINUTE, cost)


def slot_spec(limit: Limit, share: float = 1.0) -> SlotSpec:
    """A concurrency limit as slots; `share` < 1 as for `bucket_spec`, never below 1 slot."""
    return SlotSpec(limit.key, max(1, int(limit.value * share)), not limit.shadow)


def oversized(limits: tuple[Limit, ...], estimate_tokens: int) -> Limit | None:
    """The enforced tpm limit a request's estimate alone exceeds, if any.

    Such a request could never pass: admitting it on a full bucket would leave a debt far
    beyond one minute's refill and lock every other request of the org (or key) out.
    """
    for limit in limits:
        if limit.name == "tpm" and not limit.shadow and estimate_tokens > limit.value:
            return limit
    return None


def estimate_tokens(
    payload: dict[str, Any],
    max_tokens: int | None,
    default_max: int,
    prompt_fields: tuple[str, ...] = ("messages", "prompt", "input"),
) -> int:
    """Prompt estimate (characters / 4 of `prompt_fields`) plus the completion the client
    allows."""
    chars = 0
    for name in prompt_fields:
        chars += _text_length(payload.get(name))
    return max(1, math.ceil(chars / _CHARS_PER_TOKEN)) + (max_tokens or default_max)


def _text_length(value: Any) -> int:
    if isinstance(value, str):
        return len(value)
    if isinstance(value, list):
        return sum(_text_length(v) for v in value)
    if isinstance(value, dict):
        return _text_length(value.get("content")) + _text_length(value.get("text"))
    return 0


def rate_headers(limits: tuple[Limit, ...], readings: tuple[BucketReading, ...]) -> dict[str, str]:
    """OpenAI's x-ratelimit-* headers from the tightest request and token buckets."""
    tightest: dict[str, tuple[float, Limit, BucketReading]] = {}
    for lim, r in zip(limits, readings, strict=True):
        fill = r.remaining / max(r.capacity, 1.0)
        best = tightest.get(lim.name)
        if best is None or fill < best[0]:  # the first of equals, like min()
            tightest[lim.name] = (fill, lim, r)
    headers: dict[str, str] = {}
    for name, (limit_header, remaining_header, reset_header) in _RATE_HEADERS:
        if name not in tightest:
            continue
        _, limit, reading = tightest[name]
        headers[limit_header] = str(limit.value)
        headers[remaining_header] = str(max(0, math.floor(reading.remaining)))
        headers[reset_header] = format_duration(reading.reset_s)
    return headers


_RATE_HEADERS = tuple(
    (name, tuple(f"x-ratelimit-{part}-{suffix}" for part in ("limit", "remaining", "reset")))
    for name, suffix in (("rpm", "requests"), ("tpm", "tokens"))
)


def format_duration(seconds: float) -> str:
    """OpenAI's style: "1s", "6m0s", "120ms"."""
    if seconds < 1:
        return f"{max(0, math.ceil(seconds * 1000))}ms"
    minutes, rest = divmod(math.ceil(seconds), 60)
    return f"{minutes}m{rest}s" if minutes else f"{rest}s"
