"""The concurrency-slot part of the AdmissionStore contract, in-process and on real valkey."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable

import pytest
import redis.asyncio as aioredis

from appliance.limits.concurrency import LeaseKeeper
from appliance.limits.memory_store import MemoryAdmissionStore
from appliance.limits.ports import (
    AdmissionStore,
    AdmitRequest,
    LimiterBackendError,
    Settlement,
    SlotSpec,
)
from appliance.limits.redis_store import RedisAdmissionStore
from tests.services import RedisServer

ORG = "acme"


class Slots:
    """Acquires and releases of concurrency slots alone, through an AdmissionStore."""

    def __init__(self, store: AdmissionStore) -> None:
        self.store = store

    async def acquire(self, key: str, limit: int, holder: str) -> bool:
        verdict = await self.store.admit(AdmitRequest(ORG, holder, slots=(SlotSpec(key, limit),)))
        return not verdict.refused

    async def release(self, key: str, holder: str) -> None:
        await self.store.settle([Settlement(ORG, holder, releases=(key,))])


# Builds n stores sharing one set of slots: n replicas (Redis) or one process (memory).
Replicas = Callable[[int], list[Slots]]


@pytest.fixture
def prefix() -> str:
    return f"test-{uuid.uuid4().hex}:"


@pytest.fixture
async def clients(redis_server: RedisServer) -> AsyncIterator[list[aioredis.Redis]]:
    """Redis clients, one per simulated replica; all closed at teardown."""
    made: list[aioredis.Redis] = []
    yield made
    for client in made:
        await client.aclose()


@pytest.fixture(params=["pooled", "shared"])
def multiplex(request: pytest.FixtureRequest) -> bool:
    return bool(request.param == "shared")


@pytest.fixture
async def redis_store(
    redis_server: RedisServer,
    clients: list[aioredis.Redis],
    prefix: str,
) -> AsyncIterator[Callable[..., RedisAdmissionStore]]:
    """A new replica: its own client and store over the test's key prefix, its calls on
    pooled connections or on one shared connection (redis_mux: a standalone Redis's)."""
    made: list[RedisAdmissionStore] = []

    def make(
        lease_s: float = 60.0, timeout_s: float = 5.0, multiplex: bool = False
    ) -> RedisAdmissionStore:
        clients.append(aioredis.Redis.from_url(redis_server.url))
        made.append(
            RedisAdmissionStore(
                clients[-1],
                prefix=prefix,
                lease_s=lease_s,
                timeout_s=timeout_s,
                multiplex=multiplex,
            )
        )
        return made[-1]

    yield make
    for store in made:
        await store.aclose()


@pytest.fixture(params=["memory", "redis", "redis-shared"])
def replicas(request: pytest.FixtureRequest) -> Replicas:
    if request.param == "memory":
        shared = Slots(MemoryAdmissionStore())
        return lambda n: [shared] * n
    make: Callable[..., RedisAdmissionStore] = request.getfixturevalue("redis_store")
    multiplex = request.param == "redis-shared"
    return lambda n: [Slots(make(multiplex=multiplex)) for _ in range(n)]


async def test_limit_holds_and_release_frees(replicas: Replicas) -> None:
    """Up to `limit` holders get a slot, the next is refused, and a release makes room."""
    [store] = replicas(1)
    assert [await store.acquire("org:acme", 2, h) for h in ("r1", "r2", "r3")] == [
        True,
        True,
        False,
    ]
    await store.release("org:acme", "r1")
    assert await store.acquire("org:acme", 2, "r3")
    assert not await store.acquire("org:acme", 2, "r4")


async def test_reacquire_is_idempotent_and_unknown_release_harmless(replicas: Replicas) -> None:
    """The same holder acquiring twice keeps one slot; releasing a stranger changes nothing."""
    [store] = replicas(1)
    assert await store.acquire("k", 2, "r1")
    assert await store.acquire("k", 2, "r1")
    await store.release("k", "nobody")
    await store.release("never-used", "nobody")
    assert await store.acquire("k", 2, "r2")
    assert not await store.acquire("k", 2, "r3")


async def test_keys_are_independent(replicas: Replicas) -> None:
    """Slots of one key do not count against another."""
    [store] = replicas(1)
    assert await store.acquire("org:a", 1, "r1")
    assert await store.acquire("org:b", 1, "r2")
    assert not await store.acquire("org:a", 1, "r3")


async def test_concurrent_acquires_from_three_replicas_admit_exactly_limit(
    replicas: Replicas,
) -> None:
    """60 concurrent acquires spread over 3 replicas get exactly `limit` slots."""
    stores = replicas(3)
    attempts = [(stores[i % 3], f"r{i}") for i in range(60)]
    got = await asyncio.gather(*(s.acquire("org:acme", 7, h) for s, h in attempts))
    assert sum(got) == 7
    winners = [(s, h) for (s, h), ok in zip(attempts, got, strict=True) if ok]
    await asyncio.gather(*(s.release("org:acme", h) for s, h in winners))
    again = await asyncio.gather(*(s.acquire("org:acme", 7, h) for s, h in attempts))
    assert sum(again) == 7


async def test_a_shadow_slot_is_taken_when_free_and_never_refuses(replicas: Replicas) -> None:
    """A shadow concurrency limit holds a slot while it has room and reports a full one,
    but admits the request either way."""
    [slots] = replicas(1)
    shadow = (SlotSpec("k", 1, enforced=False),)
    first = await slots.store.admit(AdmitRequest(ORG, "r1", slots=shadow))
    second = await slots.store.admit(AdmitRequest(ORG, "r2", slots=shadow))
    assert (first.refused, first.slots) == ("", (True,))
    assert (second.refused, second.slots) == ("", (False,))
    assert not await slots.acquire("k", 1, "r3")  # r1 holds the one slot


async def test_crashed_replicas_slots_come_back_after_the_lease(
    redis_store: Callable[..., RedisAdmissionStore], multiplex: bool
) -> None:
    """Slots a replica never released (it crashed) are free again once their lease lapses."""
    crashed, survivor = (
        Slots(redis_store(lease_s=0.3, multiplex=multiplex)),
        Slots(redis_store(lease_s=0.3, multiplex=multiplex)),
    )
    assert await crashed.acquire("k", 2, "a1")
    assert await crashed.acquire("k", 2, "a2")
    assert not await survivor.acquire("k", 2, "b1")
    await asyncio.sleep(0.45)
    assert await survivor.acquire("k", 2, "b1")
    assert await survivor.acquire("k", 2, "b2")


async def test_renew_keeps_a_slot_past_its_first_lease(
    redis_store: Callable[..., RedisAdmissionStore], multiplex: bool
) -> None:
    """Renewing pushes a live lease forward; a lapsed lease is not revived by renew()."""
    holder, other = (
        redis_store(lease_s=0.5, multiplex=multiplex),
        Slots(redis_store(lease_s=0.5, multiplex=multiplex)),
    )
    key = holder.slot_key(ORG, "k")
    assert await Slots(holder).acquire("k", 1, "stream")
    for _ in range(6):  # 0.9 s in all, well past the first 0.5 s lease
        await asyncio.sleep(0.15)
        assert await holder.renew([(key, "stream")]) == 1
    assert not await other.acquire("k", 1, "late")
    await asyncio.sleep(0.65)
    assert await holder.renew([(key, "stream"), (key, "unknown")]) == 0
    assert await other.acquire("k", 1, "late")
    assert await holder.renew([]) == 0


async def test_renew_covers_many_orgs_in_one_round_trip(
    redis_store: Callable[..., RedisAdmissionStore], multiplex: bool
) -> None:
    """Leases of several orgs are renewed together (one script per org, one pipeline)."""
    store = redis_store(lease_s=0.5, multiplex=multiplex)
    for org in ("a", "b", "c"):
        verdict = await store.admit(AdmitRequest(org, "r", slots=(SlotSpec("k", 1),)))
        assert not verdict.refused
    assert sorted(store.held()) == sorted((store.slot_key(o, "k"), "r") for o in "abc")
    assert await store.renew(store.held()) == 3


async def test_lease_keeper_renews_held_slots_until_stopped(
    redis_store: Callable[..., RedisAdmissionStore], multiplex: bool
) -> None:
    """A running LeaseKeeper keeps this replica's slots; once stopped, they lapse."""
    store = redis_store(lease_s=0.6, multiplex=multiplex)
    holder, other = Slots(store), Slots(redis_store(lease_s=0.6, multiplex=multiplex))
    keeper = LeaseKeeper(store)  # renews every 0.2 s
    assert await holder.acquire("k", 2, "s1")
    assert await holder.acquire("k", 2, "s2")
    await holder.release("k", "s2")
    assert store.held() == [(store.slot_key(ORG, "k"), "s1")]
    keeper.start()
    try:
        await asyncio.sleep(1.5)
        assert await keeper.renew_once() == 1
        assert not await other.acquire("k", 1, "x")
    finally:
        await keeper.stop()
    await asyncio.sleep(0.75)
    assert await other.acquire("k", 1, "x")


async def test_idle_keys_expire(
    redis_store: Callable[..., RedisAdmissionStore], clients: list[aioredis.Redis], multiplex: bool
) -> None:
    """A slot's ZSET (org-tagged) carries a TTL no shorter than its lease and vanishes once
    it lapses."""
    store = redis_store(lease_s=0.3, multiplex=multiplex)
    await Slots(store).acquire("k", 3, "r1")
    client = clients[-1]
    key = store.slot_key(ORG, "k")
    assert key.endswith("cc:{acme}:k")
    assert 0 < await client.pttl(key) <= 300
    assert await client.zscore(key, "r1") is not None
    await asyncio.sleep(0.4)
    assert await client.exists(key) == 0


async def test_failed_acquire_is_not_tracked(
    redis_store: Callable[..., RedisAdmissionStore], multiplex: bool
) -> None:
    """Only slots actually taken are remembered for renewal."""
    store = redis_store(multiplex=multiplex)
    slots = Slots(store)
    assert await slots.acquire("k", 1, "r1")
    assert not await slots.acquire("k", 1, "r2")
    assert store.held() == [(store.slot_key(ORG, "k"), "r1")]
    await slots.release("k", "r1")
    assert store.held() == []


async def test_redis_outage_fails_fast_and_recovers(
    redis_server: RedisServer, redis_store: Callable[..., RedisAdmissionStore], multiplex: bool
) -> None:
    """With valkey stopped every call raises LimiterBackendError within 0.5 s; after a
    restart (scripts gone: NOSCRIPT) acquire works again."""
    store = redis_store(timeout_s=0.2, multiplex=multiplex)
    slots = Slots(store)
    assert await slots.acquire("k", 1, "r1")
    redis_server.stop()
    calls: list[Callable[[], Awaitable[object]]] = [
        lambda: slots.acquire("k", 1, "r2"),
        lambda: store.renew(store.held()),
        lambda: slots.release("k", "r1"),
        store.ping,
    ]
    for call in calls:
        started = time.monotonic()
        with pytest.raises(LimiterBackendError, match="redis"):
            await call()
        assert time.monotonic() - started < 0.5
    assert store.held() == []  # a failed release still stops renewing
    redis_server.start()
    deadline = time.monotonic() + 5.0
    while True:
        try:
            assert await slots.acquire("k", 1, "r3")
            break
        except LimiterBackendError:
            if time.monotonic() > deadline:
                raise
            await asyncio.sleep(0.05)


async def test_frozen_redis_times_out(
    redis_server: RedisServer, redis_store: Callable[..., RedisAdmissionStore], multiplex: bool
) -> None:
    """A valkey that stops answering fails acquire at the timeout instead of hanging."""
    store = redis_store(timeout_s=0.2, multiplex=multiplex)
    await store.ping()
    redis_server.pause()
    try:
        started = time.monotonic()
        with pytest.raises(LimiterBackendError, match="TimeoutError"):
            await Slots(store).acquire("k", 1, "r1")
        assert time.monotonic() - started < 0.5
    finally:
        redis_server.resume()


def test_lease_must_be_positive(redis_store: Callable[..., RedisAdmissionStore]) -> None:
    """A zero lease would free every slot at once, so it is refused."""
    with pytest.raises(ValueError, match="lease_s"):
        redis_store(lease_s=0)
