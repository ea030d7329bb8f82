"""The in-process limit store (embedded mode, and each replica's fallback while Redis is down).

Token buckets (the bucket math over a dict), concurrency slots (sets of request ids) and,
when given, spend from the state dir's SQLite read through a cache. No locks: everything
runs on one event loop, and past the spend read an admission does not await, so it is
atomic with respect to every other admission and settlement.
"""

from __future__ import annotations

import time
from collections import defaultdict
from collections.abc import Callable, Sequence

from appliance.limits import bucket
from appliance.limits.bucket import BucketState
from appliance.limits.budget_gate import BudgetGate
from appliance.limits.ports import (
    BUDGET,
    CONCURRENCY,
    RATE,
    Admission,
    AdmitRequest,
    BucketSpec,
    LimiterBackendError,
    Settlement,
    Verdict,
)

_SWEEP_EVERY = 1024
_NO_READINGS = Admission(admitted=False, readings=())


class MemoryBucketStore:
    """Token buckets that are forgotten once they have refilled (a forgotten one is full)."""

    def __init__(
        self, clock: Callable[[], float] = time.monotonic, sweep_every: int = _SWEEP_EVERY
    ) -> None:
        self.clock = clock
        self._sweep_every = sweep_every
        # key -> (state, when it is full again); past that time the entry means "full".
        self._buckets: dict[str, tuple[BucketState, float]] = {}
        self._ops_since_sweep = 0

    def __len__(self) -> int:
        """How many buckets are remembered (for tests and metrics)."""
        return len(self._buckets)

    def tokens(self, key: str, spec: BucketSpec, now: float) -> float:
        """Bucket `key`'s tokens at `now`, after refill."""
        return bucket.refilled(self._get(key, now), spec.capacity, spec.refill_per_s, now)

    def charge(self, key: str, spec: BucketSpec, tokens: float, now: float) -> None:
        """Take the spec's cost from `tokens` (read at `now`); never below empty."""
        self._put(key, bucket.charge(tokens, spec, now), spec)
        self._tick(now)

    def take(self, specs: Sequence[BucketSpec]) -> Admission:
        """All or nothing, as bucket.take: every bucket admits and is charged, or none is."""
        now = self.clock()
        result, charged = bucket.take([self._get(s.key, now) for s in specs], specs, now)
        if charged is not None:
            for spec, state in zip(specs, charged, strict=True):
                self._put(spec.key, state, spec)
        self._tick(now)
        return result

    def adjust(self, key: str, capacity: float, refill_per_s: float, delta: float) -> None:
        """Add `delta` tokens (negative charges more), kept between 0 and capacity."""
        now = self.clock()
        state = bucket.adjust(self._get(key, now), capacity, refill_per_s, delta, now)
        self._buckets[key] = (state, bucket.full_at(state, capacity, refill_per_s))
        self._tick(now)

    def _get(self, key: str, now: float) -> BucketState | None:
        entry = self._buckets.get(key)
        if entry is None or entry[1] <= now:
            return None  # as if forgotten already, like an expired Redis key
        return entry[0]

    def _put(self, key: str, state: BucketState, spec: BucketSpec) -> None:
        self._buckets[key] = (state, bucket.full_at(state, spec.capacity, spec.refill_per_s))

    def _tick(self, now: float) -> None:
        # Sweep after max(sweep_every, size) operations: O(1) amortized per operation, and
        # the dict holds at most about twice the buckets not yet full (plus sweep_every).
        self._ops_since_sweep += 1
        if self._ops_since_sweep < max(self._sweep_every, len(self._buckets)):
            return
        self._ops_since_sweep = 0
        idle = [key for key, (_, full) in self._buckets.items() if full <= now]
        for key in idle:
            del self._buckets[key]


class MemoryConcurrencyStore:
    """Slots of one process: key -> holders. Acquiring again as the same holder is a no-op."""

    def __init__(self) -> None:
        self._holders: dict[str, set[str]] = {}

    def free(self, key: str, limit: int, holder: str) -> bool:
        """Whether `holder` has or could take one of `limit` slots."""
        holders = self._holders.get(key, ())
        return holder in holders or len(holders) < limit

    def acquire(self, key: str, limit: int, holder: str) -> bool:
        if not self.free(key, limit, holder):
            return False
        self._holders.setdefault(key, set()).add(holder)
        return True

    def release(self, key: str, holder: str) -> None:
        holders = self._holders.get(key)
        if holders is None:
            return
        holders.discard(holder)
        if not holders:
            del self._holders[key]  # memory follows what is in use, not every key ever seen

    def in_use(self, key: str) -> int:
        return len(self._holders.get(key, ()))


