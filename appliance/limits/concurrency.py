"""ConcurrencyStore twins: in-process sets, and Redis sorted sets of leases shared by replicas.

In Redis each key `{prefix}{key}` is a ZSET of holder -> lease expiry (ms, Redis TIME, so
replica clocks never matter). A replica that dies without releasing loses its slots when
their leases run out, at most `lease_s` after its last renewal. Long requests keep theirs
because a LeaseKeeper renews every lease this process holds every lease_s/3.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager

import redis.asyncio as aioredis
import redis.exceptions

from appliance.limits.ports import LimiterBackendError
from appliance.telemetry.logging import get_logger

_log = get_logger("routerctl.limits")

# Shared by both scripts: Redis's own clock, in ms; effects replication (Redis >= 5) lets a
# script write after reading TIME.
_NOW = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local function keep_key(key, lease)
  -- The ZSET outlives its longest lease and no more, so idle keys vanish by themselves.
  if redis.call('PTTL', key) < lease then redis.call('PEXPIRE', key, lease) end
end
"""
# KEYS[1] = zset; ARGV = limit, holder, lease_ms. Returns 1 if the slot is held, else 0.
_ACQUIRE = (
    _NOW
    + """
local lease = tonumber(ARGV[3])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
if not redis.call('ZSCORE', KEYS[1], ARGV[2])
    and redis.call('ZCARD', KEYS[1]) >= tonumber(ARGV[1]) then
  return 0
end
redis.call('ZADD', KEYS[1], now + lease, ARGV[2])
keep_key(KEYS[1], lease)
return 1
"""
)
# KEYS = zsets; ARGV = lease_ms, then one holder per key. Returns how many were renewed.
_RENEW = (
    _NOW
    + """
local lease = tonumber(ARGV[1])
local renewed = 0
for i, key in ipairs(KEYS) do
  local expiry = redis.call('ZSCORE', key, ARGV[i + 1])
  -- Only a live lease moves: a lapsed slot may already belong to someone else.
  if expiry and tonumber(expiry) > now then
    redis.call('ZADD', key, now + lease, ARGV[i + 1])
    keep_key(key, lease)
    renewed = renewed + 1
  end
end
return renewed
"""
)


class MemoryConcurrencyStore:
    """Slots of one process: key -> holders. Acquiring again as the same holder is a no-op."""

    def __init__(self) -> None:
        self._holders: dict[str, set[str]] = {}

    async def acquire(self, key: str, limit: int, holder: str) -> bool:
        holders = self._holders.setdefault(key, set())
        if holder in holders:
            return True
        if len(holders) >= limit:
            if not holders:
                del self._holders[key]  # limit <= 0: leave no empty set behind
            return False
        holders.add(holder)
        return True

    async def release(self, key: str, holder: str) -> None:
        holders = self._holders.get(key)
        if holders is None:
            return
        holders.discard(holder)
        if not holders:
            del self._holders[key]  # memory follows what is in use, not every key ever seen

    def in_use(self, key: str) -> int:
        return len(self._holders.get(key, ()))


class RedisConcurrencyStore:
    """Leased slots shared by replicas; calls are bounded by `timeout_s`, failing as
    LimiterBackendError. Holders acquired here are remembered until released, for renew()."""

    def __init__(
        self,
        client: aioredis.Redis,
        prefix: str = "cc:",
        lease_s: float = 60.0,
        timeout_s: float = 0.05,
    ) -> None:
        if lease_s <= 0:
            raise ValueError(f"lease_s must be > 0, got {lease_s!r}")
        self._client = client
        self._prefix = prefix
        self._lease_ms = max(1, round(lease_s * 1000))
        self._timeout_s = timeout_s
        # redis-py's Script runs EVALSHA and, on NOSCRIPT (a restarted or flushed Redis),
        # loads the source once and retries.
        self._acquire = client.register_script(_ACQUIRE)
        self._renew = client.register_script(_RENEW)
        self._held: set[tuple[str, str]] = set()

    @property
    def lease_s(self) -> float:
        return self._lease_ms / 1000

    def redis_key(self, key: str) -> str:
        return self._prefix + key

    def held(self) -> list[tuple[str, str]]:
        """(key, holder) pairs this store acquired and has not released."""
        return list(self._held)

    async def acquire(self, key: str, limit: int, holder: str) -> bool:
        """Take a slot leased for lease_s; False when `limit` live leases exist."""
        async with _bounded("acquire", key, self._timeout_s):
            got = await self._acquire(
                keys=[self.redis_key(key)], args=[limit, holder, self._lease_ms]
            )
        # On a timeout the slot may have been taken anyway; untracked, it lapses in lease_s.
        if got == 1:
            self._held.add((key, holder))
            return True
        return False

    async def release(self, key: str, holder: str) -> None:
        # Forget first: if ZREM fails the lease is no longer renewed and lapses on its own.
        self._held.discard((key, holder))
        async with _bounded("release", key, self._timeout_s):
            await self._client.zrem(self.redis_key(key), holder)

    async def renew(self, holders: Sequence[tuple[str, str]]) -> int:
        """Push the leases of (key, holder) pairs to now + lease_s in one round trip.

        Returns how many were still live and renewed; a lapsed lease is not revived.
        """
        if not holders:
            return 0
        keys = [self.redis_key(key) for key, _ in holders]
        args: list[str | int] = [self._lease_ms, *(holder for _, holder in holders)]
        async with _bounded("renew", None, self._timeout_s):
            renewed = await self._renew(keys=keys, args=args)
        return int(renewed)

    async def ping(self) -> None:
        """Raise LimiterBackendError unless Redis answers PING within the timeout."""
        async with _bounded("ping", None, self._timeout_s):
            await self._client.ping()


class LeaseKeeper:
    """Background task renewing every lease a RedisConcurrencyStore holds, every lease_s/3.

    Two missed rounds (Redis briefly away) still leave a lease a third of its length.
    """

    def __init__(self, store: RedisConcurrencyStore, interval_s: float | None = None) -> None:
        self._store = store
        self._interval_s = store.lease_s / 3 if interval_s is None else interval_s
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._loop(), name="lease-keeper")

    async def stop(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def renew_once(self) -> int:
        """One renewal round; returns how many leases were renewed."""
        pairs = self._store.held()
        try:
            renewed = await self._store.renew(pairs)
        except LimiterBackendError as exc:
            _log.warning("lease_renewal_failed", leases=len(pairs), error=str(exc))
            return 0
        # Pairs released during the round are not lost, just gone.
        lost = len(set(pairs) & set(self._store.held())) - renewed
        if lost > 0:
            _log.warning("leases_lapsed", lost=lost)
        return renewed

    async def _loop(self) -> None:
        while True:
            await asyncio.sleep(self._interval_s)
            await self.renew_once()


@asynccontextmanager
async def _bounded(op: str, key: str | None, timeout_s: float) -> AsyncIterator[None]:
    """Bound a Redis exchange in time and turn its failures into LimiterBackendError."""
    subject = "" if key is None else f" for {key!r}"
    try:
        async with asyncio.timeout(timeout_s):
            yield
    except TimeoutError as exc:
        raise LimiterBackendError(
            f"redis concurrency store: {op}{subject} got no answer within {timeout_s} s"
        ) from exc
    except (redis.exceptions.RedisError, OSError) as exc:
        # The class name only: library messages may carry addresses, never ours to leak.
        raise LimiterBackendError(
            f"redis concurrency store: {op}{subject} failed: {type(exc).__name__}"
        ) from exc
