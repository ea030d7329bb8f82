"""What the limiter needs from its stores: small Protocols with in-process and Redis twins.

Every store method that talks to Redis raises `LimiterBackendError` (and nothing else) when
Redis is unreachable, slow or answers an error, so the limiter applies the failure mode in
one place.

The specs, requests and verdicts made for every request are values nobody changes, but
they are not frozen dataclasses: building a frozen one costs 3.5x a plain one here, and an
admission builds about ten of them.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol


class LimiterBackendError(Exception):
    """The shared store (Redis) could not answer in time; the message never holds secrets.

    `org` names the one org whose keys could not be reached (a Redis Cluster slot being moved
    or without a primary) when the rest of the store answered; None: the whole store failed.
    """

    def __init__(self, message: str, *, org: str | None = None) -> None:
        super().__init__(message)
        self.org = org


@dataclass(slots=True)  # a value: see the module's note
class BucketSpec:
    """One token bucket a request must pass, and what the request costs in it."""

    key: str  # e.g. "org:acme:rpm", "key:k1:tpm"
    capacity: float  # most tokens the bucket holds (the burst)
    refill_per_s: float
    cost: float


@dataclass(slots=True)  # a value: see the module's note
class BucketReading:
    """A bucket after the decision, for headers and errors."""

    key: str
    capacity: float
    remaining: float  # after the charge if admitted, else now; never below 0
    reset_s: float  # seconds until the bucket is full again
    retry_after_s: float  # 0 when this bucket admitted; else seconds until it would


@dataclass(slots=True)  # a value: see the module's note
class Admission:
    admitted: bool
    readings: tuple[BucketReading, ...]  # one per spec, in the order given

    @property
    def retry_after_s(self) -> float:
        return max((r.retry_after_s for r in self.readings), default=0.0)


@dataclass(frozen=True, slots=True)
class SlotSpec:
    """One concurrency limit a request must pass: a slot among `limit`, leased to it."""

    key: str  # e.g. "org:acme:max_concurrent"
    limit: int
    enforced: bool = True  # a shadow slot is taken when free but never refuses


@dataclass(frozen=True, slots=True)
class SpendCheck:
    """The org's monthly spend, read in the same step and compared with its budget."""

    period: str  # "YYYY-MM", UTC
    limit_usd: float
    enforced: bool = True  # a shadow budget is read and reported, never refuses


@dataclass(slots=True)  # a value: see the module's note
class AdmitRequest:
    """Everything one request asks of the limit store, decided at once."""

    org: str  # every key of the request belongs to this org
    holder: str  # this request's lease id (unique, no whitespace): what its slots hold
    buckets: tuple[BucketSpec, ...] = ()  # enforced: all or nothing
    shadow: tuple[BucketSpec, ...] = ()  # each charged alone if it admits; never refuses
    slots: tuple[SlotSpec, ...] = ()
    budget: SpendCheck | None = None


# Verdict.refused: which limit refused the request ("" when admitted).
BUDGET, RATE, CONCURRENCY = "budget", "rate", "concurrency"


@dataclass(slots=True)  # a value: see the module's note
class Verdict:
    """What the store decided. A refusal charged nothing and holds nothing.

    Limits are checked in the order budget, rate, concurrency; the first that refuses is
    named and the later ones are not evaluated (their tuples are empty).
    """

    refused: str  # "", BUDGET, RATE or CONCURRENCY
    buckets: Admission  # readings of the enforced buckets (none when the budget refused)
    shadow: tuple[bool, ...]  # per shadow bucket: it admitted (and was charged)
    slots: tuple[bool, ...]  # per slot: it was free (and is now held, when admitted)
    spent_usd: float  # the org's spend this period (0.0 without a budget check)


@dataclass(frozen=True, slots=True)
class Adjust:
    """A token bucket trued up to real usage: `delta` tokens added (negative charges more)."""

    key: str
    capacity: float
    refill_per_s: float
    delta: float


@dataclass(frozen=True, slots=True)
class Settlement:
    """What one finished request gives back or adds, applied once."""

    org: str
    holder: str = ""  # the lease id holding `releases`
    adjusts: tuple[Adjust, ...] = ()
    releases: tuple[str, ...] = ()  # slot keys `holder` took
    usd: float = 0.0  # added to the org's spend in `period`
    period: str = ""


class AdmissionStore(Protocol):
    """Every limit of a request in one step: in-process, or one Redis round trip."""

    async def admit(self, request: AdmitRequest) -> Verdict:
        """All or nothing: admitted only if the budget, every enforced bucket and every
        enforced slot pass; then the buckets are charged and the free slots taken.

        A bucket admits when its tokens (after refill) are at least min(cost, capacity); the
        full cost is then charged; a bucket never drops below 0 tokens.
        """
        ...

    async def settle(self, batch: Sequence[Settlement]) -> dict[str, float]:
        """Apply settlements in order: bucket adjusts (kept between 0 and capacity), slot
        releases, spend. Returns each spending org's total for the period after the batch."""
        ...

    async def ping(self) -> None:
        """Raise LimiterBackendError when the store cannot be used."""
        ...


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


__all__ = [
    "BUDGET",
    "CONCURRENCY",
    "RATE",
    "Adjust",
    "Admission",
    "AdmissionStore",
    "AdmitRequest",
    "BucketReading",
    "BucketSpec",
    "BudgetAuthority",
    "BudgetStatus",
    "LimitObserver",
    "LimiterBackendError",
    "Settlement",
    "SlotSpec",
    "SpendCheck",
    "SpendStore",
    "Verdict",
]


class LimitObserver(Protocol):
    """Where the limiter reports what it decided (metrics); implemented in telemetry."""

    def denied(self, org: str, scope: str, limit: str, shadow: bool) -> None: ...

    def budget_denied(self, org: str, shadow: bool) -> None: ...

    def spent(self, org: str, total_usd: float) -> None: ...

    def degraded(self, on: bool) -> None: ...

    def backend_error(self) -> None: ...

    def decision(self, seconds: float) -> None: ...
