"""Redis: it answers PING, the token-bucket script is loaded, and our clock agrees with TIME."""

from __future__ import annotations

import asyncio
import time
from urllib.parse import urlsplit

from redis.asyncio import Redis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import AuthenticationError, RedisError, ResponseError
from redis.exceptions import TimeoutError as RedisTimeout

from appliance.doctor import thresholds
from appliance.doctor.report import CheckResult, describe, failed, passed, skipped, warned
from appliance.limits.redis_script import BUCKET_SHA  # the limits script, buckets included
from appliance.settings import Settings


async def check_redis(settings: Settings, timeout_s: float) -> list[CheckResult]:
    """Rows redis, redis.script and clock; one skip row when Redis is not configured."""
    url = settings.state.redis_url
    if not url:
        return [
            skipped(
                "redis", "-", "not configured (state.redis_url): limits are counted per process"
            )
        ]
    target = redis_target(url)
    client = Redis.from_url(
        url,
        socket_connect_timeout=timeout_s,
        socket_timeout=timeout_s,
        retry=Retry(NoBackoff(), 0),  # one honest attempt: the answer is the finding
    )
    # One deadline for the three steps, so the rows together take at most timeout_s.
    deadline = asyncio.get_running_loop().time() + timeout_s
    try:
        async with asyncio.timeout_at(deadline):
            await client.ping()
    except (RedisError, OSError) as exc:  # OSError includes asyncio's TimeoutError
        not_checked = "not checked: Redis did not answer"
        return [
            _unreachable(target, exc, timeout_s, settings.state.redis_failure_mode),
            skipped("redis.script", target, not_checked),
            skipped("clock", target, not_checked),
        ]
    else:
        mode = settings.state.redis_failure_mode
        return [
            passed("redis", target, f"PING answered (redis_failure_mode = {mode})"),
            await _script(client, target, deadline),
            await _clock(client, target, deadline),
        ]
    finally:
        await client.aclose()


def redis_target(url: str) -> str:
    """host:port (or the socket path) of a Redis URL, without its password."""
    parts = urlsplit(url)
    if parts.scheme == "unix":
        return parts.path
    return f"{parts.hostname}:{parts.port or 6379}"


def _unreachable(target: str, exc: BaseException, timeout_s: float, mode: str) -> CheckResult:
    impact = "requests get 503" if mode == "closed" else "each replica limits on its own"
    if isinstance(exc, AuthenticationError) or "NOAUTH" in str(exc):
        return failed(
            "redis",
            target,
            f"authentication failed: {describe(exc)}",
            "put the right user and password in state.redis_url",
        )
    if isinstance(exc, TimeoutError | RedisTimeout):
        detail = f"no answer within {timeout_s:g} s ({impact})"
        fix = f"Redis at {target} hangs or packets are dropped: check the server and firewall"
    else:
        detail = f"unreachable: {describe(exc)} ({impact})"
        fix = f"start Redis at {target}, or point state.redis_url at a running one"
    return failed("redis", target, detail, fix)


async def _script(client: Redis, target: str, deadline: float) -> CheckResult:
    try:
        async with asyncio.timeout_at(deadline):
            (loaded,) = await client.script_exists(BUCKET_SHA)
    except ResponseError as exc:  # a Redis-compatible server without Lua
        return failed(
            "redis.script",
            target,
            f"SCRIPT EXISTS refused: {describe(exc)}",
            "use a server that runs Lua scripts (Redis >= 5 or valkey)",
        )
    except (RedisError, OSError) as exc:
        return failed("redis.script", target, describe(exc), "check the Redis server's health")
    if not loaded:
        return warned(
            "redis.script",
            target,
            f"token-bucket script {BUCKET_SHA[:12]} is not loaded (no router used this Redis"
            " since it started)",
            "nothing to do if no router is running: a router loads it at start and on NOSCRIPT",
        )
    return passed("redis.script", target, f"token-bucket script {BUCKET_SHA[:12]} is loaded")


async def _clock(client: Redis, target: str, deadline: float) -> CheckResult:
    try:
        async with asyncio.timeout_at(deadline):
            before = time.time()
            seconds, micros = await client.time()
            after = time.time()
    except (RedisError, OSError) as exc:
        return failed("clock", target, f"TIME failed: {describe(exc)}", "check Redis")
    # Redis read its clock somewhere within the round trip: compare with the midpoint.
    skew = (before + after) / 2 - (seconds + micros / 1e6)
    return thresholds.clock_skew(target, skew, (after - before) / 2)
