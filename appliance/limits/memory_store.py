"""In-process token buckets (embedded mode): the bucket math over a dict.

No locks: everything runs on one event loop and no method awaits between reading and writing
a bucket, so a take is atomic with respect to every other take and adjust.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence

from appliance.limits import bucket
from appliance.limits.bucket import BucketState
from appliance.limits.ports import Admission, BucketSpec

_SWEEP_EVERY = 1024


class MemoryBucketStore:
    """A `BucketStore` that forgets buckets once they have refilled (a forgotten one is full)."""

    def __init__(
        self, clock: Callable[[], float] = time.monotonic, sweep_every: int = _SWEEP_EVERY
    ) -> None:
        self._clock = clock
        self._sweep_every = sweep_every
        # key -> (state, when it is full again); past that time the entry means "full".
        self._buckets: dict[str, tuple[BucketState, float]] = {}
        self._ops_since_sweep = 0

    def __len__(self) -> int:
        """How many buckets are remembered (for tests and metrics)."""
        return len(self._buckets)

    async def take(self, specs: Sequence[BucketSpec]) -> Admission:
        now = self._clock()
        states = [self._get(spec.key, now) for spec in specs]
        result, charged = bucket.take(states, specs, now)
        if charged is not None:
            for spec, state in zip(specs, charged, strict=True):
                self._put(spec.key, state, spec.capacity, spec.refill_per_s)
        self._tick(now)
        return result

    async def adjust(self, key: str, capacity: float, refill_per_s: float, delta: float) -> None:
        now = self._clock()
        state = bucket.adjust(self._get(key, now), capacity, refill_per_s, delta, now)
        self._put(key, state, capacity, refill_per_s)
        self._tick(now)

    async def ping(self) -> None:
        """Always usable: there is nothing to reach."""

    def _get(self, key: str, now: float) -> BucketState | None:
        entry = self._buckets.get(key)
        if entry is None or entry[1] <= now:
            return None  # as if forgotten already, like an expired Redis key
        return entry[0]

    def _put(self, key: str, state: BucketState, capacity: float, refill_per_s: float) -> None:
        self._buckets[key] = (state, bucket.full_at(state, capacity, refill_per_s))

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


__all__ = ["MemoryBucketStore"]
