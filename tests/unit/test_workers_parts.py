"""The pieces of `[server] workers` that hold no process: the role, the override follower."""

from __future__ import annotations

import asyncio

from appliance.routing.override_sync import OverrideSync
from appliance.server.worker_role import ENV, WorkerRole
from appliance.sqlite_support import StoreError


def test_the_role_round_trips_through_the_environment() -> None:
    """What the supervisor encodes is what the worker reads; no variable means no role."""
    role = WorkerRole(
        1, 2, listen_fds=(3, 5), ready_fd=4, metrics_path="run/w1.sock", supervisor_pid=9
    )
    assert WorkerRole.from_environ({ENV: role.encode()}) == role
    assert WorkerRole.from_environ({}) is None


async def test_override_sync_reloads_only_when_another_worker_wrote() -> None:
    """The book is reloaded once at the first poll and then only when the version moves; a
    failing read is retried at the next poll instead of ending the follower."""
    versions = iter([1, 1, 1, 2, 2])
    reloads: list[int] = []

    async def version() -> int:
        try:
            return next(versions)
        except StopIteration:
            raise StoreError("closed") from None

    async def reload() -> None:
        reloads.append(1)

    sync = OverrideSync(version, reload, interval_s=0.001)
    sync.start()
    for _ in range(200):
        await asyncio.sleep(0.001)
    await sync.stop()
    assert len(reloads) == 2  # the first poll (version 1) and the change to 2
