"""SpendStore on Redis: every replica adds to one shared counter per org and month.

Key `{prefix}{org}:{period}` (default prefix "budget:") holds the USD spent as a Redis float.
It expires 40 days after its month ends, so Redis keeps about two keys per org at any time
and an operator still has last month's figure for reconciliation.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import redis.asyncio as aioredis
import redis.exceptions

from appliance.limits.budget import end_of_period
from appliance.limits.ports import LimiterBackendError

RETENTION_AFTER_PERIOD_S = 40 * 86_400


class RedisSpendStore:
    """Shared spend; every call is bounded by `timeout_s` and fails as LimiterBackendError."""

    def __init__(
        self, client: aioredis.Redis, prefix: str = "budget:", timeout_s: float = 0.05
    ) -> None:
        self._client = client
        self._prefix = prefix
        self._timeout_s = timeout_s

    def key(self, org: str, period: str) -> str:
        # The period is last and fixed-width, so an org id holding ':' stays unambiguous.
        return f"{self._prefix}{org}:{period}"

    async def spent(self, org: str, period: str) -> float:
        """USD spent by `org` in `period` ("YYYY-MM"); 0.0 when nothing was recorded."""
        async with _bounded("spent", org, self._timeout_s):
            raw = await self._client.get(self.key(org, period))
        return 0.0 if raw is None else float(raw)

    async def add(self, org: str, period: str, usd: float) -> float:
        """Add `usd` (may be negative, a refund) to the org's spend; returns the new total."""
        if not math.isfinite(usd):
            raise ValueError(f"usd must be finite, got {usd!r}")
        key = self.key(org, period)
        # Validates the period before anything is written.
        expire_at = end_of_period(period) + RETENTION_AFTER_PERIOD_S
        # MULTI/EXEC in one round trip: the counter never exists without its expiry.
        async with (
            _bounded("add", org, self._timeout_s),
            self._client.pipeline(transaction=True) as pipe,
        ):
            pipe.incrbyfloat(key, usd)
            pipe.expireat(key, expire_at)
            total, _ = await pipe.execute()
        return float(total)

    async def ping(self) -> None:
        """Raise LimiterBackendError unless Redis answers PING within the timeout."""
        async with _bounded("ping", None, self._timeout_s):
            await self._client.ping()


@asynccontextmanager
async def _bounded(op: str, org: str | None, timeout_s: float) -> AsyncIterator[None]:
    """Bound a Redis exchange in time and turn its failures into LimiterBackendError."""
    try:
        async with asyncio.timeout(timeout_s):
            yield
    except TimeoutError as exc:
        raise LimiterBackendError(_message(op, org, f"no answer within {timeout_s} s")) from exc
    except (redis.exceptions.RedisError, OSError) as exc:
        # The class name only: library messages may carry addresses, never ours to leak.
        raise LimiterBackendError(_message(op, org, type(exc).__name__)) from exc


def _message(op: str, org: str | None, reason: str) -> str:
    subject = "" if org is None else f" for org {org!r}"
    return f"redis spend store: {op}{subject} failed: {reason}"