class MemoryAdmissionStore:
    """An `AdmissionStore` in this process. `spend` (SQLite through a cache) is the budget's
    source in embedded mode; without it (a replica's fallback) budget checks read 0."""

    def __init__(
        self,
        buckets: MemoryBucketStore | None = None,
        slots: MemoryConcurrencyStore | None = None,
        spend: BudgetGate | None = None,
    ) -> None:
        # `is None`, not `or`: an empty MemoryBucketStore is falsy (it has a length).
        self.buckets = MemoryBucketStore() if buckets is None else buckets
        self.slots = MemoryConcurrencyStore() if slots is None else slots
        self._spend = spend

    async def admit(self, request: AdmitRequest) -> Verdict:
        spent = 0.0
        check = request.budget
        if check is not None and self._spend is not None:
            spent = await self._spend.spent(request.org, check.period)
            if check.enforced and spent >= check.limit_usd:
                return Verdict(BUDGET, _NO_READINGS, (), (), spent)
        return self._decide(request, spent)  # no await from here on

    async def settle(self, batch: Sequence[Settlement]) -> dict[str, float]:
        spend: defaultdict[tuple[str, str], float] = defaultdict(float)
        for item in batch:
            for a in item.adjusts:
                self.buckets.adjust(_name(item.org, a.key), a.capacity, a.refill_per_s, a.delta)
            for key in item.releases:
                self.slots.release(_name(item.org, key), item.holder)
            if item.usd:
                spend[item.org, item.period] += item.usd
        if not spend or self._spend is None:
            return {}
        return await _charge(self._spend, spend)

    async def ping(self) -> None:
        """Always usable: there is nothing to reach."""

    def _decide(self, request: AdmitRequest, spent: float) -> Verdict:
        now, org, holder = self.buckets.clock(), request.org, request.holder
        specs = request.buckets
        bucket.require_distinct([*specs, *request.shadow])
        names = [_name(org, spec.key) for spec in specs]
        tokens = [self.buckets.tokens(n, s, now) for n, s in zip(names, specs, strict=True)]
        if not all(bucket.admits(t, spec) for t, spec in zip(tokens, specs, strict=True)):
            return Verdict(RATE, bucket.admission(specs, tokens, False), (), (), spent)
        slots = [(_name(org, s.key), s) for s in request.slots]
        free = tuple(self.slots.free(name, s.limit, holder) for name, s in slots)
        if not all(ok or not s.enforced for ok, s in zip(free, request.slots, strict=True)):
            return Verdict(CONCURRENCY, bucket.admission(specs, tokens, False), (), free, spent)
        for name, spec, t in zip(names, specs, tokens, strict=True):
            self.buckets.charge(name, spec, t, now)
        shadow = tuple(self._take_alone(_name(org, spec.key), spec, now) for spec in request.shadow)
        for ok, (name, s) in zip(free, slots, strict=True):
            if ok:
                self.slots.acquire(name, s.limit, holder)
        return Verdict("", bucket.admission(specs, tokens, True), shadow, free, spent)

    def _take_alone(self, name: str, spec: BucketSpec, now: float) -> bool:
        tokens = self.buckets.tokens(name, spec, now)
        if not bucket.admits(tokens, spec):
            return False
        self.buckets.charge(name, spec, tokens, now)
        return True


def _name(org: str, key: str) -> str:
    # Keys are per org, as in Redis; '{' never occurs in an org id.
    return f"{{{org}}}:{key}"


async def _charge(gate: BudgetGate, spend: dict[tuple[str, str], float]) -> dict[str, float]:
    totals: dict[str, float] = {}
    failed: LimiterBackendError | None = None
    for (org, period), usd in spend.items():
        try:
            totals[org] = await gate.charge(org, period, usd)
        except LimiterBackendError as exc:
            failed = exc  # the other orgs' spend still counts
    if failed is not None:
        raise failed
    return totals


__all__ = ["MemoryAdmissionStore", "MemoryBucketStore", "MemoryConcurrencyStore"]
