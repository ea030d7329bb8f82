"""The state dir: writable (or creatable), free disk, and the usage outbox's backlog.

Files are read, never written (a probe file aside), and the outbox is opened read-only: a
live router may hold the dir. Filesystem calls run on a daemon thread, so a hung mount
costs one timeout and cannot keep doctor from exiting.
"""

from __future__ import annotations

import asyncio
import getpass
import os
import sqlite3
import tempfile
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from contextlib import closing
from pathlib import Path
from typing import TypeVar

from appliance.doctor import thresholds
from appliance.doctor.report import CheckResult, failed, passed
from appliance.settings import Settings

OUTBOX_FILE = "outbox.sqlite"  # as appliance/app_usage.py names it
_MB = 1024 * 1024
_T = TypeVar("_T")


async def check_state(settings: Settings, timeout_s: float) -> list[CheckResult]:
    """Rows state_dir, disk and outbox."""
    directory = Path(settings.state.dir)
    target = str(directory)
    names = ("state_dir", "disk", "outbox")
    try:
        return await _off_loop(lambda: _state_rows(settings, directory), timeout_s)
    except TimeoutError:
        return [
            failed(
                name,
                target,
                f"the filesystem did not answer within {timeout_s:g} s",
                "check the mount holding state.dir (a hung network filesystem?)",
            )
            for name in names
        ]


def _state_rows(settings: Settings, directory: Path) -> list[CheckResult]:
    target = str(directory)
    existing = _nearest_existing(directory)
    u = settings.usage
    reserve = int(settings.state.min_free_mb * _MB)
    need = int(u.max_buffer_mb * _MB) + reserve + thresholds.STATE_WORKING_MB * _MB
    if u.sink == "file" and not u.file_path:  # the usage file rotates inside the state dir
        need += int(u.file_max_mb * _MB) * (u.file_keep + 1)
    return [
        _writable(directory, existing),
        thresholds.disk(target, _free_bytes(existing), need, reserve),
        _outbox(directory / OUTBOX_FILE, int(u.max_buffer_mb * _MB)),
    ]


def _nearest_existing(path: Path) -> Path:
    for candidate in (path, *path.parents):
        if candidate.exists():
            return candidate
    return Path.cwd()


def _free_bytes(path: Path) -> int:
    while not path.is_dir():  # a file where the dir should be: measure its filesystem
        path = path.parent
    stats = os.statvfs(path)
    return stats.f_bavail * stats.f_frsize


def _writable(directory: Path, existing: Path) -> CheckResult:
    target = str(directory)
    user = getpass.getuser()
    fix = f"make it writable for the router's user (doctor ran as {user}), or set state.dir"
    if not existing.is_dir():
        return failed("state_dir", target, f"{existing} is not a directory", fix)
    if existing != directory:
        if not os.access(existing, os.W_OK | os.X_OK):
            return failed(
                "state_dir", target, f"cannot be created: {existing} is not writable", fix
            )
        return passed("state_dir", target, f"does not exist yet; serve creates it (as {user})")
    try:
        fd, probe = tempfile.mkstemp(prefix=".doctor-", dir=directory)
        os.close(fd)
        Path(probe).unlink()
    except OSError as exc:
        return failed("state_dir", target, f"not writable: {exc.strerror}", fix)
    return passed("state_dir", target, f"writable (as {user})")


def _outbox(path: Path, max_bytes: int) -> CheckResult:
    if not path.is_file():
        return passed("outbox", str(path), "no outbox yet (no router has run with this dir)")
    try:
        # Read-only, and O(1): the size row the triggers keep, and the oldest row by seq.
        uri = f"{path.resolve().as_uri()}?mode=ro"
        with closing(sqlite3.connect(uri, uri=True, timeout=1.0)) as conn:
            records, size = conn.execute("SELECT records, bytes FROM outbox_size").fetchone()
            oldest = conn.execute("SELECT created_at FROM outbox ORDER BY seq LIMIT 1").fetchone()
    except sqlite3.Error as exc:
        return failed(
            "outbox",
            str(path),
            f"cannot read it: {exc}",
            "check its owner and mode; if corrupt, stop the router and move it aside",
        )
    age = None if oldest is None else max(0.0, time.time() - float(oldest[0]))
    return thresholds.outbox(str(path), int(records), int(size), max_bytes, age)


async def _off_loop(fn: Callable[[], _T], timeout_s: float) -> _T:
    """Run `fn` on a daemon thread; TimeoutError after timeout_s (the thread is abandoned)."""
    done: Future[_T] = Future()

    def work() -> None:
        if not done.set_running_or_notify_cancel():  # the caller gave up before we started
            return
        try:
            done.set_result(fn())
        except BaseException as exc:  # handed to the waiting coroutine
            done.set_exception(exc)

    threading.Thread(target=work, name="doctor-fs", daemon=True).start()
    async with asyncio.timeout(timeout_s):
        return await asyncio.wrap_future(done)
