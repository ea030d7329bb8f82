"""The stream idle deadline: lazy, so a chunk costs a clock read, not a timer."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from appliance.errors import UpstreamStreamIdleTimeout


class IdleWatch:
    """Ends a chunk-by-chunk read when the backend stays silent for longer than `idle_s`.

    Only time spent waiting for the backend counts: each wait notes its start, and one timer
    per idle period checks it, so a slow client (no wait in progress) is never silence.
    """

    __slots__ = ("_expire", "_idle_s", "_loop", "_since", "_timer", "_waiting")

    def __init__(self, idle_s: float, expire: Callable[[UpstreamStreamIdleTimeout], None]) -> None:
        self._idle_s = idle_s
        self._expire = expire
        self._loop = asyncio.get_running_loop()
        self._since = 0.0
        self._waiting = False
        self._timer: asyncio.TimerHandle | None = None

    def waiting(self) -> None:
        self._since = self._loop.time()
        if self._timer is None:
            self._timer = self._loop.call_at(self._since + self._idle_s, self._check)
        self._waiting = True

    def answered(self) -> None:
        self._waiting = False

    def stop(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _check(self) -> None:
        now = self._loop.time()
        # A millisecond of slack: a timer may fire a clock tick early.
        if self._waiting and now - self._since >= self._idle_s - 0.001:
            self._timer = None
            self._expire(
                UpstreamStreamIdleTimeout(
                    f"The backend's stream was silent for {self._idle_s:g} s "
                    "(its stream_idle_timeout_s)."
                )
            )
            return
        base = self._since if self._waiting else now
        self._timer = self._loop.call_at(base + self._idle_s, self._check)
