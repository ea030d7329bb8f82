"""What the supervisor tells each worker it starts, through one environment variable."""

from __future__ import annotations

import ctypes
import os
import signal
from collections.abc import Mapping
from dataclasses import dataclass

import msgspec

ENV = "ROUTERCTL_WORKER"
_PR_SET_PDEATHSIG = 1


@dataclass(frozen=True, slots=True)
class WorkerRole:
    """Worker `index` of `count`: it serves the inherited listening sockets `listen_fds`,
    writes one byte to `ready_fd` once it serves, and exposes its metrics on the unix
    socket `metrics_path` for the supervisor to merge."""

    index: int
    count: int
    listen_fds: tuple[int, ...]  # listen's, then admin_listen's when it has its own
    ready_fd: int
    metrics_path: str
    supervisor_pid: int

    def encode(self) -> str:
        return msgspec.json.encode(self).decode()

    @classmethod
    def from_environ(cls, environ: Mapping[str, str]) -> WorkerRole | None:
        raw = environ.get(ENV)
        return None if raw is None else msgspec.json.decode(raw, type=cls)

    def started(self) -> None:
        """Tell the supervisor this worker serves (its startup succeeded)."""
        try:
            os.write(self.ready_fd, b"1")
        finally:
            os.close(self.ready_fd)

    def reload_all(self) -> None:
        """Ask the supervisor to reload every worker's config (it sends each one SIGHUP)."""
        os.kill(self.supervisor_pid, signal.SIGUSR1)

    def die_with_supervisor(self) -> None:
        """SIGTERM this process when the supervisor dies, even by SIGKILL, so no worker is
        orphaned; the worker then drains as on any SIGTERM (Linux; elsewhere a no-op)."""
        try:
            libc = ctypes.CDLL(None, use_errno=True)
            libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)
        except (OSError, AttributeError):
            return
        if os.getppid() != self.supervisor_pid:  # it died before prctl took effect
            os.kill(os.getpid(), signal.SIGTERM)
