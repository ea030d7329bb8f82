"""Hand audit events to the store without waiting on the request path, within a bound."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

from appliance.audit.events import AuditEvent
from appliance.audit.ports import AuditStore
from appliance.telemetry.logging import get_logger

_MAX_PENDING = 10_000
_log = get_logger("routerctl.audit")


class AuditSink:
    """Fire-and-forget appends; when the store falls this far behind, events are dropped
    and counted rather than growing memory without bound (a denial storm must not OOM)."""

    def __init__(
        self,
        store: AuditStore,
        max_pending: int = _MAX_PENDING,
        forward: Callable[[AuditEvent], Awaitable[None]] | None = None,
    ) -> None:
        self._store = store
        self._forward = forward
        self._max_pending = max_pending
        self._tasks: set[asyncio.Task[None]] = set()
        self.dropped = 0

    def __call__(self, event: AuditEvent) -> None:
        if len(self._tasks) >= self._max_pending:
            self.dropped += 1
            return
        task = asyncio.create_task(self._append(event))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def drain(self) -> None:
        """Wait for pending appends (at shutdown, before the store closes)."""
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)
        if self.dropped:
            _log.warning("audit_events_dropped", count=self.dropped)

    async def _append(self, event: AuditEvent) -> None:
        try:
            await self._store.append(event)
            if self._forward is not None:
                await self._forward(event)
        except Exception as exc:  # an audit failure must not fail a request
            _log.error("audit_append_failed", kind=event.kind, error=type(exc).__name__)
