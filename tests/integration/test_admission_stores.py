"""The AdmissionStore contract as a whole (budget, buckets, slots, settlement), in-process
and on real valkey, plus the Redis store's spend keys."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass

import pytest
import redis.asyncio as aioredis

from appliance.limits.budget import end_of_period
from appliance.limits.budget_gate import BudgetGate
from appliance.limits.memory_store import MemoryAdmissionStore
from appliance.limits.ports import (
    BUDGET,
    CONCURRENCY,
    RATE,
    Adjust,
    AdmissionStore,
    AdmitRequest,
    BucketSpec,
    LimiterBackendError,
    Settlement,
    SlotSpec,
    SpendCheck,
)
from appliance.limits.redis_store import RETENTION_AFTER_PERIOD_S, RedisAdmissionStore
from tests.services import RedisServer

# Far-future periods: a Redis key for a long-past month would expire the moment it is written.
MONTH, NEXT_MONTH = "2099-01", "2099-02"
SLOW = 0.001  # tokens per second


def bucket(key: str, capacity: float = 10, cost: float = 1) -> BucketSpec:
    return BucketSpec(key=key, capacity=capacity, refill_per_s=SLOW, cost=cost)


class DictSpend:
    """A SpendStore in a dict (the SQLite store's contract is tested on its own)."""

    def __init__(self) -> None:
        self.totals: dict[tuple[str, str], float] = {}

    async def spent(self, org: str, period: str) -> float:
        return self.totals.get((org, period), 0.0)

    async def add(self, org: str, period: str, usd: float) -> float:
        self.totals[org, period] = self.totals.get((org, period), 0.0) + usd
        return self.totals[org, period]


@dataclass
class Store:
    store: AdmissionStore
    org: str  # unique per test: Redis is shared by the session


@pytest.fixture(params=["memory", "redis", "redis-shared"])
async def subject(request: pytest.FixtureRequest) -> AsyncIterator[Store]:
    """redis-shared: the store's calls on one shared connection (a standalone Redis's)."""
    org = f"org-{uuid.uuid4().hex[:8]}"
    if request.param == "memory":
        yield Store(MemoryAdmissionStore(spend=BudgetGate(DictSpend(), lambda: 0.0, 0.0)), org)
        return
    server: RedisServer = request.getfixturevalue("redis_server")
    client = aioredis.Redis.from_url(server.url)
    store = RedisAdmissionStore(client, timeout_s=5.0, multiplex=request.param == "redis-shared")
    try:
        yield Store(store, org)
    finally:
        await store.aclose()
        await client.aclose()


@pytest.fixture
async def client(redis_server: RedisServer) -> AsyncIterator[aioredis.Redis]:
    client = aioredis.Redis.from_url(redis_server.url)
    yield client
    await client.aclose()


def spend(org: str, usd: float, period: str = MONTH) -> Settlement:
    return Settlement(org, usd=usd, period=period)


async def test_budget_refuses_first_and_charges_nothing(subject: Store) -> None:
    """An org at its budget is refused as such before any bucket or slot is looked at, and
    its buckets and slots are untouched."""
    store, org = subject.store, subject.org
    await store.settle([spend(org, 2.5)])
    request = AdmitRequest(org, "r1", (bucket("rpm", capacity=1),), slots=(SlotSpec("cc", 1),))
    refused = await store.admit(
        AdmitRequest(org, "r1", request.buckets, slots=request.slots, budget=SpendCheck(MONTH, 2.5))
    )
    assert (refused.refused, refused.spent_usd, refused.slots) == (BUDGET, 2.5, ())
    admitted = await store.admit(AdmitRequest(org, "r2", request.buckets, slots=request.slots))
    assert (admitted.refused, admitted.slots) == ("", (True,))  # the one token and slot left


async def test_within_budget_is_admitted_and_reports_spend(subject: Store) -> None:
    """Spend below the budget admits and reports the spend read in the same step; a shadow
    budget reports it without refusing."""
    store, org = subject.store, subject.org
    await store.settle([spend(org, 1.0), spend(org, 0.5)])
    within = await store.admit(AdmitRequest(org, "r", budget=SpendCheck(MONTH, 2.0)))
    shadow = await store.admit(
        AdmitRequest(org, "r", budget=SpendCheck(MONTH, 1.0, enforced=False))
    )
    assert within.refused == shadow.refused == ""
    assert within.spent_usd == shadow.spent_usd == pytest.approx(1.5)


async def test_rate_refusal_takes_no_slot(subject: Store) -> None:
    """A request refused by a bucket holds no concurrency slot."""
    store, org = subject.store, subject.org
    slot = (SlotSpec("cc", 1),)
    await store.admit(AdmitRequest(org, "r0", (bucket("tpm", cost=10),)))
    refused = await store.admit(AdmitRequest(org, "r1", (bucket("tpm"),), slots=slot))
    assert (refused.refused, refused.slots) == (RATE, ())
    assert not refused.buckets.admitted
    assert (await store.admit(AdmitRequest(org, "r2", slots=slot))).slots == (True,)


async def test_concurrency_refusal_charges_no_bucket(subject: Store) -> None:
    """A request refused for lack of a slot leaves every bucket as it was."""
    store, org = subject.store, subject.org
    slot = (SlotSpec("cc", 1),)
    await store.admit(AdmitRequest(org, "r0", slots=slot))
    refused = await store.admit(AdmitRequest(org, "r1", (bucket("rpm", capacity=3),), slots=slot))
    assert (refused.refused, refused.slots) == (CONCURRENCY, (False,))
    probe = await store.admit(AdmitRequest(org, "r2", (bucket("rpm", capacity=3, cost=0),)))
    assert probe.buckets.readings[0].remaining == pytest.approx(3, abs=1e-3)


async def test_shadow_buckets_are_charged_alone_and_never_refuse(subject: Store) -> None:
    """A shadow bucket is charged when it admits, reports when it would not, and never
    refuses the request or stops the enforced buckets being charged."""
    store, org = subject.store, subject.org
    shadow = (bucket("shadow-rpm", capacity=1),)
    enforced = (bucket("rpm", capacity=5),)
    first = await store.admit(AdmitRequest(org, "r1", enforced, shadow))
    second = await store.admit(AdmitRequest(org, "r2", enforced, shadow))
    assert (first.refused, first.shadow) == ("", (True,))
    assert (second.refused, second.shadow) == ("", (False,))
    assert second.buckets.readings[0].remaining == pytest.approx(3, abs=1e-3)


async def test_settle_applies_a_batch_in_order(subject: Store) -> None:
    """One settle call trues up buckets (in order, each kept within 0..capacity), releases
    slots of several holders and orgs, and returns each spending org's total."""
    store, org = subject.store, subject.org
    other = f"{org}-b"
    slot = (SlotSpec("cc", 2),)
    for holder in ("r1", "r2"):
        await store.admit(AdmitRequest(org, holder, (bucket("tpm", cost=8),), slots=slot))
    await store.admit(AdmitRequest(other, "r3", slots=(SlotSpec("cc", 1),)))
    up, down = Adjust("tpm", 10, SLOW, 30), Adjust("tpm", 10, SLOW, -4)
    totals = await store.settle(
        [
            Settlement(org, "r1", (up,), ("cc",), 1.25, MONTH),  # refund capped at 10
            Settlement(org, "r2", (down,), ("cc",), 0.25, MONTH),  # then 4 more charged
            Settlement(other, "r3", (), ("cc",), 2.0, MONTH),
        ]
    )
    assert totals == {org: pytest.approx(1.5), other: pytest.approx(2.0)}
    probe = await store.admit(AdmitRequest(org, "r4", (bucket("tpm", cost=0),), slots=slot))
    assert probe.buckets.readings[0].remaining == pytest.approx(6, abs=1e-3)
    assert probe.slots == (True,)
    full = await store.admit(AdmitRequest(org, "r5", slots=slot))
    assert full.slots == (True,)  # both earlier holders released: r4 and r5 fit in 2
    assert (await store.admit(AdmitRequest(other, "r6", slots=(SlotSpec("cc", 1),)))).slots == (
        True,
    )


async def test_settle_clamps_each_adjust_of_a_bucket_in_turn(subject: Store) -> None:
    """Several adjusts of one bucket in a batch (with another bucket's between them) apply
    one after the other, each clamped: a charge below empty stops at 0 before the refund
    that follows, and a refund above capacity stops there before the next charge."""
    store, org = subject.store, subject.org
    await store.admit(AdmitRequest(org, "r1", (bucket("a", cost=0), bucket("b", cost=0))))
    adjusts = [
        Settlement(org, "r1", (Adjust("a", 10, SLOW, -30), Adjust("b", 10, SLOW, 50))),
        Settlement(org, "r2", (Adjust("b", 10, SLOW, -3),)),
        Settlement(org, "r3", (Adjust("a", 10, SLOW, 4),)),
    ]
    await store.settle(adjusts)
    probe = await store.admit(AdmitRequest(org, "r4", (bucket("a", cost=0), bucket("b", cost=0))))
    a, b = probe.buckets.readings
    assert a.remaining == pytest.approx(4, abs=1e-3)  # 10 - 30 -> 0, then + 4 (not 0)
    assert b.remaining == pytest.approx(7, abs=1e-3)  # 10 + 50 -> 10, then - 3 (not 10)


async def test_spend_is_kept_per_org_and_period(subject: Store) -> None:
    """Spend counts per (org, period): neither another org nor another month sees it, and an
    org id holding ':' cannot collide with another's month."""
    store, org = subject.store, subject.org
    await store.settle(
        [
            spend(org, 3.0),
            spend(org, 0.25, NEXT_MONTH),
            spend(f"{org}:2099", 1.0),
        ]
    )

    async def spent(who: str, period: str = MONTH) -> float:
        verdict = await store.admit(AdmitRequest(who, "r", budget=SpendCheck(period, 1e9)))
        return verdict.spent_usd

    assert await spent(org) == pytest.approx(3.0)
    assert await spent(org, NEXT_MONTH) == pytest.approx(0.25)
    assert await spent(f"{org}:2099") == pytest.approx(1.0)
    assert await spent(f"{org}-other") == 0.0


# -- Redis store ----------------------------------------------------------------------------
async def test_redis_concurrent_settlements_lose_no_spend(
    redis_server: RedisServer, client: aioredis.Redis
) -> None:
    """200 settlements from three replicas, in batches of various sizes, add up exactly."""
    org = f"org-{uuid.uuid4().hex[:8]}"
    clients = [aioredis.Redis.from_url(redis_server.url) for _ in range(3)]
    try:
        stores = [RedisAdmissionStore(c, timeout_s=5.0) for c in clients]
        batches = [[spend(org, 0.125)] * (1 + i % 4) for i in range(80)]
        await asyncio.gather(*(stores[i % 3].settle(b) for i, b in enumerate(batches)))
    finally:
        for c in clients:
            await c.aclose()
    expected = 0.125 * sum(len(b) for b in batches)
    assert float(await client.get(f"budget:{{{org}}}:{MONTH}") or 0) == expected


async def test_redis_spend_key_is_org_tagged_and_expires_after_the_month(
    client: aioredis.Redis,
) -> None:
    """Spend lives in budget:{org}:YYYY-MM and expires 40 days after its month ends."""
    org = f"org-{uuid.uuid4().hex[:8]}"
    await RedisAdmissionStore(client, timeout_s=5.0).settle([spend(org, 1.5)])
    key = f"budget:{{{org}}}:{MONTH}"
    assert await client.get(key) == b"1.5"
    assert await client.expiretime(key) == end_of_period(MONTH) + RETENTION_AFTER_PERIOD_S


async def test_redis_spend_under_the_old_key_is_folded_in(client: aioredis.Redis) -> None:
    """Spend written before hash tags (budget:org:YYYY-MM) is moved into the tagged key the
    first time this router settles for that org and month, so an upgrade resets no budget."""
    org = f"org-{uuid.uuid4().hex[:8]}"
    old = f"budget:{org}:{MONTH}"
    await client.set(old, "4.5")
    store = RedisAdmissionStore(client, timeout_s=5.0)
    assert await store.settle([spend(org, 0.5)]) == {org: pytest.approx(5.0)}
    assert await client.exists(old) == 0
    await client.set(old, "100")  # folded once per org and month: not read again
    assert await store.settle([spend(org, 1.0)]) == {org: pytest.approx(6.0)}
    verdict = await store.admit(AdmitRequest(org, "r", budget=SpendCheck(MONTH, 6.0)))
    assert verdict.refused == BUDGET
    assert verdict.spent_usd == pytest.approx(6.0)


async def test_redis_one_orgs_error_does_not_lose_anothers_settlement(
    client: aioredis.Redis,
) -> None:
    """A batch where one org's script fails (a key of the wrong type) raises, but the other
    org's settlement in the same pipeline is applied."""
    good, bad = f"org-{uuid.uuid4().hex[:8]}", f"org-{uuid.uuid4().hex[:8]}"
    await client.set(f"rl:{{{bad}}}:tpm", "not a hash")
    store = RedisAdmissionStore(client, timeout_s=5.0)
    broken = Settlement(bad, adjusts=(Adjust("tpm", 10, SLOW, 1),))
    with pytest.raises(LimiterBackendError, match="ResponseError"):
        await store.settle([broken, spend(good, 0.75)])
    assert float(await client.get(f"budget:{{{good}}}:{MONTH}") or 0) == 0.75
