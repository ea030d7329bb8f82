"""Rate limits, concurrency and budgets through real routers, embedded and on real Redis."""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Mapping
from contextlib import AsyncExitStack
from pathlib import Path

import pytest

from appliance.auth.keyring import hash_key
from tests.integration.router_harness import RouterUnderTest, chat, running_router
from tests.services import RedisServer

LIMITED_KEY = "rk-limited"


def org(*lines: str, key_lines: str = "") -> str:
    """An org `lim` with the given limit lines and one key for it."""
    body = "\n".join(lines)
    return f"""
[[orgs]]
id = "lim"
{body}

[[keys]]
id = "k-lim"
org = "lim"
sha256 = "{hash_key(LIMITED_KEY)}"
{key_lines}
"""


def redis_state(redis: RedisServer, mode: str = "open") -> str:
    return f'redis_url = "{redis.url}"\nredis_failure_mode = "{mode}"'


async def post(
    router: RouterUnderTest, payload: dict[str, object] | None = None
) -> tuple[int, Mapping[str, str], dict[str, object]]:
    response = await router.post(
        "/v1/chat/completions",
        payload or chat(max_tokens=5),
        {"Authorization": f"Bearer {LIMITED_KEY}"},
    )
    body = await response.json()
    return response.status, response.headers, body


async def test_rpm_limit_headers_and_429_exactly() -> None:
    """Within the limit responses carry x-ratelimit headers; beyond it a 429 names the limit."""
    async with running_router(extra=org("rpm = 3")) as router:
        seen = [await post(router) for _ in range(4)]
        await asyncio.sleep(0.2)  # audit events are written off the request path
        [event] = await router.state.audit.query(kind="limit.deny")
    assert [s for s, _, _ in seen] == [200, 200, 200, 429]
    assert (event.org, event.key_id, event.subject) == ("lim", "k-lim", "org:lim:rpm")
    assert event.request_id == seen[3][1]["x-request-id"]
    _, headers, _ = seen[0]
    assert headers["x-ratelimit-limit-requests"] == "3"
    assert headers["x-ratelimit-remaining-requests"] == "2"
    assert headers["x-ratelimit-reset-requests"].endswith("s")
    _, headers, body = seen[3]
    assert body == {
        "error": {
            "message": "Rate limit reached for requests per minute on org 'lim': limit 3. "
            "Retry after the time in Retry-After.",
            "type": "requests",
            "param": None,
            "code": "rate_limit_exceeded",
        }
    }
    assert headers["x-ratelimit-remaining-requests"] == "0"
    assert 1 <= int(headers["retry-after"]) <= 21  # one request refills in 20 s


async def test_key_limit_within_org_limit() -> None:
    """A key's own rpm applies inside its org's and is named in the error."""
    async with running_router(extra=org("rpm = 100", key_lines="rpm = 1")) as router:
        first, second = await post(router), await post(router)
    assert (first[0], second[0]) == (200, 429)
    assert "on key 'k-lim'" in second[2]["error"]["message"]  # type: ignore[index]


async def test_tpm_reserves_estimate_and_settles_actual_usage() -> None:
    """Tokens are reserved from max_tokens and refunded to actual usage, streams included."""
    async with running_router(extra=org("tpm = 1000")) as router:
        stream = chat(
            "[mock:chunks=5]", max_tokens=400, stream=True, stream_options={"include_usage": True}
        )
        response = await router.post(
            "/v1/chat/completions", stream, {"Authorization": f"Bearer {LIMITED_KEY}"}
        )
        assert int(response.headers["x-ratelimit-remaining-tokens"]) in range(595, 600)
        await response.read()
        await asyncio.sleep(0.2)  # settlement runs in the background
        status, headers, _ = await post(router, chat(max_tokens=100))
    assert status == 200
    # 1000 - (actual 2 prompt + 5 completion) - (estimate 3 + 100), plus a little refill
    assert int(headers["x-ratelimit-remaining-tokens"]) in range(888, 896)


async def test_concurrency_limit_released_when_streams_end() -> None:
    """max_concurrent refuses a request beyond the limit and frees the slot when a stream ends."""
    async with running_router(extra=org("max_concurrent = 1")) as router:
        slow = chat("[mock:chunks=3] [mock:chunk_delay_ms=300]", stream=True)
        response = await router.post(
            "/v1/chat/completions", slow, {"Authorization": f"Bearer {LIMITED_KEY}"}
        )
        status, headers, body = await post(router)
        assert status == 429
        assert body["error"]["code"] == "concurrency_limit_exceeded"  # type: ignore[index]
        assert headers["retry-after"] == "1"
        await response.read()
        await asyncio.sleep(0.1)
        assert (await post(router))[0] == 200


