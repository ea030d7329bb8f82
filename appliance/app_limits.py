"""Composition root, limits part: the limiter and the stores it uses, embedded or on Redis.

Only `appliance.app` imports this module.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
from redis.asyncio import BlockingConnectionPool, Redis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff

from appliance.audit.sink import AuditSink
from appliance.limits.budget_gate import BudgetGate
from appliance.limits.budget_service import HttpBudgetAuthority
from appliance.limits.concurrency import LeaseKeeper, MemoryConcurrencyStore, RedisConcurrencyStore
from appliance.limits.limiter import Limiter, LimiterStores, background
from appliance.limits.memory_store import MemoryBucketStore
from appliance.limits.ports import LimiterBackendError
from appliance.limits.redis_store import RedisBucketStore
from appliance.limits.spend_redis import RedisSpendStore
from appliance.limits.spend_sqlite import SqliteSpendStore
from appliance.settings import Settings
from appliance.telemetry.limit_metrics import LimitMetrics
from appliance.telemetry.logging import get_logger
from appliance.telemetry.metrics import Metrics

_log = get_logger("routerctl.app")


@dataclass
class LimitParts:
    """The limiter and what it owns: stores, clients, background tasks."""

    limiter: Limiter
    sink: AuditSink
    spend: SqliteSpendStore | RedisSpendStore
    redis: Redis | None = None
    buckets: RedisBucketStore | None = None
    keeper: LeaseKeeper | None = None
    authority: HttpBudgetAuthority | None = None
    tasks: set[asyncio.Task[None]] = field(default_factory=set)

    async def open(self) -> None:
        if isinstance(self.spend, SqliteSpendStore):
            await self.spend.open()
        if self.buckets is not None:
            try:
                await self.buckets.open()
            except LimiterBackendError as exc:
                # Redis down at start: serve in the failure mode; the store retries itself.
                _log.warning("limiter_store_unavailable_at_start", error=str(exc))
        if self.keeper is not None:
            self.keeper.start()

    async def close(self) -> None:
        if self.keeper is not None:
            await self.keeper.stop()
        if self.tasks:
            await asyncio.gather(*self.tasks, return_exceptions=True)
        await self.sink.drain()
        if self.authority is not None:
            await self.authority.close()
        if isinstance(self.spend, SqliteSpendStore):
            await self.spend.close()
        if self.redis is not None:
            await self.redis.aclose()


def build_limits(
    settings: Settings, state_dir: Path, metrics: Metrics, sink: AuditSink
) -> LimitParts:
    """Embedded (in-process buckets, SQLite spend) or shared (Redis), chosen here only."""
    limits = settings.limits
    local_buckets, local_slots = MemoryBucketStore(), MemoryConcurrencyStore()
    tasks: set[asyncio.Task[None]] = set()
    redis: Redis | None = None
    buckets: RedisBucketStore | None = None
    keeper: LeaseKeeper | None = None
    spend: SqliteSpendStore | RedisSpendStore
    if settings.state.redis_url:
        # A blocking pool queues callers for a connection (each call is still bounded by
        # redis_timeout_s) instead of failing past max_connections.
        pool = BlockingConnectionPool.from_url(
            settings.state.redis_url,
            max_connections=64,
            timeout=2.0,
            # Each store call is bounded by redis_timeout_s; socket timeouts only clean up.
            socket_timeout=0.5,
            socket_connect_timeout=0.5,
            health_check_interval=10,
            # One immediate retry replaces a stale pooled connection after a Redis restart.
            retry=Retry(NoBackoff(), 1),
        )
        redis = Redis.from_pool(pool)
        buckets = RedisBucketStore(redis, timeout_s=limits.redis_timeout_s)
        slots = RedisConcurrencyStore(
            redis, lease_s=limits.concurrency_lease_s, timeout_s=limits.redis_timeout_s
        )
        keeper = LeaseKeeper(slots)
        spend = RedisSpendStore(redis, timeout_s=limits.redis_timeout_s)
        stores = LimiterStores(buckets, slots, local_buckets, local_slots, shared=True)
    else:
        spend = SqliteSpendStore(state_dir / "spend.sqlite")
        stores = LimiterStores(local_buckets, local_slots, local_buckets, local_slots, shared=False)
    authority = None
    if settings.budget.service_url:
        authority = HttpBudgetAuthority(
            aiohttp.ClientSession,
            settings.budget.service_url,
            ttl_s=settings.budget.cache_ttl_s,
            timeout_s=settings.budget.timeout_s,
        )
    limiter = Limiter(
        stores=stores,
        budgets=BudgetGate(spend, authority, time.time, time.monotonic),
        fail_open=settings.state.redis_failure_mode == "open",
        expected_replicas=limits.expected_replicas,
        observer=LimitMetrics(metrics.registry),
        audit=sink,
        spawn=background(tasks),
        wall=time.time,
        monotonic=time.monotonic,
    )
    return LimitParts(limiter, sink, spend, redis, buckets, keeper, authority, tasks)
