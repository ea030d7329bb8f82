"""Limits behind Redis Sentinel: the primary killed under load, the router follows the master
the sentinels promote, without a restart."""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from pathlib import Path

import pytest

from appliance.auth.keyring import hash_key
from appliance.limits.redis_client import ClientOptions, connect_redis
from appliance.settings.loader import parse_settings
from tests.integration.router_harness import RouterUnderTest, chat, running_router
from tests.redis_topologies import SentinelServer, SentinelSet, redis_sentinel, wait_for

pytestmark = pytest.mark.services

ORG = """
[limits]
redis_timeout_s = 0.25

[[orgs]]
id = "s-org"
rpm = 100000

[[keys]]
id = "k-s"
org = "s-org"
sha256 = "{sha}"
""".format(sha=hash_key("s-key"))


def sentinel_state(setup: SentinelSet) -> str:
    endpoints = ", ".join(f'"{e}"' for e in setup.endpoints)
    return (
        f'redis_mode = "sentinel"\nredis_endpoints = [{endpoints}]\n'
        f'redis_sentinel_master = "{SentinelServer.master_name}"\nredis_failure_mode = "closed"'
    )


async def status_of(router: RouterUnderTest) -> int:
    response = await router.post(
        "/v1/chat/completions", chat(max_tokens=5), {"Authorization": "Bearer s-key"}
    )
    await response.read()
    return response.status


async def test_router_follows_the_promoted_master(tmp_path: Path) -> None:
    """After the primary dies, requests succeed again within the sentinels' failover + 2 s."""
    with redis_sentinel(tmp_path) as setup:
        old = (setup.primary.host, setup.primary.port)
        async with running_router(extra=ORG, state_extra=sentinel_state(setup)) as router:
            assert await status_of(router) == 200
            readyz = await (await router.session.get(f"{router.url}/v1/status/readyz")).json()
            outcomes: list[tuple[float, int]] = []
            stop = asyncio.Event()

            async def load() -> None:
                while not stop.is_set():
                    outcomes.append((time.monotonic(), await status_of(router)))
                    await asyncio.sleep(0.05)

            task = asyncio.create_task(load())
            await asyncio.sleep(0.5)
            killed = time.monotonic()
            setup.primary.kill()
            failover_s = await asyncio.to_thread(
                wait_for,
                "sentinels name a new master",
                lambda: setup.sentinels[0].master_address() not in (None, old),
            )
            await asyncio.sleep(2.5)
            stop.set()
            await task
    failed = [at for at, status in outcomes if status != 200]
    back = max(failed) - killed if failed else 0.0
    print(
        f"\nsentinel failover: new master named {failover_s:.2f} s after the kill; "
        f"{len(outcomes)} requests, {Counter(s for _, s in outcomes)}; "
        f"last failure {back:.2f} s after the kill"
    )
    assert readyz["details"]["redis"] == (
        f"sentinel: master {setup.primary.host}:{setup.primary.port} ok"
    )
    assert {status for _, status in outcomes} <= {200, 503}
    assert back <= failover_s + 2.0
    assert outcomes[-1][1] == 200


async def test_master_pool_queues_callers_past_max_connections(tmp_path: Path) -> None:
    """More callers than pooled connections wait their turn (like the standalone pool); none
    fails with "Too many connections"."""
    with redis_sentinel(tmp_path) as setup:
        state = parse_settings("[state]\n" + sentinel_state(setup)).state
        connection = connect_redis(state, {}, ClientOptions(max_connections=2))
        try:
            answers = await asyncio.gather(
                *(connection.client.incr("s-pool") for _ in range(40)), return_exceptions=True
            )
        finally:
            await connection.aclose()
    assert sorted(a for a in answers if isinstance(a, int)) == list(range(1, 41)), answers
