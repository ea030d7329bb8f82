"""Readiness: each component's probe, run with a timeout and cached briefly.

A flood of readiness probes must not become a flood of Redis pings or Kafka metadata
requests: one check runs at a time, and its answer serves every caller for `cache_s`.
A component that is not configured is `disabled` and never fails readiness.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Literal

ComponentStatus = Literal["healthy", "unhealthy", "disabled"]
COMPONENTS = ("redis", "kafka", "config_service", "backend_registry", "usage_buffer")


class ProbeFailed(Exception):
    """A probe's short, secret-free reason for calling its component unhealthy."""


Probe = Callable[[], Awaitable[str | None]]
"""Returns when the component is healthy (with a note for `details`, or None); raises
(ProbeFailed or any error) when not."""


@dataclass(frozen=True, slots=True)
class Report:
    ready: bool
    components: dict[str, ComponentStatus]
    details: dict[str, str]  # why an unhealthy component is unhealthy, or a healthy one's note
    shutting_down: bool


class Readiness:
    def __init__(
        self,
        probes: Mapping[str, Probe | None],
        *,
        required: Iterable[str] = (),
        timeout_s: float,
        cache_s: float,
        monotonic: Callable[[], float],
    ) -> None:
        self._probes = dict(probes)
        configured = {name for name, probe in self._probes.items() if probe is not None}
        wanted = set(required)
        # An unconfigured component never fails readiness, even when listed as required.
        self._required = (wanted or configured) & configured
        self._timeout_s = timeout_s
        self._cache_s = cache_s
        self._monotonic = monotonic
        self._cached: Report | None = None
        self._cached_at = 0.0
        self._running: asyncio.Task[Report] | None = None
        self._shutting_down = False

    def begin_shutdown(self) -> None:
        """From now on readiness is 503: the load balancer should stop sending new work."""
        self._shutting_down = True

    async def check(self) -> Report:
        report = await self._current()
        if self._shutting_down:
            return Report(False, report.components, report.details, shutting_down=True)
        return report

    async def _current(self) -> Report:
        if self._cached is not None and self._monotonic() - self._cached_at < self._cache_s:
            return self._cached
        if self._running is None:
            self._running = asyncio.ensure_future(self._run())
            self._running.add_done_callback(self._finished)
        # shield: a caller that disconnects must not cancel the check others wait for.
        return await asyncio.shield(self._running)

    def _finished(self, task: asyncio.Task[Report]) -> None:
        self._running = None
        if not task.cancelled() and task.exception() is None:
            self._cached = task.result()
            self._cached_at = self._monotonic()

    async def _run(self) -> Report:
        names = [n for n, p in self._probes.items() if p is not None]
        outcomes = await asyncio.gather(*(self._probe(n) for n in names))
        components: dict[str, ComponentStatus] = dict.fromkeys(COMPONENTS, "disabled")
        details: dict[str, str] = {}
        for name, (healthy, detail) in zip(names, outcomes, strict=True):
            components[name] = "healthy" if healthy else "unhealthy"
            if detail is not None:
                details[name] = detail
        ready = all(components[name] == "healthy" for name in self._required)
        return Report(ready, components, details, shutting_down=False)

    async def _probe(self, name: str) -> tuple[bool, str | None]:
        """Healthy or not, and the note or the reason."""
        probe = self._probes[name]
        assert probe is not None
        try:
            async with asyncio.timeout(self._timeout_s):
                return True, await probe()
        except TimeoutError:
            return False, f"no answer within {self._timeout_s:g}s"
        except ProbeFailed as exc:
            return False, str(exc)
        except Exception as exc:
            # The class name only: messages of client libraries can carry addresses or URLs.
            return False, type(exc).__name__
