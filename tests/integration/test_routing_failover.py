"""The routing engine under load: failover, ejection, probes, retry budget, least-loaded."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

from appliance.routing.registry import Health
from tests.integration.router_harness import RouterUnderTest, chat, chat_requests, running_router

FAST_HEALTH = """
[routing]
health_interval_s = 0.2
health_timeout_s = 0.5
healthy_threshold = 1
unhealthy_threshold = 2
consecutive_failures = 3
base_ejection_s = 30
max_ejection_percent = 50
"""


async def load(
    router: RouterUnderTest, workers: int, seconds: float, model: str = "chat"
) -> list[int]:
    """Send chat requests from `workers` tasks for `seconds`; returns every status seen."""
    statuses: list[int] = []
    deadline = time.monotonic() + seconds

    async def worker() -> None:
        while time.monotonic() < deadline:
            async with await router.post(
                "/v1/chat/completions", {**chat(max_tokens=2), "model": model}
            ) as response:
                await response.read()
                statuses.append(response.status)

    await asyncio.gather(*(worker() for _ in range(workers)))
    return statuses


def metric(router: RouterUnderTest, prefix: str) -> float:
    text = router.state.metrics.render().decode()
    return sum(
        float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if line.startswith(prefix)
    )


async def test_backend_dying_under_load_is_invisible_to_clients() -> None:
    """Killing one of three backends mid-load costs no client error; probes bring it back."""
    async with running_router(mock_count=3, extra=FAST_HEALTH) as router:
        victim = router.mocks["m1"]
        port = victim.port
        loader = asyncio.create_task(load(router, workers=8, seconds=2.0))
        await asyncio.sleep(0.5)
        await victim.stop()
        statuses = await loader
        assert len(statuses) > 50
        assert set(statuses) == {200}
        state = router.state.registry.get("m1")
        assert state.health(time.monotonic()) in (Health.EJECTED, Health.UNHEALTHY)
        assert metric(router, "router_failover_total") >= 1
        await victim.start("127.0.0.1", port)
        for _ in range(40):  # within a couple of probe intervals
            if router.state.registry.get("m1").routable(time.monotonic()):
                break
            await asyncio.sleep(0.05)
        assert router.state.registry.get("m1").routable(time.monotonic())
        before = chat_requests(victim)
        assert set(await load(router, workers=4, seconds=0.5)) == {200}
        assert chat_requests(victim) > before  # type: ignore[operator]


async def test_failing_backend_fails_over_and_is_ejected() -> None:
    """A backend answering 500 is retried elsewhere, counted, and ejected after N failures."""
    async with running_router(mock_count=3, extra=FAST_HEALTH) as router:
        router.mocks["m0"].configure(fail_rate=1.0)
        for _ in range(30):
            response = await router.post("/v1/chat/completions", chat())
            assert response.status == 200
            await response.read()
        assert metric(router, 'router_failover_total{from="m0"') >= 3
        assert router.state.registry.get("m0").health(time.monotonic()) is Health.EJECTED
        assert metric(router, "router_backend_ejections_total") == 1


async def test_hanging_backend_times_out_and_fails_over() -> None:
    """A backend slower than ttfb_timeout_s costs one timeout, then another backend answers."""
    async with running_router(mock_count=2) as router:  # default probes: every 5 s
        router.mocks["m0"].configure(latency_ms=5000)
        for _ in range(10):
            response = await router.post("/v1/chat/completions", chat())
            assert response.status == 200
            await response.read()
        assert metric(router, 'router_failover_total{from="m0",reason="upstream_timeout"') >= 1


async def test_retry_budget_bounds_retries_when_everything_fails() -> None:
    """With every backend failing, retries stop at the budget instead of multiplying load."""
    budget = FAST_HEALTH.replace("consecutive_failures = 3", "consecutive_failures = 1000")
    budget += "retry_budget_ratio = 0.0\nretry_budget_min_per_s = 0.5\nmax_retries = 2\n"
    async with running_router(mock_count=3, extra=budget) as router:
        for mock in router.mocks.values():
            mock.configure(fail_rate=1.0)
        for _ in range(20):
            response = await router.post("/v1/chat/completions", chat())
            assert response.status == 502
            await response.read()
        attempts = sum(
            1
            for m in router.mocks.values()
            for r in m.requests()
            if r["path"].endswith("/chat/completions")
        )
        assert attempts == 20 + 5  # 0.5 retries/s over the 10 s window
        assert metric(router, "router_failover_total") == 5


async def test_stream_is_not_retried_after_first_byte() -> None:
    """A stream that breaks after its first chunk ends with an error event, on one backend."""
    async with running_router(mock_count=2, extra=FAST_HEALTH) as router:
        response = await router.post(
            "/v1/chat/completions", chat("[mock:chunks=5] [mock:break_after=1]", stream=True)
        )
        body = await response.read()
        assert b"upstream_stream_broken" in body
        assert sum(len(m.requests()) for m in router.mocks.values()) == 1


LEAST_LOADED = """
[[models]]
name = "ll"
strategy = "least_loaded"
backends = [{ backend = "m0" }, { backend = "m1" }]
"""


async def test_least_loaded_sends_less_to_a_slow_backend() -> None:
    """With one backend 200 ms slower, least_loaded gives it clearly less than weighted does."""
    async with running_router(mock_count=2, extra=LEAST_LOADED) as router:
        router.mocks["m1"].configure(latency_ms=200)

        async def share_of_slow(model: str) -> float:
            for mock in router.mocks.values():
                mock.reset()
            await load(router, workers=6, seconds=1.5, model=model)
            slow = chat_requests(router.mocks["m1"])
            fast = chat_requests(router.mocks["m0"])
            assert isinstance(slow, int)
            assert isinstance(fast, int)
            return slow / (slow + fast)

        weighted = await share_of_slow("chat")
        least = await share_of_slow("ll")
        assert least < weighted / 2, (least, weighted)


async def test_overrides_survive_a_restart(tmp_path: Path) -> None:
    """An override set before a restart still applies after it; an expired one does not."""
    state = str(tmp_path)
    async with running_router(mock_count=2, state_dir=state) as router:
        await router.state.control.drain("m0", reason="maintenance", actor="t", ttl_s=None)
        await router.state.control.degrade("m1", 0.5, reason="slow", actor="t", ttl_s=0.2)
    await asyncio.sleep(0.3)
    async with running_router(mock_count=2, state_dir=state) as router:
        [kept] = router.state.control.overrides()
        assert (kept.kind, kept.backend) == ("drain", "m0")
        for _ in range(10):
            await (await router.post("/v1/chat/completions", chat())).read()
        assert router.mocks["m0"].requests() == []


SATURATED = """
[routing]
health_interval_s = 60
"""


async def test_full_backends_answer_503_with_retry_after() -> None:
    """When every backend is at max_concurrency, the next request gets 503 backends_saturated."""
    async with running_router(mock_count=1, extra=SATURATED) as router:
        # The harness config has no max_concurrency; set the live limit it would produce.
        router.state.registry.get("m0").max_concurrency = 1
        slow = asyncio.create_task(
            router.post("/v1/chat/completions", chat("[mock:latency_ms=800]"))
        )
        await asyncio.sleep(0.3)
        response = await router.post("/v1/chat/completions", chat())
        assert response.status == 503
        assert response.headers["retry-after"] == "1"
        assert (await response.json())["error"]["code"] == "backends_saturated"
        finished = await slow
        assert finished.status == 200
        await finished.read()
