"""The event-loop lag monitor: a stall of the loop shows up in its histogram."""

from __future__ import annotations

import asyncio
import time

from prometheus_client import CollectorRegistry

from appliance.telemetry.loop_lag import LoopLagMonitor


def _sample(registry: CollectorRegistry, name: str, **labels: str) -> float:
    value = registry.get_sample_value(name, labels)
    return 0.0 if value is None else value


def _stall(seconds: float) -> None:
    """Hold the thread (and so the loop) without yielding, as a synchronous write would."""
    time.sleep(seconds)


async def test_a_blocked_loop_is_observed_as_lag() -> None:
    """Blocking the loop for 60 ms makes the next tick observe at least that much lag."""
    registry = CollectorRegistry()
    monitor = LoopLagMonitor(registry, interval_s=0.01)
    monitor.start()
    try:
        await asyncio.sleep(0.05)  # a few undisturbed ticks
        _stall(0.06)  # the stall under test: nothing else can run meanwhile
        await asyncio.sleep(0.03)
    finally:
        monitor.stop()
    ticks = _sample(registry, "router_event_loop_lag_seconds_count")
    slow = ticks - _sample(registry, "router_event_loop_lag_seconds_bucket", le="0.05")
    assert ticks >= 3
    assert slow >= 1  # the stalled tick landed above the 50 ms bucket
    assert _sample(registry, "router_event_loop_lag_seconds_sum") >= 0.05


async def test_stop_ends_the_ticks() -> None:
    """After stop() no further observations are made."""
    registry = CollectorRegistry()
    monitor = LoopLagMonitor(registry, interval_s=0.005)
    monitor.start()
    await asyncio.sleep(0.03)
    monitor.stop()
    seen = _sample(registry, "router_event_loop_lag_seconds_count")
    await asyncio.sleep(0.03)
    assert _sample(registry, "router_event_loop_lag_seconds_count") == seen
