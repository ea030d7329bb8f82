"""Keeping concurrency leases alive: renewals for requests that outlast a lease.

In Redis each concurrency limit is a sorted set of request id -> lease expiry (ms, Redis
TIME, so replica clocks never matter). A replica that dies without releasing loses its
slots when their leases run out, at most `lease_s` after its last renewal. Long requests
keep theirs because a LeaseKeeper renews every lease this process holds every lease_s/3.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Sequence
from typing import Protocol

from appliance.limits.ports import LimiterBackendError
from appliance.telemetry.logging import get_logger

_log = get_logger("routerctl.limits")


class LeaseHolder(Protocol):
    """A store that leases slots: what it holds, and renewing them in one round trip."""

    @property
    def lease_s(self) -> float: ...

    def held(self) -> list[tuple[str, str]]:
        """(slot, holder) pairs taken and not released."""
        ...

    async def renew(self, pairs: Sequence[tuple[str, str]]) -> int:
        """Push live leases to now + lease_s; returns how many were renewed."""
        ...


class LeaseKeeper:
    """Background task renewing every lease a store holds, every lease_s/3.

    Two missed rounds (Redis briefly away) still leave a lease a third of its length.
    """

    def __init__(self, store: LeaseHolder, interval_s: float | None = None) -> None:
        self._store = store
        self._interval_s = store.lease_s / 3 if interval_s is None else interval_s
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._loop(), name="lease-keeper")

    async def stop(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def renew_once(self) -> int:
        """One renewal round; returns how many leases were renewed."""
        pairs = self._store.held()
        try:
            renewed = await self._store.renew(pairs)
        except LimiterBackendError as exc:
            _log.warning("lease_renewal_failed", leases=len(pairs), error=str(exc))
            return 0
        # Pairs released during the round are not lost, just gone.
        lost = len(set(pairs) & set(self._store.held())) - renewed
        if lost > 0:
            _log.warning("leases_lapsed", lost=lost)
        return renewed

    async def _loop(self) -> None:
        while True:
            await asyncio.sleep(self._interval_s)
            await self.renew_once()
