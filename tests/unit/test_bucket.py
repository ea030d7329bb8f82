"""Token-bucket math (appliance/limits/bucket.py) with `now` as a plain number."""

from __future__ import annotations

import math
from collections.abc import Sequence

import pytest
from hypothesis import given
from hypothesis import strategies as st

from appliance.limits import bucket
from appliance.limits.bucket import BucketState
from appliance.limits.ports import Admission, BucketSpec


def spec(
    key: str = "b", capacity: float = 10.0, refill: float = 2.0, cost: float = 1.0
) -> BucketSpec:
    return BucketSpec(key=key, capacity=capacity, refill_per_s=refill, cost=cost)


class Buckets:
    """A dict of states driven through bucket.take/adjust, like the in-process store."""

    def __init__(self) -> None:
        self.states: dict[str, BucketState] = {}

    def take(self, now: float, *specs: BucketSpec) -> Admission:
        result, charged = bucket.take([self.states.get(s.key) for s in specs], specs, now)
        if charged is not None:
            self.states.update(zip((s.key for s in specs), charged, strict=True))
        return result

    def adjust(self, now: float, s: BucketSpec, delta: float) -> None:
        self.states[s.key] = bucket.adjust(
            self.states.get(s.key), s.capacity, s.refill_per_s, delta, now
        )


def test_new_bucket_starts_full_and_is_charged_its_cost() -> None:
    """A never-seen bucket is full; an admitted take leaves capacity - cost and a reset time."""
    [reading] = Buckets().take(0.0, spec(cost=3)).readings
    assert (reading.remaining, reading.reset_s, reading.retry_after_s) == (7.0, 1.5, 0.0)


def test_refill_is_continuous_and_capped_at_capacity() -> None:
    """Tokens grow at refill_per_s with elapsed time and never beyond capacity."""
    buckets = Buckets()
    buckets.take(0.0, spec(cost=10))
    assert buckets.take(1.25, spec(cost=0)).readings[0].remaining == 2.5
    assert buckets.take(100.0, spec(cost=0)).readings[0].remaining == 10.0


def test_a_burst_admits_exactly_capacity() -> None:
    """With no time passing, exactly `capacity` unit-cost takes are admitted."""
    buckets = Buckets()
    admitted = [buckets.take(5.0, spec()).admitted for _ in range(15)]
    assert admitted == [True] * 10 + [False] * 5


def test_denial_charges_nothing_and_retry_after_is_exact() -> None:
    """A denied take leaves the state alone; after retry_after_s the same take is admitted."""
    buckets = Buckets()
    buckets.take(0.0, spec(cost=9.5))  # 0.5 left
    before = dict(buckets.states)
    denied = buckets.take(0.0, spec(cost=2))
    assert not denied.admitted
    assert buckets.states == before
    assert denied.readings[0].remaining == 0.5
    assert denied.retry_after_s == 0.75  # (2 - 0.5) / 2
    assert not buckets.take(0.74, spec(cost=2)).admitted
    assert buckets.take(0.75, spec(cost=2)).admitted


def test_all_or_nothing_across_buckets() -> None:
    """One empty bucket denies the request and no bucket is charged; readings say which."""
    buckets = Buckets()
    rpm, tpm = spec("rpm", capacity=5), spec("tpm", capacity=100, refill=10, cost=100)
    assert buckets.take(0.0, tpm).admitted
    result = buckets.take(0.0, rpm, tpm)
    assert not result.admitted
    assert "rpm" not in buckets.states
    assert [r.key for r in result.readings] == ["rpm", "tpm"]
    assert [r.retry_after_s for r in result.readings] == [0.0, 10.0]
    assert [r.remaining for r in result.readings] == [5.0, 0.0]
    assert result.retry_after_s == 10.0


def test_cost_above_capacity_is_admitted_when_full_then_empties_it() -> None:
    """A request larger than the burst passes a full bucket and empties it, without debt."""
    buckets = Buckets()
    [reading] = buckets.take(0.0, spec(cost=25)).readings
    assert (reading.remaining, reading.reset_s) == (0.0, 5.0)
    later = buckets.take(0.25, spec(cost=1))
    assert not later.admitted
    assert later.readings[0].remaining == 0.5
    assert later.retry_after_s == 0.25  # (1 - 0.5) / 2
    assert buckets.take(0.5, spec(cost=1)).admitted


def test_cost_above_capacity_waits_for_a_full_bucket() -> None:
    """A large request is denied until the bucket is full, and retry_after says when."""
    buckets = Buckets()
    buckets.take(0.0, spec(cost=4))
    denied = buckets.take(0.0, spec(cost=25))
    assert not denied.admitted
    assert denied.retry_after_s == 2.0  # (min(25, 10) - 6) / 2
    assert buckets.take(2.0, spec(cost=25)).admitted


def test_adjust_stops_at_empty_and_caps_refunds() -> None:
    """adjust subtracts down to 0 and adds up to capacity; an absent bucket starts full."""
    buckets, s = Buckets(), spec()
    buckets.adjust(0.0, s, -30)
    assert buckets.states["b"] == BucketState(0.0, 0.0)
    buckets.adjust(1.0, s, 5)
    assert buckets.states["b"] == BucketState(7.0, 1.0)
    buckets.adjust(2.0, s, 1000)
    assert buckets.states["b"] == BucketState(10.0, 2.0)


