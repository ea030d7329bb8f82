"""The outbox's periodic checkpoint: its log sync runs beside the commits, not before them."""

from __future__ import annotations

import asyncio
import threading
from pathlib import Path

import pytest

from appliance.usage import sqlite_outbox
from appliance.usage.sqlite_outbox import CHECKPOINT_COMMITS, SqliteOutbox

BIG = 1 << 30
WAIT_S = 30.0  # a bound on waiting for progress, far above any honest figure


async def test_commits_go_on_while_the_log_is_synced(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The sync is held; appends keep committing; the checkpoint follows the sync, and close
    waits for it."""
    events: list[str] = []
    release, started = threading.Event(), threading.Event()
    synced: list[Path] = []
    real_sync, real_checkpoint = sqlite_outbox.sync_path, sqlite_outbox._checkpoint

    def held_sync(path: Path, *, data_only: bool = False) -> None:
        events.append("sync")
        synced.append(path)
        started.set()
        assert release.wait(WAIT_S)
        real_sync(path, data_only=data_only)

    def checkpoint(conn: object) -> None:
        events.append("checkpoint")
        real_checkpoint(conn)  # type: ignore[arg-type]

    monkeypatch.setattr(sqlite_outbox, "sync_path", held_sync)
    monkeypatch.setattr(sqlite_outbox, "_checkpoint", checkpoint)
    path = tmp_path / "outbox.sqlite"
    outbox = SqliteOutbox(path, BIG, "reject", batch_window_s=0.0)
    await outbox.open()
    try:
        for n in range(CHECKPOINT_COMMITS):  # one commit each: the last one starts the sync
            await outbox.append("usage", "acme", f"r{n}", b"{}")
        assert await asyncio.to_thread(started.wait, WAIT_S)
        for n in range(10):  # committed while the sync is held
            async with asyncio.timeout(WAIT_S):
                await outbox.append("usage", "acme", f"later{n}", b"{}")
        assert events == ["sync"]
        assert outbox.commits == CHECKPOINT_COMMITS + 10
        closing = asyncio.create_task(outbox.close())
        await asyncio.sleep(0.05)
        assert not closing.done()  # it waits for the checkpoint in flight
        release.set()
        async with asyncio.timeout(WAIT_S):
            await closing
    finally:
        release.set()
        await outbox.close()
    assert synced == [Path(f"{path}-wal")]
    assert events == ["sync", "checkpoint"]


async def test_a_log_that_cannot_be_synced_still_gets_its_checkpoint(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An error syncing the log (it vanished, or the disk refuses) is not the appends' error:
    they succeed and the checkpoint runs all the same (it syncs the log itself)."""
    checkpoints: list[int] = []
    second = threading.Event()
    real_checkpoint = sqlite_outbox._checkpoint

    def failing_sync(path: Path, *, data_only: bool = False) -> None:
        raise OSError(5, "Input/output error")

    def checkpoint(conn: object) -> None:
        checkpoints.append(1)
        real_checkpoint(conn)  # type: ignore[arg-type]
        if len(checkpoints) == 2:
            second.set()

    monkeypatch.setattr(sqlite_outbox, "sync_path", failing_sync)
    monkeypatch.setattr(sqlite_outbox, "_checkpoint", checkpoint)
    async with SqliteOutbox(tmp_path / "outbox.sqlite", BIG, "reject", batch_window_s=0.0) as ob:
        for n in range(2 * CHECKPOINT_COMMITS + 1):
            await ob.append("usage", "acme", f"r{n}", b"{}")
        assert await asyncio.to_thread(second.wait, WAIT_S)
        assert (await ob.stats()).records == 2 * CHECKPOINT_COMMITS + 1
