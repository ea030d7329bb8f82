"""Once a tick (a second): measure the state disk, show the outbox's depth, write held records.

The publisher reports the buffer after each attempt, and during an outage its backoff spaces
attempts up to 30 s apart; this tick keeps the gauges true within a second whatever the
publisher does. It is also how a router that refuses requests for a full disk notices space
coming back: while it refuses, nothing is written, so no commit re-measures the disk.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Protocol

from appliance.telemetry.logging import get_logger
from appliance.usage.free_space import FreeSpace
from appliance.usage.ports import Outbox
from appliance.usage.recorder import UsageRecorder

_log = get_logger("routerctl.usage")


class BufferObserver(Protocol):
    def buffer(self, records: int, bytes: int, oldest_age_s: float) -> None: ...

    def state_free(self, free_bytes: int) -> None: ...


class BufferWatch:
    def __init__(
        self,
        outbox: Outbox,
        free_space: FreeSpace,
        recorder: UsageRecorder,
        observer: BufferObserver | None = None,
        *,
        interval_s: float = 1.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._outbox = outbox
        self._free = free_space
        self._recorder = recorder
        self._observer = observer
        self._interval_s = interval_s
        self._clock = clock
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name="usage-buffer-watch")

    async def stop(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)

    async def tick(self) -> None:
        # One statvfs on a worker thread; a hung mount stalls this task, not the loop (and
        # the next tick waits for it rather than piling up threads).
        free = await asyncio.to_thread(self._free.measure)
        if free is not None and self._observer is not None:
            self._observer.state_free(free)
        if self._recorder.held:
            await self._recorder.flush_held()
        if self._observer is None:
            return
        stats = await self._outbox.stats()
        oldest = stats.oldest_created_at
        age = 0.0 if oldest is None else max(0.0, self._clock() - oldest)
        self._observer.buffer(stats.records, stats.bytes, age)

    async def _run(self) -> None:
        while True:
            try:
                await self.tick()
            except Exception as exc:  # the outbox may be unreadable for a moment: keep going
                _log.warning("usage_buffer_watch_failed", error=str(exc) or type(exc).__name__)
            await asyncio.sleep(self._interval_s)
