"""The token-bucket part of the AdmissionStore contract, run in-process and on real valkey."""

from __future__ import annotations

import asyncio
import inspect
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from typing import cast

import pytest
import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff

from appliance.limits.bucket import BucketState
from appliance.limits.memory_store import MemoryAdmissionStore, MemoryBucketStore
from appliance.limits.ports import (
    Adjust,
    Admission,
    AdmissionStore,
    AdmitRequest,
    BucketSpec,
    LimiterBackendError,
    Settlement,
)
from appliance.limits.redis_script import BUCKET_SHA
from appliance.limits.redis_store import RedisAdmissionStore
from tests.services import RedisServer

SLOW = 0.001  # tokens per second: refill during a test is far below any decision's margin
ORG = "acme"


def spec(key: str, capacity: float = 10, refill: float = SLOW, cost: float = 1) -> BucketSpec:
    return BucketSpec(key=key, capacity=capacity, refill_per_s=refill, cost=cost)


class Buckets:
    """Takes and adjusts of token buckets alone, through an AdmissionStore."""

    def __init__(self, store: AdmissionStore) -> None:
        self.store = store

    async def take(self, specs: Sequence[BucketSpec]) -> Admission:
        verdict = await self.store.admit(AdmitRequest(ORG, "h", buckets=tuple(specs)))
        return verdict.buckets

    async def adjust(self, key: str, capacity: float, refill: float, delta: float) -> None:
        await self.store.settle([Settlement(ORG, adjusts=(Adjust(key, capacity, refill, delta),))])

    async def ping(self) -> None:
        await self.store.ping()


def make_client(server: RedisServer, **overrides: object) -> aioredis.Redis:
    """A client with the settings app_limits.py uses (bounded pool, one quick retry)."""
    settings: dict[str, object] = {
        "max_connections": 32,
        "timeout": 2.0,  # waiting for a free pooled connection; the store's deadline is shorter
        "socket_timeout": 0.5,
        "socket_connect_timeout": 0.5,
        "health_check_interval": 10,
        "retry": Retry(NoBackoff(), 1),
    }
    settings.update(overrides)
    pool = aioredis.BlockingConnectionPool.from_url(server.url, **settings)
    return aioredis.Redis.from_pool(pool)


@pytest.fixture
def prefix() -> str:
    return f"t-{uuid.uuid4().hex}:"


@pytest.fixture
async def client(redis_server: RedisServer) -> AsyncIterator[aioredis.Redis]:
    client = make_client(redis_server)
    try:
        yield client
    finally:
        await client.aclose()


RedisBuckets = Callable[..., Buckets]


@pytest.fixture(params=["pooled", "shared"])
def multiplex(request: pytest.FixtureRequest) -> bool:
    """The store's calls on pooled connections, or on one shared connection (redis_mux:
    what a standalone Redis gets)."""
    return bool(request.param == "shared")


@pytest.fixture
async def redis_buckets(multiplex: bool) -> AsyncIterator[RedisBuckets]:
    """Makes Buckets on a Redis store (closed at teardown)."""
    made: list[RedisAdmissionStore] = []

    # Generous deadline by default: most tests are about semantics; fault tests bound time.
    def make(client: aioredis.Redis, prefix: str, timeout_s: float = 2.0) -> Buckets:
        made.append(
            RedisAdmissionStore(client, prefix=prefix, timeout_s=timeout_s, multiplex=multiplex)
        )
        return Buckets(made[-1])

    yield make
    for shared in made:
        await shared.aclose()


@pytest.fixture(params=["memory", "redis", "redis-shared"])
async def store(request: pytest.FixtureRequest, prefix: str) -> AsyncIterator[Buckets]:
    if request.param == "memory":
        yield Buckets(MemoryAdmissionStore())
        return
    client = make_client(request.getfixturevalue("redis_server"))
    shared = RedisAdmissionStore(
        client, prefix=prefix, timeout_s=2.0, multiplex=request.param == "redis-shared"
    )
    try:
        yield Buckets(shared)
    finally:
        await shared.aclose()
        await client.aclose()


# -- the contract ---------------------------------------------------------------------------
async def test_new_bucket_is_full_and_take_charges_cost(store: Buckets) -> None:
    """A never-seen bucket admits; the reading shows capacity - cost and the time to refill."""
    result = await store.take([spec("a", refill=0.01, cost=3)])
    assert result.admitted
    [reading] = result.readings
    assert (reading.key, reading.capacity, reading.retry_after_s) == ("a", 10, 0)
    assert reading.remaining == pytest.approx(7, abs=1e-3)
    assert reading.reset_s == pytest.approx(300, abs=0.5)


