"""What the limiter needs from its stores: small Protocols with in-process and Redis twins.

Every store method that talks to Redis raises `LimiterBackendError` (and nothing else) when
Redis is unreachable, slow or answers an error, so the limiter applies the failure mode in
one place.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol


class LimiterBackendError(Exception):
    """The shared store (Redis) could not answer in time; the message never holds secrets."""


@dataclass(frozen=True, slots=True)
class BucketSpec:
    """One token bucket a request must pass, and what the request costs in it."""

    key: str  # e.g. "org:acme:rpm", "key:k1:tpm"
    capacity: float  # most tokens the bucket holds (the burst)
    refill_per_s: float
    cost: float


@dataclass(frozen=True, slots=True)
class BucketReading:
    """A bucket after the decision, for headers and errors."""

    key: str
    capacity: float
    remaining: float  # after the charge if admitted, else now; never below 0
    reset_s: float  # seconds until the bucket is full again
    retry_after_s: float  # 0 when this bucket admitted; else seconds until it would


@dataclass(frozen=True, slots=True)
class Admission:
    admitted: bool
    readings: tuple[BucketReading, ...]  # one per spec, in the order given

    @property
    def retry_after_s(self) -> float:
        return max((r.retry_after_s for r in self.readings), default=0.0)


class BucketStore(Protocol):
    async def take(self, specs: Sequence[BucketSpec]) -> Admission:
        """All or nothing: admitted only if every bucket admits its cost, then all are charged.

        A bucket admits when its tokens (after refill) are at least min(cost, capacity); the
        full cost is then charged; a bucket never drops below 0 tokens.
        """
        ...

    async def adjust(self, key: str, capacity: float, refill_per_s: float, delta: float) -> None:
        """Settle: add `delta` tokens (negative charges more), kept between 0 and capacity."""
        ...


class ConcurrencyStore(Protocol):
    async def acquire(self, key: str, limit: int, holder: str) -> bool:
        """Take one of `limit` slots for `holder` (a request id); False when all are taken."""
        ...

    async def release(self, key: str, holder: str) -> None: ...


class SpendStore(Protocol):
    """Money spent per org per calendar month (period "YYYY-MM", UTC)."""

    async def spent(self, org: str, period: str) -> float: ...

    async def add(self, org: str, period: str, usd: float) -> float:
        """Add to the org's spend; returns the new total."""
        ...


@dataclass(frozen=True, slots=True)
class BudgetStatus:
    limit_usd: float
    spent_usd: float
    period_end: float  # unix seconds


class BudgetAuthority(Protocol):
    """An external budget service: GET {url}/v1/budgets/{org}."""

    async def status(self, org: str) -> BudgetStatus: ...


class Pingable(Protocol):
    async def ping(self) -> None:
        """Raise LimiterBackendError when the store cannot be used."""
        ...


__all__ = [
    "Admission",
    "BucketReading",
    "BucketSpec",
    "BucketStore",
    "BudgetAuthority",
    "BudgetStatus",
    "ConcurrencyStore",
    "LimitObserver",
    "LimiterBackendError",
    "Pingable",
    "SpendStore",
]


class LimitObserver(Protocol):
    """Where the limiter reports what it decided (metrics); implemented in telemetry."""

    def denied(self, org: str, scope: str, limit: str, shadow: bool) -> None: ...

    def budget_denied(self, org: str, shadow: bool) -> None: ...

    def spent(self, org: str, total_usd: float) -> None: ...

    def degraded(self, on: bool) -> None: ...

    def backend_error(self) -> None: ...

    def decision(self, seconds: float) -> None: ...
