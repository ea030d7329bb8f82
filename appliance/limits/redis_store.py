"""Token buckets in Redis (distributed mode), shared by every replica.

One Lua script does a whole take atomically in one round trip, with Redis's own clock (TIME),
so replicas with skewed clocks agree. It repeats bucket.py line by line. Every call is bounded
by `timeout_s`, and any failure surfaces as `LimiterBackendError`, so a dead or frozen Redis
costs a request at most about `timeout_s` and the limiter applies its failure mode.
"""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import Awaitable, Sequence
from typing import Any, TypeVar

from redis.asyncio import Redis
from redis.exceptions import NoScriptError, RedisError

from appliance.limits import bucket
from appliance.limits.ports import Admission, BucketSpec, LimiterBackendError

_T = TypeVar("_T")

# KEYS: the buckets. ARGV[1] = "take", then capacity, refill_per_s, cost for each key; or
# "adjust", then capacity, refill_per_s, delta for KEYS[1].
# Returns {admitted 1|0, tokens per key}: for take the tokens before the charge, for adjust
# after it. Numbers travel as "%.17g" strings: Redis would truncate a Lua number reply to
# an integer, and 17 digits round-trip a double exactly.
BUCKET_LUA = """
if redis.replicate_commands then redis.replicate_commands() end  -- Redis < 5: TIME + writes
local time = redis.call('TIME')
local now = tonumber(time[1]) + tonumber(time[2]) / 1000000

local function fmt(x) return string.format('%.17g', x) end

local function refilled(key, capacity, refill)
  local state = redis.call('HMGET', key, 'tokens', 'ts')
  local tokens, updated_at = tonumber(state[1]), tonumber(state[2])
  if tokens == nil or updated_at == nil then return capacity end  -- new or forgotten: full
  local elapsed = math.max(0, now - updated_at)  -- a clock stepping back must not drain
  return math.min(capacity, tokens + elapsed * refill)
end

local function admits(tokens, capacity, cost)
  return tokens >= math.min(cost, capacity)
end

local function seconds_until(tokens, target, refill)
  if tokens >= target then return 0 end
  if refill <= 0 then return math.huge end
  return (target - tokens) / refill
end

local function store(key, tokens, capacity, refill)
  tokens = math.max(0, tokens)  -- never below empty: no wait beyond one full refill
  redis.call('HSET', key, 'tokens', fmt(tokens), 'ts', fmt(now))
  local to_full = seconds_until(tokens, capacity, refill)
  if to_full == math.huge then
    redis.call('PERSIST', key)
  else  -- forgotten 1 s after it is full again; capped so PEXPIRE gets an integer
    local ttl_ms = math.min(math.ceil(to_full * 1000) + 1000, 1e15)
    redis.call('PEXPIRE', key, string.format('%d', ttl_ms))
  end
end

if ARGV[1] == 'take' then
  local tokens, admitted = {}, 1
  for i = 1, #KEYS do
    local capacity, refill, cost = tonumber(ARGV[3*i-1]), tonumber(ARGV[3*i]), tonumber(ARGV[3*i+1])
    tokens[i] = refilled(KEYS[i], capacity, refill)
    if not admits(tokens[i], capacity, cost) then admitted = 0 end
  end
  local reply = {admitted}
  for i = 1, #KEYS do
    if admitted == 1 then  -- all or nothing: a denial charges no bucket
      store(KEYS[i], tokens[i] - tonumber(ARGV[3*i+1]), tonumber(ARGV[3*i-1]), tonumber(ARGV[3*i]))
    end
    reply[i+1] = fmt(tokens[i])
  end
  return reply
elseif ARGV[1] == 'adjust' then
  local capacity, refill, delta = tonumber(ARGV[2]), tonumber(ARGV[3]), tonumber(ARGV[4])
  local tokens = math.max(0, math.min(capacity, refilled(KEYS[1], capacity, refill) + delta))
  store(KEYS[1], tokens, capacity, refill)
  return {1, fmt(tokens)}
end
return redis.error_reply('token bucket: unknown mode')
"""

_SHA = hashlib.sha1(BUCKET_LUA.encode(), usedforsecurity=False).hexdigest()


class RedisBucketStore:
    """A `BucketStore` (and `Pingable`) over a caller-owned `redis.asyncio.Redis` client."""

    def __init__(self, client: Redis, prefix: str = "rl:", timeout_s: float = 0.05) -> None:
        self._client = client
        self._prefix = prefix
        self._timeout_s = timeout_s
        self._loaded = False

    async def open(self) -> None:
        """Load the script now, so the first request does not pay for it (optional)."""
        await self._bounded("script load", self._load())

    async def take(self, specs: Sequence[BucketSpec]) -> Admission:
        bucket.require_distinct(specs)
        if not specs:
            return Admission(admitted=True, readings=())
        args: list[str | float] = ["take"]
        for spec in specs:
            args += [spec.capacity, spec.refill_per_s, spec.cost]
        reply = await self._bounded("take", self._run([s.key for s in specs], args))
        tokens = [float(t) for t in reply[1:]]  # float() takes bytes and str replies alike
        return bucket.admission(specs, tokens, admitted=int(reply[0]) == 1)

    async def adjust(self, key: str, capacity: float, refill_per_s: float, delta: float) -> None:
        await self._bounded("adjust", self._run([key], ["adjust", capacity, refill_per_s, delta]))

    async def ping(self) -> None:
        """Raise LimiterBackendError unless Redis answers PING within the timeout."""
        await self._bounded("ping", self._client.ping())

    async def _run(self, keys: list[str], args: list[str | float]) -> list[Any]:
        names = [self._prefix + key for key in keys]
        if not self._loaded:
            await self._load()
        try:
            reply = await self._client.evalsha(_SHA, len(names), *names, *args)
        except NoScriptError:
            # Redis restarted (or SCRIPT FLUSH) since we loaded it: load again, retry once.
            await self._load()
            reply = await self._client.evalsha(_SHA, len(names), *names, *args)
        return list(reply)

    async def _load(self) -> None:
        await self._client.script_load(BUCKET_LUA)
        self._loaded = True

    async def _bounded(self, op: str, call: Awaitable[_T]) -> _T:
        # The deadline covers connecting, the NOSCRIPT retry and the client's own retries.
        # A cancelled command makes redis-py drop that connection, so no reply is misread.
        try:
            async with asyncio.timeout(self._timeout_s):
                return await call
        except (RedisError, OSError) as exc:  # OSError includes asyncio's TimeoutError
            raise LimiterBackendError(f"redis {op} failed: {_describe(exc)}") from exc


def _describe(exc: BaseException) -> str:
    # The class and the library's message (host:port at most), never the client's URL.
    text = str(exc)[:200]
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


__all__ = ["BUCKET_LUA", "RedisBucketStore"]