async def test_a_burst_admits_exactly_capacity(store: Buckets) -> None:
    """With a slow refill, exactly `capacity` unit takes pass and the rest are denied."""
    results = [(await store.take([spec("a", capacity=5)])).admitted for _ in range(8)]
    assert results == [True] * 5 + [False] * 3


async def test_denial_charges_nothing(store: Buckets) -> None:
    """A denied take leaves the tokens as they were and says how long to wait."""
    await store.take([spec("a", cost=9.5)])
    denied = await store.take([spec("a", cost=2)])
    assert not denied.admitted
    assert denied.readings[0].remaining == pytest.approx(0.5, abs=1e-3)
    assert denied.retry_after_s == pytest.approx(1.5 / SLOW, rel=1e-3)
    assert (await store.take([spec("a", cost=0.5)])).admitted


async def test_all_or_nothing_across_buckets(store: Buckets) -> None:
    """One empty bucket denies the whole request, and the other bucket is not charged."""
    await store.take([spec("tpm", capacity=100, cost=100)])
    denied = await store.take([spec("rpm", capacity=3), spec("tpm", capacity=100, cost=10)])
    assert not denied.admitted
    assert [r.key for r in denied.readings] == ["rpm", "tpm"]
    assert denied.readings[0].retry_after_s == 0
    assert denied.readings[1].retry_after_s > 0
    burst = [(await store.take([spec("rpm", capacity=3)])).admitted for _ in range(4)]
    assert burst == [True, True, True, False]


async def test_cost_above_capacity_is_admitted_when_full_then_empties_it(
    store: Buckets,
) -> None:
    """A request bigger than the burst passes a full bucket and empties it, without debt."""
    big = await store.take([spec("a", refill=0.5, cost=25)])
    assert big.admitted
    assert big.readings[0].remaining == pytest.approx(0, abs=0.01)
    after = await store.take([spec("a", refill=0.5)])
    assert not after.admitted
    assert after.retry_after_s == pytest.approx(2, abs=0.05)  # (1 - 0) / 0.5


async def test_adjust_settles_down_to_empty_and_caps_refunds(store: Buckets) -> None:
    """adjust starts a new bucket full, stops at empty, and refunds only up to capacity."""
    await store.adjust("a", 10, SLOW, -4)
    probe = await store.take([spec("a", cost=0)])
    assert probe.readings[0].remaining == pytest.approx(6, abs=1e-3)
    await store.adjust("a", 10, SLOW, -1e12)
    empty = await store.take([spec("a")])
    assert not empty.admitted
    assert empty.readings[0].remaining == pytest.approx(0, abs=1e-3)
    assert empty.retry_after_s <= 1 / SLOW  # one token's refill, not a trillion tokens' worth
    await store.adjust("a", 10, SLOW, 1000)
    full = await store.take([spec("a", cost=10)])
    assert full.admitted
    assert full.readings[0].remaining == pytest.approx(0, abs=1e-3)


async def test_refill_over_time_is_capped(store: Buckets) -> None:
    """A drained bucket refills at its rate and stops at capacity."""
    fast = spec("a", capacity=2, refill=40)
    await store.take([spec("a", capacity=2, refill=40, cost=2)])
    assert not (await store.take([fast])).admitted
    await asyncio.sleep(0.1)  # 4 tokens' worth of refill into a bucket of 2
    probe = await store.take([spec("a", capacity=2, refill=40, cost=0)])
    assert probe.readings[0].remaining == 2
    assert probe.readings[0].reset_s == 0


async def test_empty_take_is_admitted(store: Buckets) -> None:
    """A request with no buckets to pass is admitted with no readings."""
    result = await store.take([])
    assert (result.admitted, result.readings) == (True, ())


async def test_a_take_names_each_bucket_once(store: Buckets) -> None:
    """Both stores refuse a repeated key instead of charging it once."""
    with pytest.raises(ValueError, match="once"):
        await store.take([spec("a"), spec("a")])


