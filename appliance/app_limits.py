"""Composition root, limits part: the limiter and the stores it uses, embedded or on Redis.

Only `appliance.app` imports this module.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import aiohttp

from appliance.audit.sink import AuditSink
from appliance.limits.budget_gate import BudgetGate
from appliance.limits.budget_service import HttpBudgetAuthority
from appliance.limits.concurrency import LeaseKeeper
from appliance.limits.limiter import Limiter, LimiterStores
from appliance.limits.memory_store import MemoryAdmissionStore
from appliance.limits.ports import LimiterBackendError
from appliance.limits.redis_client import RedisConnection, connect_redis
from appliance.limits.redis_store import RedisAdmissionStore
from appliance.limits.settler import Settler
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
    settler: Settler
    spend: SqliteSpendStore | None = None  # embedded mode only
    redis: RedisConnection | None = None
    shared: RedisAdmissionStore | None = None
    keeper: LeaseKeeper | None = None
    authority: HttpBudgetAuthority | None = None

    @property
    def tasks(self) -> set[asyncio.Future[None]]:
        """Limiter work still running in the background (settlements queued or being sent)."""
        idle = self.settler.idle()
        return set() if idle is None else {idle}

    async def open(self) -> None:
        if self.spend is not None:
            await self.spend.open()
        if self.shared is not None:
            try:
                await self.shared.open()
            except LimiterBackendError as exc:
                # Redis down at start: serve in the failure mode; the store retries itself.
                _log.warning("limiter_store_unavailable_at_start", error=str(exc))
        if self.keeper is not None:
            self.keeper.start()
        self.settler.start()

    async def close(self) -> None:
        if self.keeper is not None:
            await self.keeper.stop()
        await self.settler.close()  # before the stores it writes to close
        await self.sink.drain()
        if self.authority is not None:
            await self.authority.close()
        if self.spend is not None:
            await self.spend.close()
        if self.shared is not None:
            await self.shared.aclose()
        if self.redis is not None:
            await self.redis.aclose()


def build_limits(
    settings: Settings,
    state_dir: Path,
    metrics: Metrics,
    sink: AuditSink,
    environ: Mapping[str, str],
) -> LimitParts:
    """Embedded (in-process limits, SQLite spend) or shared (Redis), chosen here only.

    With several workers each process is a replica for the fail-open share.
    """
    limits = settings.limits
    observer = LimitMetrics(metrics.registry)
    redis, shared, keeper, spend = None, None, None, None
    if settings.state.redis_configured:
        redis = connect_redis(settings.state, environ)
        shared = RedisAdmissionStore(
            redis.client,
            lease_s=limits.concurrency_lease_s,
            timeout_s=limits.redis_timeout_s,
            multiplex=redis.mode == "standalone",
        )
        keeper = LeaseKeeper(shared)
        # The in-process store is the fallback while Redis is away: no budget checks then.
        stores = LimiterStores(local=MemoryAdmissionStore(), shared=shared)
    else:
        spend = SqliteSpendStore(state_dir / "spend.sqlite")
        stores = LimiterStores(local=MemoryAdmissionStore(spend=BudgetGate(spend, time.monotonic)))
    authority = None
    if settings.budget.service_url:
        authority = HttpBudgetAuthority(
            aiohttp.ClientSession,
            settings.budget.service_url,
            ttl_s=settings.budget.cache_ttl_s,
            timeout_s=settings.budget.timeout_s,
        )
    settler = Settler(observer)
    limiter = Limiter(
        stores=stores,
        authority=authority,
        settler=settler,
        fail_open=settings.state.redis_failure_mode == "open",
        expected_replicas=limits.expected_replicas * settings.server.workers,
        observer=observer,
        audit=sink,
        wall=time.time,
        monotonic=time.monotonic,
    )
    return LimitParts(limiter, sink, settler, spend, redis, shared, keeper, authority)
