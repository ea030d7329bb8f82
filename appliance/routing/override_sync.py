"""Workers sharing one overrides file: each reloads its book when another worker wrote it."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

from appliance.sqlite_support import StoreError
from appliance.telemetry.logging import get_logger

_log = get_logger("routerctl.routing")


class OverrideSync:
    """Polls `version()` every `interval_s` and calls `reload()` when it changed.

    An override set through one worker is obeyed by every worker within one interval, as
    the design asks of replicas (within one second). With etcd the watch does this instead.
    """

    def __init__(
        self,
        version: Callable[[], Awaitable[int]],
        reload: Callable[[], Awaitable[None]],
        interval_s: float = 0.25,
    ) -> None:
        self._version = version
        self._reload = reload
        self._interval_s = interval_s
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="override-sync")

    async def stop(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)

    async def _run(self) -> None:
        seen: int | None = None
        while True:
            await asyncio.sleep(self._interval_s)
            try:
                version = await self._version()
                if version != seen:  # the first poll too: a write may precede it
                    await self._reload()
                seen = version
            except StoreError as exc:  # the next poll tries again
                _log.warning("override_sync_failed", error=str(exc))
