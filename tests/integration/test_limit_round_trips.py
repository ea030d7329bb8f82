"""Redis round trips of the limiter: one per admitted request, settlements batched."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
import redis.asyncio as aioredis
from redis.asyncio.client import Pipeline

from appliance.app_limits import LimitParts, build_limits
from appliance.audit.events import AuditEvent
from appliance.limits.limiter import Permit
from appliance.limits.policy import LimitPolicy, build_policy
from appliance.limits.redis_mux import _Link
from appliance.settings import ApiKey, LimitSettings, Org, Settings, StateSettings
from appliance.telemetry.metrics import Metrics
from tests.services import RedisServer

PRICES = (0.5, 1.5)


class Audit:
    def __call__(self, event: AuditEvent) -> None: ...

    async def drain(self) -> None: ...


class RoundTrips:
    """Counts what the limiter's Redis client sends: each command, pipeline or send on the
    shared connection (standalone Redis: redis_mux) is one trip."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, client: aioredis.Redis | Any) -> None:
        self.count = 0
        single: Any = client.execute_command
        batch: Any = Pipeline.execute

        async def counted_command(*args: Any, **kwargs: Any) -> Any:
            self.count += 1
            return await single(*args, **kwargs)

        async def counted_pipeline(pipe: Pipeline, *args: Any, **kwargs: Any) -> Any:
            self.count += 1
            return await batch(pipe, *args, **kwargs)

        shared: Any = _Link.send

        def counted_shared(link: _Link, *args: Any, **kwargs: Any) -> Any:
            self.count += 1
            return shared(link, *args, **kwargs)

        monkeypatch.setattr(client, "execute_command", counted_command)
        monkeypatch.setattr(Pipeline, "execute", counted_pipeline)
        monkeypatch.setattr(_Link, "send", counted_shared)


async def evalsha_calls(server: RedisServer) -> int:
    """EVALSHA calls valkey has served (INFO commandstats)."""
    client = aioredis.Redis.from_url(server.url)
    try:
        stats = await client.info("commandstats")
    finally:
        await client.aclose()
    return int(stats.get("cmdstat_evalsha", {}).get("calls", 0))


@pytest.fixture
async def parts(redis_server: RedisServer, tmp_path: Path) -> AsyncIterator[LimitParts]:
    """The limiter as app.py builds it, on the session's valkey, in `closed` mode."""
    settings = Settings(
        state=StateSettings(redis_url=redis_server.url, redis_failure_mode="closed"),
        limits=LimitSettings(redis_timeout_s=2.0),
    )
    built = build_limits(settings, tmp_path, Metrics(), Audit(), {})  # type: ignore[arg-type]
    await built.open()
    try:
        yield built
    finally:
        await built.close()


@pytest.fixture
def policy() -> LimitPolicy:
    """rpm, tpm and max_concurrent on the org and the key, and a monthly budget: every
    limit there is (a new org per test, as Redis is shared)."""
    org = f"rt-{uuid.uuid4().hex[:8]}"
    return build_policy(
        Org(id=org, rpm=10**6, tpm=10**9, max_concurrent=1000, monthly_budget_usd=1e9),
        ApiKey(id=f"k-{org}", org=org, sha256="0" * 64, rpm=10**6, tpm=10**9, max_concurrent=1000),
    )


async def settled(parts: LimitParts) -> None:
    """Wait (bounded) for the background settlements."""
    await asyncio.wait_for(asyncio.gather(*list(parts.tasks)), 5)


async def measure(
    server: RedisServer, trips: RoundTrips, work: Callable[[], Awaitable[object]]
) -> tuple[int, int]:
    """Round trips and EVALSHAs that `work` caused."""
    trips_before, calls_before = trips.count, await evalsha_calls(server)
    await work()
    return trips.count - trips_before, await evalsha_calls(server) - calls_before


async def test_each_admission_is_one_round_trip(
    parts: LimitParts,
    policy: LimitPolicy,
    redis_server: RedisServer,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """With rpm, tpm and concurrency limits on org and key and a budget, admitting a request
    costs exactly one Redis round trip carrying one EVALSHA."""
    assert parts.redis is not None
    limiter = parts.limiter
    trips = RoundTrips(monkeypatch, parts.redis.client)
    warm = await limiter.admit(policy, 100, "warm-up")  # script loads, first budget read
    limiter.release(warm)
    await settled(parts)
    permits: list[Permit] = []

    async def admit_ten() -> None:
        for n in range(10):
            permits.append(await limiter.admit(policy, 100, f"r{n}"))

    assert await measure(redis_server, trips, admit_ten) == (10, 10)
    assert all(p.headers["x-ratelimit-limit-requests"] == str(10**6) for p in permits)


async def test_each_settled_request_is_at_most_one_round_trip(
    parts: LimitParts,
    policy: LimitPolicy,
    redis_server: RedisServer,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A request settled on its own (tokens trued up on two tpm buckets, spend added, two
    slots released) costs one round trip with one EVALSHA."""
    assert parts.redis is not None
    limiter = parts.limiter
    trips = RoundTrips(monkeypatch, parts.redis.client)
    for n in range(6):
        permit = await limiter.admit(policy, 100, f"r{n}")

        async def finish(permit: Permit = permit) -> None:
            limiter.settle(permit, 20, 30, PRICES)
            await asyncio.sleep(0.01)  # the response goes out between the bill and the end
            limiter.release(permit)
            await settled(parts)

        trips_used, evalshas = await measure(redis_server, trips, finish)
        # The first settlement of an org and month also moves spend from the old key
        # layout: one more EVALSHA in the same round trip.
        assert (trips_used, evalshas) == (1, 2 if n == 0 else 1)


async def test_settlements_of_concurrent_requests_share_round_trips(
    parts: LimitParts,
    policy: LimitPolicy,
    redis_server: RedisServer,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Fifty requests ending together are settled in a batch: far fewer round trips and
    EVALSHAs than requests."""
    assert parts.redis is not None
    limiter = parts.limiter
    first = await limiter.admit(policy, 100, "warm-up")
    limiter.settle(first, 1, 1, PRICES)
    limiter.release(first)
    await settled(parts)
    permits = await asyncio.gather(*(limiter.admit(policy, 100, f"r{n}") for n in range(50)))
    trips = RoundTrips(monkeypatch, parts.redis.client)

    async def finish_all() -> None:
        for permit in permits:
            limiter.settle(permit, 20, 30, PRICES)
            limiter.release(permit)
        await settled(parts)

    trips_used, evalshas = await measure(redis_server, trips, finish_all)
    assert trips_used <= 2
    assert evalshas <= 2
