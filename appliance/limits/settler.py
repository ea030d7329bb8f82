"""Settlement off the response path: finished requests queue here, one task sends them.

A request's settlement (tokens trued up, slots released, spend added) is appended to a
queue; a single background task takes everything queued and hands it to its store in one
call, which for Redis is one round trip per batch. It starts sending as soon as something
is queued, so a released slot is free again within about one round trip; under load the
batches grow by themselves while the previous one is on the wire. A failed batch is
counted and logged, never retried: leases lapse on their own and a refund is forgone.
"""

from __future__ import annotations

import asyncio
import contextlib

from appliance.limits.ports import AdmissionStore, LimiterBackendError, LimitObserver, Settlement
from appliance.telemetry.logging import get_logger

_log = get_logger("routerctl.limits")
_MAX_BATCH = 1024  # settlements per store call: bounds one call's size and time


class Settler:
    def __init__(self, observer: LimitObserver, max_batch: int = _MAX_BATCH) -> None:
        self._observer = observer
        self._max_batch = max_batch
        self._queue: list[tuple[AdmissionStore, Settlement]] = []
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._closing = False
        self._idle: asyncio.Future[None] | None = None
        self._busy = False

    def submit(self, store: AdmissionStore, item: Settlement) -> None:
        """Queue one request's settlement for `store` (no I/O here)."""
        if self._closing and self._task is None:
            _log.warning("limiter_settlement_after_close", org=item.org)
            return
        self._queue.append((store, item))
        self._wake.set()

    def start(self) -> None:
        if self._task is None and not self._closing:
            self._task = asyncio.create_task(self._run(), name="limit-settler")

    async def close(self) -> None:
        """Send everything queued (each store call is bounded by the store), then stop."""
        self._closing = True
        self._wake.set()
        task, self._task = self._task, None
        if task is not None:
            await task
        while self._queue:  # never started, or a submit raced the task's end
            await self._send_batch()
        self._became_idle()

    def idle(self) -> asyncio.Future[None] | None:
        """None when nothing is queued or being sent; else a future done once that is so."""
        if not (self._queue or self._busy):
            return None
        if self._idle is None:
            self._idle = asyncio.get_running_loop().create_future()
        return self._idle

    async def _run(self) -> None:
        while True:
            while self._queue:
                await self._send_batch()
            self._became_idle()
            if self._closing:
                return
            self._wake.clear()
            await self._wake.wait()

    async def _send_batch(self) -> None:
        batch, self._queue = self._queue[: self._max_batch], self._queue[self._max_batch :]
        by_store: dict[int, tuple[AdmissionStore, list[Settlement]]] = {}
        for store, item in batch:
            by_store.setdefault(id(store), (store, []))[1].append(item)
        self._busy = True
        try:
            for store, items in by_store.values():
                await self._send(store, items)
        finally:
            self._busy = False

    async def _send(self, store: AdmissionStore, items: list[Settlement]) -> None:
        try:
            totals = await store.settle(items)
        except LimiterBackendError as exc:
            self._observer.backend_error()
            _log.warning("limiter_background_error", error=str(exc), settlements=len(items))
        except Exception:  # the one sender must outlive any bug in a batch
            _log.exception("limiter_settlement_failed", settlements=len(items))
        else:
            for org, total in totals.items():
                self._observer.spent(org, total)

    def _became_idle(self) -> None:
        idle, self._idle = self._idle, None
        if idle is not None:
            with contextlib.suppress(asyncio.InvalidStateError):
                idle.set_result(None)
