"""A bounded workload that gives every metric family something to count.

JSON and streamed answers, a failover, an operator override, a rate-limit denial, a budget
denial, and requests a metric must not turn into a label (unknown model, stray path, client
request id). Used by the metrics catalog test and by the Prometheus dashboard test.
"""

from __future__ import annotations

import asyncio

from appliance.auth.keyring import hash_key
from tests.integration.router_harness import RouterUnderTest, chat

LIMITED_KEY = "rk-metrics-limited"
THRIFTY_KEY = "rk-metrics-thrifty"
UNKNOWN_MODEL = "no-such-model-7f3a"
STRAY_PATH = "/v1/stray-9c1e"
CLIENT_REQUEST_ID = "client-rid-5d2b"

# Org "lim" allows 2 requests a minute; org "thrifty" has $0.0001 a month and model "priced"
# costs $0.0005 for 5 output tokens, so its second request is refused.
EXTRA = f"""
[[orgs]]
id = "lim"
rpm = 2

[[keys]]
id = "k-lim"
org = "lim"
sha256 = "{hash_key(LIMITED_KEY)}"

[[orgs]]
id = "thrifty"
monthly_budget_usd = 0.0001

[[keys]]
id = "k-thrifty"
org = "thrifty"
sha256 = "{hash_key(THRIFTY_KEY)}"

[[models]]
name = "priced"
output_price_per_1k = 0.1
backends = [{{ backend = "m0" }}]
"""
_MAX_TRIES = 40


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


async def post(
    router: RouterUnderTest,
    payload: dict[str, object],
    headers: dict[str, str] | None = None,
    path: str = "/v1/chat/completions",
) -> tuple[int, bytes]:
    async with await router.post(path, payload, headers) as response:
        return response.status, await response.read()


async def traffic(router: RouterUnderTest, rounds: int = 1) -> None:
    """Plain traffic: JSON, streams, embeddings, a 4xx, bounded by `rounds`."""
    for _ in range(rounds):
        for _ in range(4):
            assert (await post(router, chat(max_tokens=3)))[0] == 200
        for _ in range(2):
            status, body = await post(router, chat("[mock:chunks=3]", stream=True))
            assert status == 200
            assert body.endswith(b"data: [DONE]\n\n")
        embed: dict[str, object] = {"model": "chat", "input": "hello"}
        assert (await post(router, embed, path="/v1/embeddings"))[0] == 200
        assert (await post(router, {"model": "chat"}))[0] == 400


async def incidents(router: RouterUnderTest) -> None:
    """One of each event a dashboard panel shows; fails if the router did not produce it."""
    # Both backends answer 500: the first attempt fails over to the other, then 502.
    assert (await post(router, chat("[mock:status=500]")))[0] == 502
    override = await router.state.control.pin("chat", "m1", "metrics test", "test", None)
    assert (await post(router, chat(max_tokens=2)))[0] == 200  # decision OVERRIDE
    await router.state.control.clear(override.id, "metrics test", "test")
    await _until_refused(router, chat(max_tokens=2), LIMITED_KEY, b"rate_limit_exceeded")
    priced = {**chat("[mock:chunks=5]", max_tokens=5), "model": "priced"}
    await _until_refused(router, priced, THRIFTY_KEY, b"budget_exceeded")
    # None of these may become a label value.
    unknown = {**chat(), "model": UNKNOWN_MODEL}
    assert (await post(router, unknown, {"x-request-id": CLIENT_REQUEST_ID}))[0] == 404
    assert (await post(router, chat(), path=STRAY_PATH))[0] == 404


async def _until_refused(
    router: RouterUnderTest, payload: dict[str, object], key: str, code: bytes
) -> None:
    # Spend is charged off the request path, so a budget refusal comes a moment later.
    for _ in range(_MAX_TRIES):
        status, body = await post(router, payload, bearer(key))
        if status == 429:
            assert code in body, body
            return
        assert status == 200, body
        await asyncio.sleep(0.05)
    raise AssertionError(f"no 429 {code.decode()} after {_MAX_TRIES} requests")
