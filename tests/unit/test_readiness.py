"""Readiness aggregation: required components, disabled ones, timeouts, caching, shutdown."""

from __future__ import annotations

import asyncio

import pytest

from appliance.readiness import Probe, ProbeFailed, Readiness


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


class Counting:
    """A probe that counts its calls and fails with `error` when set."""

    def __init__(self, delay: float = 0.0) -> None:
        self.calls = 0
        self.error: Exception | None = None
        self.delay = delay

    async def __call__(self) -> None:
        self.calls += 1
        if self.delay:
            await asyncio.sleep(self.delay)
        if self.error is not None:
            raise self.error


def readiness(
    probes: dict[str, Probe | None], clock: Clock, required: tuple[str, ...] = ()
) -> Readiness:
    return Readiness(probes, required=required, timeout_s=0.2, cache_s=1.0, monotonic=clock)


async def test_unconfigured_components_are_disabled_and_never_fail() -> None:
    """Only configured components are probed; the rest say `disabled`, even if required."""
    redis = Counting()
    ready = readiness({"redis": redis, "kafka": None}, Clock(), required=("redis", "kafka"))
    report = await ready.check()
    assert report.ready
    assert report.components["redis"] == "healthy"
    assert report.components["kafka"] == "disabled"
    assert report.components["config_service"] == "disabled"


async def test_a_failing_required_component_fails_readiness_with_its_reason() -> None:
    """A ProbeFailed message is the detail; any other error is named by its class only."""
    redis, kafka = Counting(), Counting()
    redis.error = ProbeFailed("no route")
    kafka.error = ConnectionRefusedError("password=hunter2 in a url")
    report = await readiness({"redis": redis, "kafka": kafka}, Clock()).check()
    assert not report.ready
    assert report.details == {"redis": "no route", "kafka": "ConnectionRefusedError"}


async def test_a_component_outside_required_reports_but_does_not_fail() -> None:
    """With `required` set, other components are shown unhealthy yet readiness holds."""
    redis, kafka = Counting(), Counting()
    kafka.error = ProbeFailed("down")
    report = await readiness({"redis": redis, "kafka": kafka}, Clock(), ("redis",)).check()
    assert report.ready
    assert report.components["kafka"] == "unhealthy"


async def test_a_hanging_probe_times_out_as_unhealthy() -> None:
    """A probe that never answers is unhealthy after the timeout, not a hung readiness call."""
    report = await readiness({"redis": Counting(delay=10)}, Clock()).check()
    assert not report.ready
    assert "no answer within" in report.details["redis"]


async def test_answers_are_cached_and_concurrent_callers_share_one_probe() -> None:
    """A flood of readiness calls runs one probe round per cache period."""
    clock = Clock()
    redis = Counting(delay=0.01)
    ready = readiness({"redis": redis}, clock)
    reports = await asyncio.gather(*(ready.check() for _ in range(50)))
    assert redis.calls == 1
    assert all(r.ready for r in reports)
    await ready.check()
    assert redis.calls == 1
    clock.now = 1.5
    await ready.check()
    assert redis.calls == 2


async def test_shutdown_makes_readiness_fail_whatever_the_components_say() -> None:
    """After begin_shutdown() readiness is not ready and says it is shutting down."""
    ready = readiness({"redis": Counting()}, Clock())
    assert (await ready.check()).ready
    ready.begin_shutdown()
    report = await ready.check()
    assert not report.ready
    assert report.shutting_down
    assert report.components["redis"] == "healthy"


@pytest.mark.parametrize("cancel_first", [True, False])
async def test_a_cancelled_caller_does_not_cancel_the_shared_probe(cancel_first: bool) -> None:
    """A client that goes away mid-probe leaves the probe running for the others."""
    redis = Counting(delay=0.05)
    ready = readiness({"redis": redis}, Clock())
    first = asyncio.ensure_future(ready.check())
    second = asyncio.ensure_future(ready.check())
    await asyncio.sleep(0.01)
    (first if cancel_first else second).cancel()
    survivor = second if cancel_first else first
    assert (await survivor).ready
    assert redis.calls == 1


async def test_a_healthy_probe_note_is_shown_in_details() -> None:
    """A healthy probe may say what it saw (Redis: the mode and each node), shown in details."""

    async def noted() -> str:
        return "cluster: primary 10.0.0.1:7000 ok"

    report = await readiness({"redis": noted}, Clock()).check()
    assert report.ready
    assert report.components["redis"] == "healthy"
    assert report.details == {"redis": "cluster: primary 10.0.0.1:7000 ok"}
