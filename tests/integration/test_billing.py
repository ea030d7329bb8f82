"""Billing and token settlement through a real router, embedded and on real Redis.

A request the backend did not answer successfully costs nothing and gives its whole token
reservation back; a stream cut after content is billed for what was relayed; a request
larger than its tokens-per-minute limit is refused before it reserves anything.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import msgspec
import pytest

from appliance.auth.keyring import hash_key
from appliance.limits.policy import estimate_tokens
from tests.integration.router_harness import RouterUnderTest, chat, running_router
from tests.services import RedisServer

KEY = "rk-billing"
TPM = 6000
RESERVE = 3000  # max_tokens of the request under test: half the bucket
PRICE_IN, PRICE_OUT = 2.0, 4.0  # USD per 1k tokens, so any billed token shows in cost_usd


def config(org: str, tpm: int = TPM) -> str:
    """A priced model over mock m0 and an org (unique per test: Redis is shared) with a tpm."""
    return f"""
[[models]]
name = "priced"
input_price_per_1k = {PRICE_IN}
output_price_per_1k = {PRICE_OUT}
backends = [{{ backend = "m0" }}]

[[orgs]]
id = "{org}"
tpm = {tpm}

[[keys]]
id = "k-{org}"
org = "{org}"
sha256 = "{hash_key(KEY)}"
"""


@asynccontextmanager
async def billing_router(
    store: str, redis: RedisServer | None, tpm: int = TPM
) -> AsyncIterator[RouterUnderTest]:
    state = f'redis_url = "{redis.url}"' if store == "redis" and redis is not None else ""
    org = f"bill-{uuid.uuid4().hex[:8]}"
    async with running_router(extra=config(org, tpm), state_extra=state) as router:
        router.auth = {"Authorization": f"Bearer {KEY}"}
        yield router


@pytest.fixture(params=["memory", "redis"])
def store(request: pytest.FixtureRequest) -> str:
    """Each settlement test runs against the in-process buckets and against real Redis."""
    return str(request.param)


@pytest.fixture
def redis(store: str, request: pytest.FixtureRequest) -> RedisServer | None:
    if store != "redis":
        return None
    server: RedisServer = request.getfixturevalue("redis_server")
    return server


def priced(content: str, **extra: object) -> dict[str, object]:
    return {**chat(content, **extra), "model": "priced"}


async def record_of(router: RouterUnderTest, request_id: str) -> dict[str, Any]:
    """The request's usage record, once written; then waits for its settlement to finish."""
    for _ in range(100):
        async with router.session.get(
            f"{router.url}/v1/usage/{request_id}", headers=router.auth
        ) as response:
            if response.status == 200:
                record: dict[str, Any] = msgspec.json.decode(await response.read())
                # The settlement is spawned before the record is written: it is pending or done.
                await asyncio.gather(*list(router.state.limits.tasks))
                return record
        await asyncio.sleep(0.05)
    raise AssertionError(f"no usage record for {request_id}")


async def remaining_after_probe(router: RouterUnderTest) -> tuple[int, int]:
    """Tokens left after a tiny probe request, and what the probe itself reserved."""
    payload = priced("probe", max_tokens=1)
    async with await router.post("/v1/chat/completions", payload) as response:
        assert response.status == 200, await response.text()
        left = int(response.headers["x-ratelimit-remaining-tokens"])
    return left, estimate_tokens(payload, 1, 1024)


def assert_free(record: dict[str, Any], status: int) -> None:
    assert record["status"] == status
    assert record["error_code"] is not None
    assert (record["billable"], record["partial"]) == (False, False)
    assert (record["token_source"], record["total_tokens"], record["cost_usd"]) == ("none", 0, 0)


# Ways a request fails without a successful answer: (directive, stream, status the client sees).
FAILURES = {
    "backend 400": ("[mock:status=400]", False, 400),
    "backend 503": ("[mock:status=503]", False, 502),
    "backend 503 to a stream": ("[mock:status=503]", True, 502),
    "backend timeout": ("[mock:hang]", False, 504),
}


@pytest.mark.parametrize("case", FAILURES, ids=list(FAILURES))
async def test_failed_requests_cost_nothing_and_give_tokens_back(
    case: str, store: str, redis: RedisServer | None
) -> None:
    """A backend error or timeout is recorded with its status and error, costs 0, is not
    billable, and its whole token reservation is returned."""
    directive, stream, status = FAILURES[case]
    async with billing_router(store, redis) as router:
        payload = priced(f"hello {directive}", max_tokens=RESERVE, stream=stream)
        async with await router.post("/v1/chat/completions", payload) as response:
            assert response.status == status
            request_id = response.headers["x-request-id"]
        assert_free(await record_of(router, request_id), status)
        left, probe = await remaining_after_probe(router)
    assert left == TPM - probe  # refunded in full: the bucket is at capacity again


