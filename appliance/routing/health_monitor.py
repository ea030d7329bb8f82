"""Active health checks: one jittered probe loop per backend, off the request path."""

from __future__ import annotations

import asyncio
import random
from collections.abc import Awaitable, Callable

from appliance.routing.registry import Registry
from appliance.settings import RoutingSettings
from appliance.telemetry.logging import get_logger

Probe = Callable[[str, float], Awaitable[bool]]  # (backend_id, timeout_s) -> answered 2xx

_log = get_logger("routerctl.health")


class HealthMonitor:
    def __init__(
        self,
        registry: Registry,
        probe: Probe,
        policy: RoutingSettings,
        monotonic: Callable[[], float],
    ) -> None:
        self._registry = registry
        self._probe = probe
        self._policy = policy
        self._monotonic = monotonic
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self._started = False

    def start(self) -> None:
        self._started = True
        self.reconcile()

    def reconcile(self) -> None:
        """One probe loop per configured backend: start new ones, stop removed ones."""
        if not self._started:
            return
        for backend_id in self._registry.backends.keys() - self._tasks.keys():
            self._tasks[backend_id] = asyncio.create_task(self._loop(backend_id))
        for backend_id in self._tasks.keys() - self._registry.backends.keys():
            self._tasks.pop(backend_id).cancel()

    async def stop(self) -> None:
        self._started = False
        tasks = list(self._tasks.values())
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self._tasks.clear()

    async def check_once(self, backend_id: str) -> None:
        ok = await self._probe(backend_id, self._registry.policy.health_timeout_s)
        if self._registry.record_probe(backend_id, ok, self._monotonic()):
            state = self._registry.get(backend_id)
            _log.warning(
                "backend_health_changed",
                backend=backend_id,
                health=state.health(self._monotonic()).value,
            )

    async def _loop(self, backend_id: str) -> None:
        interval = self._registry.policy.health_interval_s
        # Spread first probes so N backends are not checked in the same instant.
        await asyncio.sleep(random.uniform(0, min(interval, 1.0)))
        while True:
            await self.check_once(backend_id)
            await asyncio.sleep(interval * random.uniform(0.9, 1.1))
