"""Redis: every node answers (each primary on a cluster, the master the sentinels name), the
limits script is loaded, and our clock agrees with TIME."""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Mapping

from redis.exceptions import RedisError, ResponseError

from appliance.doctor import thresholds
from appliance.doctor.report import CheckResult, describe, failed, passed, skipped, warned
from appliance.limits.redis_client import (
    ClientOptions,
    NodeState,
    RedisClient,
    RedisConnection,
    connect_redis,
    url_target,
)
from appliance.limits.redis_script import BUCKET_SHA  # the limits script, buckets included
from appliance.settings import Settings

redis_target = url_target  # host:port of a Redis URL, as the rows name it


async def check_redis(
    settings: Settings, timeout_s: float, environ: Mapping[str, str] = os.environ
) -> list[CheckResult]:
    """Rows redis, redis.script and clock; one skip row when Redis is not configured."""
    state = settings.state
    if not state.redis_configured:
        return [
            skipped(
                "redis",
                "-",
                "not configured (state.redis_url or redis_endpoints): limits are counted"
                " per process",
            )
        ]
    # One honest attempt: the answer is the finding.
    options = ClientOptions(timeout_s, timeout_s, retries=0, max_connections=4)
    connection = connect_redis(state, environ, options)
    target = connection.target
    # One deadline for the three steps, so the rows together take at most timeout_s.
    deadline = asyncio.get_running_loop().time() + timeout_s
    try:
        async with asyncio.timeout_at(deadline):
            nodes = await connection.nodes()
    except TimeoutError as exc:
        nodes = [NodeState("primary", target, describe(exc))]
    try:
        mode = state.redis_failure_mode
        down = [node for node in nodes if not node.ok]
        if down:
            not_checked = "not checked: Redis did not answer"
            return [
                _unreachable(connection, down, timeout_s, mode),
                skipped("redis.script", target, not_checked),
                skipped("clock", target, not_checked),
            ]
        client = connection.client
        return [
            passed("redis", target, f"{_states(connection, nodes)} (redis_failure_mode = {mode})"),
            await _script(client, target, deadline),
            await _clock(client, target, deadline),
        ]
    finally:
        await connection.aclose()


def _states(connection: RedisConnection, nodes: list[NodeState]) -> str:
    """The mode and each node's state: "cluster: primary 10.0.0.1:7000 ok; ..."."""
    return f"{connection.mode}: " + "; ".join(str(node) for node in nodes)


def _unreachable(
    connection: RedisConnection, down: list[NodeState], timeout_s: float, mode: str
) -> CheckResult:
    target = connection.target
    impact = "requests get 503" if mode == "closed" else "each replica limits on its own"
    first = down[0].state
    where = "state.redis_url" if connection.mode == "standalone" else "state.redis_endpoints"
    if "AuthenticationError" in first or "NOAUTH" in first or "WRONGPASS" in first:
        return failed(
            "redis",
            target,
            f"authentication failed: {_states(connection, down)}",
            "set state.redis_username and the password in the variable"
            " state.redis_password_env names (or the URL's user and password)",
        )
    if "Timeout" in first:
        detail = f"no answer within {timeout_s:g} s: {_states(connection, down)} ({impact})"
        fix = f"Redis at {target} hangs or packets are dropped: check the server and firewall"
    else:
        detail = f"unreachable: {_states(connection, down)} ({impact})"
        fix = f"start Redis at {target}, or point {where} at a running one"
    return failed("redis", target, detail, fix)


async def _script(client: RedisClient, target: str, deadline: float) -> CheckResult:
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


async def _clock(client: RedisClient, target: str, deadline: float) -> CheckResult:
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