async def test_client_leaving_before_the_answer_costs_nothing(
    store: str, redis: RedisServer | None
) -> None:
    """A client that disconnects while the backend works (the request is cancelled) is not
    billed and its reservation is returned."""
    async with billing_router(store, redis) as router:
        payload = priced("[mock:latency_ms=800]", max_tokens=RESERVE)
        headers = {**router.auth, "x-request-id": f"leave-{uuid.uuid4().hex}"}
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(
                router.session.post(
                    f"{router.url}/v1/chat/completions", json=payload, headers=headers
                ),
                0.3,
            )
        record = await record_of(router, headers["x-request-id"])
        left, probe = await remaining_after_probe(router)
    assert record["client_disconnected"] is True
    assert (record["billable"], record["total_tokens"], record["cost_usd"]) == (False, 0, 0)
    assert left == TPM - probe


async def test_stream_cut_by_the_client_is_billed_for_what_was_relayed(
    store: str, redis: RedisServer | None
) -> None:
    """A client leaving mid-stream is billed the prompt and the events relayed, marked
    partial, and the rest of its reservation is returned."""
    async with billing_router(store, redis) as router:
        payload = priced(
            "[mock:chunks=60] [mock:chunk_delay_ms=50]", max_tokens=RESERVE, stream=True
        )
        response = await router.post("/v1/chat/completions", payload)
        request_id = response.headers["x-request-id"]
        await response.content.readuntil(b"\n\n")
        response.close()
        record = await record_of(router, request_id)
        left, probe = await remaining_after_probe(router)
    billed = record["total_tokens"]
    assert (record["billable"], record["partial"], record["client_disconnected"]) == (
        True,
        True,
        True,
    )
    assert record["token_source"] == "estimated"
    assert 1 <= record["completion_tokens"] < 60
    expected = (record["prompt_tokens"] * PRICE_IN + record["completion_tokens"] * PRICE_OUT) / 1000
    assert record["cost_usd"] == pytest.approx(expected)
    assert TPM - probe - billed <= left <= TPM - probe  # only what was relayed stays charged


async def test_stream_broken_by_the_backend_is_billed_partially(
    store: str, redis: RedisServer | None
) -> None:
    """A backend breaking a stream after content: the client got an error event, the record
    bills the relayed part (partial), never the max_tokens estimate."""
    async with billing_router(store, redis) as router:
        payload = priced("[mock:chunks=40] [mock:break_after=4]", max_tokens=RESERVE, stream=True)
        async with await router.post("/v1/chat/completions", payload) as response:
            body = await response.read()
            request_id = response.headers["x-request-id"]
        record = await record_of(router, request_id)
        left, probe = await remaining_after_probe(router)
    assert b"upstream_stream_broken" in body
    assert (record["status"], record["error_code"]) == (200, "upstream_stream_broken")
    assert (record["billable"], record["partial"]) == (True, True)
    assert 1 <= record["completion_tokens"] <= 6  # the events relayed, not 3000
    assert left >= TPM - probe - record["total_tokens"]


async def test_success_settles_to_reported_usage(store: str, redis: RedisServer | None) -> None:
    """A complete answer is billed its reported usage and the unused reservation returned."""
    async with billing_router(store, redis) as router:
        async with await router.post(
            "/v1/chat/completions", priced("[mock:chunks=9]", max_tokens=RESERVE)
        ) as response:
            assert response.status == 200
            request_id = response.headers["x-request-id"]
        record = await record_of(router, request_id)
        left, probe = await remaining_after_probe(router)
    assert (record["billable"], record["partial"], record["token_source"]) == (
        True,
        False,
        "reported",
    )
    assert record["completion_tokens"] == 9
    assert TPM - probe - record["total_tokens"] <= left <= TPM - probe


async def test_request_larger_than_the_tpm_limit_is_refused_up_front(
    store: str, redis: RedisServer | None
) -> None:
    """A request whose own estimate exceeds the tpm limit gets 400 naming the limit, reserves
    nothing and never reaches a backend, so the org's next request is served normally."""
    async with billing_router(store, redis, tpm=100_000) as router:
        huge = priced("hi [mock:status=400]", max_tokens=1_000_000_000)  # < 2**31: a valid cap
        async with await router.post("/v1/chat/completions", huge) as response:
            status, error = response.status, (await response.json())["error"]
        assert router.mocks["m0"].requests() == []
        async with await router.post("/v1/chat/completions", priced("hi", max_tokens=5)) as after:
            after_status = after.status
            left = int(after.headers["x-ratelimit-remaining-tokens"])
            retry_after = after.headers.get("retry-after")
    assert (status, error["code"], error["param"]) == (400, "request_exceeds_limit", "max_tokens")
    assert "tokens-per-minute limit" in error["message"]
    assert "100000" in error["message"]
    assert after_status == 200, retry_after
    assert left == 100_000 - estimate_tokens(priced("hi"), 5, 1024)