async def test_stores_agree_on_a_mixed_sequence(
    client: aioredis.Redis, prefix: str, redis_buckets: RedisBuckets
) -> None:
    """The in-process and Redis stores reach the same decisions and readings."""
    memory, shared = Buckets(MemoryAdmissionStore()), redis_buckets(client, prefix)
    for step in range(40):
        specs = [spec("org", capacity=12, cost=step % 4), spec("key", capacity=7, cost=step % 3)]
        if step % 9 == 8:
            for store in (memory, shared):
                await store.adjust("key", 7, SLOW, 2.5 - step % 5)
        mine, theirs = await memory.take(specs), await shared.take(specs)
        assert mine.admitted == theirs.admitted
        for a, b in zip(mine.readings, theirs.readings, strict=True):
            assert a.remaining == pytest.approx(b.remaining, abs=1e-3)
            assert a.retry_after_s == pytest.approx(b.retry_after_s, abs=2.0)  # ~1 ms x 1/SLOW


async def test_ping(store: Buckets) -> None:
    """A reachable store answers ping."""
    await store.ping()


# -- in-process store -----------------------------------------------------------------------
def test_memory_store_forgets_buckets_once_full() -> None:
    """Idle buckets are swept once refilled; a bucket still refilling is kept."""
    now = [0.0]
    store = MemoryBucketStore(clock=lambda: now[0], sweep_every=4)
    store.take([spec("idle-1", refill=1, cost=2), spec("idle-2", refill=1, cost=1)])
    store.take([spec("busy", refill=1, cost=10)])
    now[0] = 5.0  # idle-* full after 2 s; busy needs 10 s
    for _ in range(2):
        store.take([spec("busy", refill=1, cost=0)])
    assert len(store) == 1
    probe = store.take([spec("busy", refill=1, cost=0)])
    assert probe.readings[0].remaining == 5


async def test_memory_store_uses_its_clock_only() -> None:
    """The in-process store refills by its injected clock, not wall time."""
    now = [100.0]
    store = Buckets(MemoryAdmissionStore(MemoryBucketStore(clock=lambda: now[0])))
    await store.take([spec("a", refill=1, cost=10)])
    assert not (await store.take([spec("a", refill=1)])).admitted
    now[0] += 1
    assert (await store.take([spec("a", refill=1)])).admitted


# -- Redis store ----------------------------------------------------------------------------
async def test_redis_state_is_an_org_tagged_hash_of_floats(
    client: aioredis.Redis, prefix: str, redis_buckets: RedisBuckets
) -> None:
    """Each bucket is one hash under prefix + rl:{org}: + key (the org is the Redis Cluster
    hash tag), tokens and Redis time stored as float text."""
    store = redis_buckets(client, prefix)
    await store.take([spec("org:acme:rpm", capacity=10, cost=2.25)])
    stored = await client.hgetall(f"{prefix}rl:{{acme}}:org:acme:rpm")
    state = BucketState(float(stored[b"tokens"]), float(stored[b"ts"]))
    assert state.tokens == pytest.approx(7.75, abs=1e-3)
    assert state.updated_at == pytest.approx(time.time(), abs=5)  # valkey runs on this host


async def test_redis_idle_keys_expire_once_refilled(
    client: aioredis.Redis, prefix: str, redis_buckets: RedisBuckets
) -> None:
    """PEXPIRE is time-to-full + 1 s, so a key lives while it refills and vanishes after."""
    store = redis_buckets(client, prefix)
    key = f"{prefix}rl:{{acme}}:a"
    await store.take([spec("a", capacity=40, refill=20, cost=2)])  # full again in 0.1 s
    assert 1000 < await client.pttl(key) <= 1100
    await store.adjust("a", 40, 20, -40)  # empty: about 2 s to full
    assert 1900 < await client.pttl(key) <= 3100
    await store.adjust("a", 40, 20, 100)  # full now
    assert 900 < await client.pttl(key) <= 1000
    started = time.monotonic()
    while await client.exists(key):
        assert time.monotonic() - started < 3, "the key outlived its refill"
        await asyncio.sleep(0.05)
    assert time.monotonic() - started > 0.8


async def test_redis_script_is_loaded_once_and_reloaded_after_flush(
    client: aioredis.Redis, prefix: str, redis_buckets: RedisBuckets
) -> None:
    """open() loads the script; after SCRIPT FLUSH (as after a restart) admit and settle
    reload it."""
    store = redis_buckets(client, prefix)
    shared = cast(RedisAdmissionStore, store.store)
    await client.script_flush()
    await shared.open()
    assert await client.script_exists(BUCKET_SHA) == [True]
    await store.take([spec("a")])
    await client.script_flush()
    assert (await store.take([spec("a")])).admitted
    assert await client.script_exists(BUCKET_SHA) == [True]
    await client.script_flush()
    await store.adjust("a", 10, SLOW, -9)
    assert not (await store.take([spec("a")])).admitted  # 10 - 1 - 1 - 9 < 1


