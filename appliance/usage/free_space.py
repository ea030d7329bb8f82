"""Free space on the state dir's filesystem, as a figure the request path reads for free.

The request path must not make a syscall per request, so it reads `low`, an attribute
comparison. The figure is measured (one statvfs) off the loop: by the outbox's worker thread
after a commit, at most every `min_interval_s`, and by the buffer watch's once-a-second tick,
which also notices space coming back while nothing is written.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from pathlib import Path


class FreeSpace:
    def __init__(
        self,
        directory: Path,
        reserve_bytes: int,
        *,
        min_interval_s: float = 0.1,
        statvfs: Callable[[Path], os.statvfs_result] = os.statvfs,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        if reserve_bytes < 0:
            raise ValueError("reserve_bytes must not be negative")
        self.directory = directory
        self.reserve_bytes = reserve_bytes
        self._min_interval_s = min_interval_s
        self._statvfs = statvfs
        self._monotonic = monotonic
        self._measured_at = float("-inf")
        self.free_bytes: int | None = None  # None: not measured, or the filesystem would not say

    @property
    def low(self) -> bool:
        """Whether the last figure is under the reserve (never, with a reserve of 0)."""
        free = self.free_bytes
        return free is not None and free < self.reserve_bytes

    def measure(self) -> int | None:
        """One statvfs: blocking, so call it off the loop. Space a non-root user may use."""
        self._measured_at = self._monotonic()
        try:
            stats = self._statvfs(self.directory)
        except OSError:
            # The dir vanished or the mount is gone: the outbox's own errors say so; an unknown
            # figure must not refuse requests by itself.
            self.free_bytes = None
        else:
            self.free_bytes = stats.f_bavail * stats.f_frsize
        return self.free_bytes

    def measure_if_stale(self) -> None:
        """After a commit, on the outbox's thread: measure unless measured very recently."""
        if self._monotonic() - self._measured_at >= self._min_interval_s:
            self.measure()
