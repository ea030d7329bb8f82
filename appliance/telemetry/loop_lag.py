"""Event-loop lag: how late a callback scheduled every `interval_s` actually runs.

A request's p99 suffers whenever something holds the loop (a synchronous write, a large
JSON encode, a GC pass); this histogram shows those stalls without a profiler attached.
One timer handle rescheduled from its own callback: no task, nothing per request. Lateness
is read from perf_counter: uvloop's own clock (`loop.time()`) ticks in whole milliseconds,
which would round most stalls to 0 (its timers still fire up to ~1 ms late, so read the
first buckets as "no stall").
"""

from __future__ import annotations

import asyncio
import time

from prometheus_client import CollectorRegistry, Histogram

INTERVAL_S = 0.1
# Stalls worth seeing start around a millisecond; a quarter second is already an outage.
_BUCKETS = (
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
)  # fmt: skip


class LoopLagMonitor:
    def __init__(self, registry: CollectorRegistry, interval_s: float = INTERVAL_S) -> None:
        self._histogram = Histogram(
            "router_event_loop_lag_seconds",
            "How late a timer due every 100 ms ran on the event loop (stalls of the loop).",
            buckets=_BUCKETS,
            registry=registry,
        )
        self._interval = interval_s
        self._loop: asyncio.AbstractEventLoop | None = None
        self._handle: asyncio.TimerHandle | None = None
        self._due = 0.0

    def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._schedule()

    def stop(self) -> None:
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None

    def _schedule(self) -> None:
        assert self._loop is not None
        self._due = time.perf_counter() + self._interval
        self._handle = self._loop.call_later(self._interval, self._tick)

    def _tick(self) -> None:
        self._histogram.observe(max(0.0, time.perf_counter() - self._due))
        self._schedule()