async def test_shadow_limit_is_metered_not_enforced() -> None:
    """A shadow rpm never refuses, but counts would-be denials."""
    async with running_router(extra=org("rpm = 1", 'shadow = ["rpm"]')) as router:
        statuses = [(await post(router))[0] for _ in range(4)]
        await asyncio.sleep(0.2)
        text = router.state.metrics.render().decode()
    assert statuses == [200] * 4
    assert 'router_rate_limit_shadow_denials_total{limit="rpm",org="lim",scope="org"} 3.0' in text


PRICED = (
    org("monthly_budget_usd = 0.001")
    + """
[[models]]
name = "priced"
output_price_per_1k = 0.1
backends = [{ backend = "m0" }]
"""
)


async def spend_until_refused(state_dir: Path, state_extra: str = "") -> None:
    """Two $0.0005 requests fill a $0.001 budget; the third is refused, also after a restart."""
    payload = {**chat("[mock:chunks=5]", max_tokens=5), "model": "priced"}
    options = {"extra": PRICED, "state_dir": str(state_dir), "state_extra": state_extra}
    async with running_router(**options) as router:  # type: ignore[arg-type]
        assert (await post(router, payload))[0] == 200  # 5 tokens x $0.0001 = $0.0005
        await asyncio.sleep(1.2)  # settle, and let the cached spend refresh
        assert (await post(router, payload))[0] == 200  # $0.0010 spent now
        await asyncio.sleep(1.2)
        status, headers, body = await post(router, payload)
    assert status == 429
    assert body["error"]["type"] == "insufficient_quota"  # type: ignore[index]
    assert body["error"]["code"] == "budget_exceeded"  # type: ignore[index]
    assert "retry-after" not in headers
    async with running_router(**options) as router:  # type: ignore[arg-type]
        assert (await post(router, payload))[0] == 429


async def test_budget_accumulates_refuses_and_survives_restart(tmp_path: Path) -> None:
    """Embedded: spend in the state dir's SQLite survives a restart."""
    await spend_until_refused(tmp_path)


@pytest.mark.services
async def test_budget_in_redis_survives_restart(tmp_path: Path, redis_server: RedisServer) -> None:
    """Shared: spend in Redis survives a router restart (with a fresh state dir)."""
    await spend_until_refused(tmp_path, redis_state(redis_server))


@pytest.mark.services
async def test_three_replicas_share_redis_limits(
    redis_server: RedisServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Three routers on one Redis admit no more than the shared limit, whatever their clocks say."""
    real_time = time.time
    # Router wall clocks are never consulted for admission (Redis TIME is): scramble them.
    monkeypatch.setattr(time, "time", lambda: real_time() + random.uniform(-30, 30))
    extra = org("rpm = 20")
    async with AsyncExitStack() as stack:
        routers = [
            await stack.enter_async_context(
                running_router(extra=extra, state_extra=redis_state(redis_server))
            )
            for _ in range(3)
        ]

        async def hammer(router: RouterUnderTest) -> list[int]:
            return [(await post(router))[0] for _ in range(15)]

        results = await asyncio.gather(*(hammer(r) for r in routers))
    statuses = [s for batch in results for s in batch]
    admitted = statuses.count(200)
    assert set(statuses) == {200, 429}
    assert 20 <= admitted <= 21  # capacity, plus what refills (1 per 3 s) during the test


@pytest.mark.services
async def test_redis_outage_open_mode_keeps_serving(redis_server: RedisServer) -> None:
    """With Redis down, `open` serves on local buckets, reports degraded, and recovers."""
    async with running_router(
        extra=org("rpm = 1000"), state_extra=redis_state(redis_server)
    ) as router:
        assert (await post(router))[0] == 200
        redis_server.stop()
        started = time.monotonic()
        statuses = [(await post(router))[0] for _ in range(10)]
        elapsed = time.monotonic() - started
        text = router.state.metrics.render().decode()
        assert statuses == [200] * 10
        assert "router_limiter_degraded 1.0" in text
        assert elapsed < 3  # not 10 x a connect timeout
        redis_server.start()
        for _ in range(40):
            await asyncio.sleep(0.1)
            await post(router)
            if "router_limiter_degraded 0.0" in router.state.metrics.render().decode():
                break
        assert "router_limiter_degraded 0.0" in router.state.metrics.render().decode()


@pytest.mark.services
async def test_redis_outage_closed_mode_answers_503_fast(redis_server: RedisServer) -> None:
    """With Redis down, `closed` answers 503 limiter_unavailable quickly, then recovers."""
    state = redis_state(redis_server, mode="closed")
    async with running_router(extra=org("rpm = 1000"), state_extra=state) as router:
        assert (await post(router))[0] == 200
        redis_server.stop()
        started = time.monotonic()
        status, _, body = await post(router)
        assert status == 503
        assert body["error"]["code"] == "limiter_unavailable"  # type: ignore[index]
        assert time.monotonic() - started < 1
        redis_server.start()
        recovered = False
        for _ in range(50):
            await asyncio.sleep(0.1)
            if (await post(router))[0] == 200:
                recovered = True
                break
        assert recovered