async def test_redis_string_replies_parse_too(
    redis_server: RedisServer, prefix: str, redis_buckets: RedisBuckets
) -> None:
    """A client with decode_responses=True gets the same readings."""
    client = make_client(redis_server, decode_responses=True)
    try:
        result = await redis_buckets(client, prefix).take([spec("a")])
    finally:
        await client.aclose()
    assert result.admitted
    assert result.readings[0].remaining == pytest.approx(9, abs=1e-3)


async def test_redis_error_reply_is_a_backend_error(
    client: aioredis.Redis, prefix: str, redis_buckets: RedisBuckets
) -> None:
    """An error from Redis itself (here a key of the wrong type) becomes LimiterBackendError,
    for that call only: another request in the same pipeline is served."""
    await client.set(f"{prefix}rl:{{acme}}:a", "not a hash")
    store = redis_buckets(client, prefix)
    broken, fine = await asyncio.gather(
        store.take([spec("a")]), store.take([spec("b")]), return_exceptions=True
    )
    assert isinstance(broken, LimiterBackendError)
    assert "ResponseError" in str(broken)
    assert isinstance(fine, Admission)
    assert fine.admitted


async def assert_fails_fast(call: Callable[[], Awaitable[object]]) -> None:
    started = time.monotonic()
    with pytest.raises(LimiterBackendError):
        await call()
    assert time.monotonic() - started < 0.5


async def test_redis_stopped_fails_fast_then_recovers(
    redis_server: RedisServer, client: aioredis.Redis, prefix: str, redis_buckets: RedisBuckets
) -> None:
    """With Redis down every call raises LimiterBackendError in < 0.5 s; the same store works
    again once Redis is back (restarted empty, so without its script)."""
    store = redis_buckets(client, prefix, timeout_s=0.1)
    await store.take([spec("a", capacity=5, cost=5)])
    redis_server.stop()
    await assert_fails_fast(lambda: store.take([spec("a")]))
    await assert_fails_fast(lambda: store.adjust("a", 5, SLOW, 1))
    await assert_fails_fast(store.ping)
    redis_server.start()
    await store.ping()
    assert (await store.take([spec("a", capacity=5, cost=5)])).admitted  # valkey forgot it


async def test_redis_paused_fails_fast_then_recovers(
    redis_server: RedisServer, client: aioredis.Redis, prefix: str, redis_buckets: RedisBuckets
) -> None:
    """A frozen Redis (connections open, no answers) costs at most the timeout per call."""
    store = redis_buckets(client, prefix, timeout_s=0.1)
    shared = cast(RedisAdmissionStore, store.store)
    await shared.open()
    redis_server.pause()
    await assert_fails_fast(lambda: store.take([spec("a")]))
    await assert_fails_fast(store.ping)
    redis_server.resume()
    result = await store.take([spec("b")])
    assert result.admitted
    assert result.readings[0].key == "b"  # a reply meant for a timed-out call is never read


async def test_redis_replicas_share_one_bucket_exactly(
    redis_server: RedisServer, prefix: str, redis_buckets: RedisBuckets
) -> None:
    """Three stores on separate clients hammering one key admit exactly its capacity."""
    clients = [make_client(redis_server, max_connections=20) for _ in range(3)]
    try:
        stores = [redis_buckets(c, prefix, timeout_s=5.0) for c in clients]
        takes = [stores[i % 3].take([spec("shared", capacity=50)]) for i in range(300)]
        results = await asyncio.gather(*takes)
    finally:
        for c in clients:
            await c.aclose()
    assert sum(r.admitted for r in results) == 50


async def test_redis_decisions_ignore_the_router_clock(
    monkeypatch: pytest.MonkeyPatch,
    redis_server: RedisServer,
    prefix: str,
    redis_buckets: RedisBuckets,
) -> None:
    """The store has no clock: a replica whose wall clock is an hour ahead sees the same bucket."""
    assert "clock" not in inspect.signature(RedisAdmissionStore).parameters
    first, second = make_client(redis_server), make_client(redis_server)
    try:
        drain = spec("a", capacity=5, refill=0.01, cost=5)
        await redis_buckets(first, prefix).take([drain])
        wall_clock = time.time
        monkeypatch.setattr(time, "time", lambda: wall_clock() + 3600)
        result = await redis_buckets(second, prefix).take([spec("a", capacity=5, refill=0.01)])
    finally:
        await first.aclose()
        await second.aclose()
    assert not result.admitted  # an hour of refill at the router's clock would have filled it
    assert result.retry_after_s == pytest.approx(100, abs=1)
