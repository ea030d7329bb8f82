"""One SpendStore contract, run against SQLite files and a real valkey server."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from pathlib import Path
from typing import Protocol

import pytest
import redis.asyncio as aioredis

from appliance.limits.budget import end_of_period
from appliance.limits.ports import LimiterBackendError
from appliance.limits.spend_redis import RETENTION_AFTER_PERIOD_S, RedisSpendStore
from appliance.limits.spend_sqlite import SqliteSpendStore
from tests.services import RedisServer

# Far-future periods: a Redis key for a long-past month would expire the moment it is written.
MONTH, NEXT_MONTH = "2099-01", "2099-02"


class Store(Protocol):
    async def spent(self, org: str, period: str) -> float: ...
    async def add(self, org: str, period: str, usd: float) -> float: ...
    async def ping(self) -> None: ...


# Opens a store over the same data each time it is called (a restart, or a new client).
Opener = Callable[[], AbstractAsyncContextManager[Store]]


@pytest.fixture(params=["sqlite", "redis"])
def open_store(request: pytest.FixtureRequest, tmp_path: Path) -> Opener:
    if request.param == "sqlite":
        path = tmp_path / "state" / "spend.db"

        @asynccontextmanager
        async def sqlite() -> AsyncIterator[Store]:
            async with SqliteSpendStore(path) as store:
                yield store

        return sqlite
    server: RedisServer = request.getfixturevalue("redis_server")
    prefix = f"test-{uuid.uuid4().hex}:"

    @asynccontextmanager
    async def redis() -> AsyncIterator[Store]:
        client = blocking_client(server)
        try:
            # Generous: these tests are about correctness, the fault tests bound the time.
            yield RedisSpendStore(client, prefix=prefix, timeout_s=5.0)
        finally:
            await client.aclose()

    return redis


def blocking_client(server: RedisServer) -> aioredis.Redis:
    """A client whose callers queue for a free connection, as the router's does; the default
    pool raises MaxConnectionsError beyond 100 concurrent calls."""
    pool = aioredis.BlockingConnectionPool.from_url(server.url, max_connections=50)
    return aioredis.Redis.from_pool(pool)  # the client owns and closes the pool


@pytest.fixture
async def redis_client(redis_server: RedisServer) -> AsyncIterator[aioredis.Redis]:
    client = blocking_client(redis_server)
    yield client
    await client.aclose()


async def test_add_returns_running_total_and_spent_reads_it(open_store: Opener) -> None:
    """add() returns the new total, spent() reads it, and an unknown org has spent 0."""
    async with open_store() as store:
        assert await store.spent("acme", MONTH) == 0.0
        assert await store.add("acme", MONTH, 1.25) == pytest.approx(1.25)
        assert await store.add("acme", MONTH, 0.5) == pytest.approx(1.75)
        assert await store.spent("acme", MONTH) == pytest.approx(1.75)
        await store.ping()


async def test_refunds_subtract_and_non_finite_amounts_are_refused(open_store: Opener) -> None:
    """A negative amount lowers the total; NaN or infinity is a ValueError and changes nothing."""
    async with open_store() as store:
        await store.add("acme", MONTH, 2.0)
        assert await store.add("acme", MONTH, -0.5) == pytest.approx(1.5)
        for bad in (float("nan"), float("inf")):
            with pytest.raises(ValueError, match="finite"):
                await store.add("acme", MONTH, bad)
        assert await store.spent("acme", MONTH) == pytest.approx(1.5)


async def test_concurrent_adds_lose_nothing(open_store: Opener) -> None:
    """200 concurrent adds of 0.01 sum to 2.00, each seeing a distinct running total."""
    async with open_store() as store:
        totals = await asyncio.gather(*(store.add("acme", MONTH, 0.01) for _ in range(200)))
        assert await store.spent("acme", MONTH) == pytest.approx(2.0, abs=1e-9)
        assert sorted(totals) == pytest.approx([0.01 * i for i in range(1, 201)], abs=1e-9)
        # Binary-exact amounts leave no rounding to hide behind.
        await asyncio.gather(*(store.add("exact", MONTH, 0.125) for _ in range(200)))
        assert await store.spent("exact", MONTH) == 25.0


async def test_orgs_and_periods_are_independent(open_store: Opener) -> None:
    """Spend is kept per (org, period): neither another org nor another month sees it."""
    async with open_store() as store:
        await store.add("acme", MONTH, 3.0)
        await store.add("acme", NEXT_MONTH, 0.25)
        await store.add("globex", MONTH, 7.0)
        await store.add("acme:2099", MONTH, 1.0)  # a ':' in an org id cannot collide
        assert await store.spent("acme", MONTH) == pytest.approx(3.0)
        assert await store.spent("acme", NEXT_MONTH) == pytest.approx(0.25)
        assert await store.spent("globex", MONTH) == pytest.approx(7.0)
        assert await store.spent("acme:2099", MONTH) == pytest.approx(1.0)
        assert await store.spent("globex", NEXT_MONTH) == 0.0


async def test_spend_survives_a_reopen(open_store: Opener) -> None:
    """Spend written before a restart (SQLite) or by another client (Redis) is read back."""
    async with open_store() as store:
        await store.add("acme", MONTH, 4.5)
    async with open_store() as store:
        assert await store.spent("acme", MONTH) == pytest.approx(4.5)
        assert await store.add("acme", MONTH, 0.5) == pytest.approx(5.0)


async def test_closed_sqlite_store_fails_as_backend_error(tmp_path: Path) -> None:
    """A SQLite store used after close() raises LimiterBackendError naming the file."""
    store = SqliteSpendStore(tmp_path / "spend.db")
    async with store:
        await store.add("acme", MONTH, 1.0)
    with pytest.raises(LimiterBackendError, match=r"spend\.db"):
        await store.spent("acme", MONTH)
    with pytest.raises(LimiterBackendError):
        await store.ping()


async def test_redis_key_layout_and_expiry(redis_client: aioredis.Redis) -> None:
    """The Redis key is {prefix}{org}:{period} and expires 40 days after the month ends."""
    prefix = f"test-{uuid.uuid4().hex}:"
    store = RedisSpendStore(redis_client, prefix=prefix, timeout_s=5.0)
    await store.add("acme", MONTH, 1.5)
    key = f"{prefix}acme:{MONTH}"
    assert await redis_client.get(key) == b"1.5"
    expected = end_of_period(MONTH) + RETENTION_AFTER_PERIOD_S
    assert await redis_client.expiretime(key) == expected


async def test_redis_outage_fails_fast_and_recovers(
    redis_server: RedisServer, redis_client: aioredis.Redis
) -> None:
    """With valkey stopped every call raises LimiterBackendError within 0.5 s; after a
    restart the same store works again."""
    store = RedisSpendStore(redis_client, prefix=f"test-{uuid.uuid4().hex}:", timeout_s=0.2)
    await store.add("acme", MONTH, 1.0)
    redis_server.stop()
    calls: list[Callable[[], Awaitable[object]]] = [
        lambda: store.spent("acme", MONTH),
        lambda: store.add("acme", MONTH, 1.0),
        store.ping,
    ]
    for call in calls:
        started = time.monotonic()
        with pytest.raises(LimiterBackendError, match="redis spend store") as caught:
            await call()
        assert time.monotonic() - started < 0.5
        assert redis_server.url not in str(caught.value)
    redis_server.start()
    await _eventually(lambda: store.add("acme", MONTH, 2.0))
    # valkey runs without persistence: the restarted server starts empty.
    assert await store.spent("acme", MONTH) == pytest.approx(2.0)


async def test_redis_that_stops_answering_times_out(
    redis_server: RedisServer, redis_client: aioredis.Redis
) -> None:
    """A frozen valkey (connections open, no replies) fails calls at the timeout, not later."""
    store = RedisSpendStore(redis_client, prefix=f"test-{uuid.uuid4().hex}:", timeout_s=0.2)
    await store.ping()
    redis_server.pause()
    try:
        started = time.monotonic()
        with pytest.raises(LimiterBackendError, match="no answer within"):
            await store.add("acme", MONTH, 1.0)
        assert time.monotonic() - started < 0.5
    finally:
        redis_server.resume()
    await _eventually(store.ping)


async def _eventually(call: Callable[[], Awaitable[object]], within_s: float = 5.0) -> None:
    """Retry an async call until it succeeds (a reconnect may need a moment)."""
    deadline = time.monotonic() + within_s
    while True:
        try:
            await call()
        except LimiterBackendError:
            if time.monotonic() > deadline:
                raise
            await asyncio.sleep(0.05)
        else:
            return