def test_no_wait_is_longer_than_one_full_refill() -> None:
    """However much a settlement overshoots, a request within capacity waits at most
    capacity / refill (Retry-After never locks a key out for longer than a minute's refill)."""
    buckets, s = Buckets(), spec(cost=10)
    buckets.take(0.0, s)
    buckets.adjust(0.0, s, -1e12)  # a backend reporting absurd usage
    denied = buckets.take(0.0, s)
    assert not denied.admitted
    assert denied.retry_after_s == 5.0  # capacity 10 / refill 2


def test_a_clock_stepping_back_neither_refills_nor_drains() -> None:
    """If `now` goes backwards the tokens stay as they were."""
    state = BucketState(3.0, 100.0)
    assert bucket.refilled(state, 10.0, 2.0, 90.0) == 3.0


def test_full_at_and_a_bucket_that_never_refills() -> None:
    """full_at is when refill reaches capacity; with no refill the waits are infinite."""
    assert bucket.full_at(BucketState(4.0, 10.0), 10.0, 2.0) == 13.0
    [reading] = bucket.take([BucketState(0.0, 0.0)], [spec(refill=0)], 5.0)[0].readings
    assert reading.retry_after_s == math.inf
    assert reading.reset_s == math.inf


def test_a_take_names_each_bucket_once() -> None:
    """Repeating a key in one take is a programming error, not a silent single charge."""
    with pytest.raises(ValueError, match="once"):
        bucket.take([None, None], [spec(), spec()], 0.0)


# -- properties -----------------------------------------------------------------------------
capacities = st.floats(min_value=0.5, max_value=1000)
refills = st.floats(min_value=0.001, max_value=100)
steps = st.floats(min_value=0, max_value=5)
costs = st.floats(min_value=0.01, max_value=2000)


def _admitted_takes(
    capacity: float, refill: float, ops: Sequence[tuple[float, float]]
) -> list[tuple[float, float]]:
    buckets, now, admitted = Buckets(), 0.0, []
    for step, cost in ops:
        now += step
        if buckets.take(now, spec(capacity=capacity, refill=refill, cost=cost)).admitted:
            admitted.append((now, cost))
    return admitted


# The bound, proved: order the admitted takes with times in [t0, t1] as 1..k. Tokens before
# take 1 are <= capacity; an admitted take i removes c_i when c_i <= capacity, and empties a
# full bucket (removes capacity) when c_i > capacity; denials change nothing; refill (capped)
# adds at most refill*(t_k - t_1); take k needs at least min(c_k, capacity) before it. So
# with e_i = c_i - max(0, c_i - capacity), what each take removes at least:
#   e_1 + ... + e_k <= capacity + refill*(t1 - t0), hence
#   c_1 + ... + c_k <= capacity + refill*(t1 - t0) + sum of max(0, c_i - capacity).
# When costs are <= capacity (the limiter refuses tpm requests above it) the classic bound
# capacity + refill*(t1 - t0) holds exactly; each overdraw needs a full bucket first.
@given(capacities, refills, st.lists(st.tuples(steps, costs), max_size=60))
def test_admitted_cost_in_any_window_is_bounded(
    capacity: float, refill: float, ops: list[tuple[float, float]]
) -> None:
    """Admitted cost over [t0, t1] <= capacity + refill*(t1 - t0) + each cost's excess."""
    admitted = _admitted_takes(capacity, refill, ops)
    times = sorted({t for t, _ in admitted})
    for i, t0 in enumerate(times):
        for t1 in times[i:]:
            window = [c for t, c in admitted if t0 <= t <= t1]
            overdraft = sum(max(0.0, c - capacity) for c in window)
            bound = capacity + refill * (t1 - t0) + overdraft
            assert sum(window) <= bound * (1 + 1e-9) + 1e-9
            if all(c <= capacity for c in window):  # the classic bound
                assert sum(window) <= (capacity + refill * (t1 - t0)) * (1 + 1e-9) + 1e-9


@given(
    capacities,
    refills,
    st.lists(st.tuples(steps, costs, st.floats(min_value=-2000, max_value=2000)), max_size=60),
)
def test_remaining_never_exceeds_capacity(
    capacity: float, refill: float, ops: list[tuple[float, float, float]]
) -> None:
    """Under any mix of takes and adjusts, no reading shows more than capacity, waits are >= 0."""
    buckets, now = Buckets(), 0.0
    for step, cost, delta in ops:
        now += step
        s = spec(capacity=capacity, refill=refill, cost=cost)
        buckets.adjust(now, s, delta)
        for reading in buckets.take(now, s).readings:
            assert reading.remaining <= capacity
            assert reading.reset_s >= 0
            assert reading.retry_after_s >= 0
        assert buckets.states["b"].tokens <= capacity


@given(capacities, refills, st.lists(st.tuples(steps, costs), min_size=1, max_size=30))
def test_retry_after_is_exact_for_every_denial(
    capacity: float, refill: float, ops: list[tuple[float, float]]
) -> None:
    """A denied take is admitted at now + retry_after_s and denied just before (float slack)."""
    buckets, now = Buckets(), 0.0
    for step, cost in ops:
        now += step
        s = spec(capacity=capacity, refill=refill, cost=cost)
        state = buckets.states.get("b")
        result, _ = bucket.take([state], [s], now)
        wait = result.retry_after_s
        if not result.admitted:
            assert bucket.take([state], [s], now + wait * (1 + 1e-9) + 1e-9)[0].admitted
            if wait * refill > 1e-6:  # otherwise the gap drowns in rounding
                assert not bucket.take([state], [s], now + wait * (1 - 1e-6))[0].admitted
        buckets.take(now, s)
