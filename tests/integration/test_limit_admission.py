"""Admission through real routers: a refusal charges nothing, and a lease is per request."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import pytest

from appliance.auth.keyring import hash_key
from tests.integration.router_harness import RouterUnderTest, chat, running_router
from tests.services import RedisServer

KEY = "rk-admission"
SLOW_STREAM = chat("[mock:chunks=3] [mock:chunk_delay_ms=300]", stream=True)


@pytest.fixture(params=["memory", "redis"])
def store(request: pytest.FixtureRequest) -> str:
    """Each test runs with in-process limits and with limits in real Redis."""
    return str(request.param)


@asynccontextmanager
async def limited_router(
    store: str, request: pytest.FixtureRequest, limits: str
) -> AsyncIterator[RouterUnderTest]:
    org = f"adm-{uuid.uuid4().hex[:8]}"  # Redis is shared by the session
    state = ""
    if store == "redis":
        server: RedisServer = request.getfixturevalue("redis_server")
        state = f'redis_url = "{server.url}"'
    extra = f"""
[[orgs]]
id = "{org}"
{limits}

[[keys]]
id = "k-{org}"
org = "{org}"
sha256 = "{hash_key(KEY)}"
"""
    async with running_router(extra=extra, state_extra=state) as router:
        router.auth = {"Authorization": f"Bearer {KEY}"}
        yield router


async def test_concurrency_refusal_costs_no_request_from_the_rpm_bucket(
    store: str, request: pytest.FixtureRequest
) -> None:
    """A request refused because the org's slots are taken does not use up one of the org's
    requests per minute."""
    async with limited_router(store, request, "rpm = 5\nmax_concurrent = 1") as router:
        slow = await router.post("/v1/chat/completions", SLOW_STREAM)
        assert slow.headers["x-ratelimit-remaining-requests"] == "4"
        async with await router.post("/v1/chat/completions", chat()) as refused:
            assert refused.status == 429
            assert (await refused.json())["error"]["code"] == "concurrency_limit_exceeded"
        await slow.read()
        slow.release()
        await asyncio.sleep(0.1)  # the slot is released in the background
        async with await router.post("/v1/chat/completions", chat()) as after:
            assert after.status == 200
            assert after.headers["x-ratelimit-remaining-requests"] == "3"


async def test_a_reused_request_id_does_not_share_a_concurrency_slot(
    store: str, request: pytest.FixtureRequest
) -> None:
    """Two requests in flight with the same x-request-id count as two against
    max_concurrent: a client cannot pass the limit by repeating its request id."""
    async with limited_router(store, request, "max_concurrent = 1") as router:
        headers = {"x-request-id": "same-id"}
        slow = await router.post("/v1/chat/completions", SLOW_STREAM, headers)
        assert slow.status == 200
        async with await router.post("/v1/chat/completions", chat(), headers) as second:
            status = second.status
        await slow.read()
        slow.release()
    assert status == 429
