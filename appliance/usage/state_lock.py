"""Who may use a state dir: serving routers share it, `buffer replay` needs it alone.

An advisory `flock` on `{state_dir}/router.lock`. Every router process holds a shared lock
while it serves (several workers coexist); replay takes an exclusive one without waiting,
so it refuses to drain an outbox a live router is still appending to and publishing from.
The kernel drops the lock when its holder dies, even by SIGKILL, so it never goes stale.
"""

from __future__ import annotations

import fcntl
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

LOCK_FILE = "router.lock"


class StateDirBusy(RuntimeError):
    """The state dir is in use by another party (a router, or a replay)."""


@contextmanager
def hold_shared(state_dir: Path) -> Iterator[None]:
    """Hold a shared lock while serving; StateDirBusy if a replay holds the dir right now."""
    state_dir.mkdir(parents=True, exist_ok=True)
    with _locked(state_dir, fcntl.LOCK_SH, "a `routerctl buffer replay` is running on it"):
        yield


@contextmanager
def try_exclusive(state_dir: Path) -> Iterator[None]:
    """Hold the dir alone; StateDirBusy at once if a router (or another replay) uses it."""
    if not state_dir.is_dir():
        raise FileNotFoundError(f"{state_dir}: no such state directory")
    with _locked(state_dir, fcntl.LOCK_EX, "a router is serving from it; stop it first"):
        yield


@contextmanager
def _locked(state_dir: Path, mode: int, busy: str) -> Iterator[None]:
    path = state_dir / LOCK_FILE
    # Read-only is enough for flock, so a lock file the caller cannot write still works.
    fd = os.open(path, os.O_RDONLY | os.O_CREAT | os.O_CLOEXEC, 0o644)
    try:
        try:
            fcntl.flock(fd, mode | fcntl.LOCK_NB)
        except BlockingIOError:
            raise StateDirBusy(f"{path}: the state dir is busy: {busy}") from None
        yield  # closing the descriptor releases the lock
    finally:
        os.close(fd)
