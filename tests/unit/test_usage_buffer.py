"""The state disk's cached free space and the recorder's refusals, with fakes (no disk)."""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from pathlib import Path

import pytest

from appliance.errors import UsageBufferFull
from appliance.sqlite_support import StoreError
from appliance.usage.free_space import FreeSpace
from appliance.usage.ports import OutboxItem, OutboxStats, Topic
from appliance.usage.record import RequestFacts
from appliance.usage.recorder import UsageRecorder

MB = 1024 * 1024


Statvfs = Callable[[Path], os.statvfs_result]


def statvfs_with(free_blocks: list[int], block: int = 4096) -> tuple[list[Path], Statvfs]:
    """A fake statvfs reporting each of `free_blocks` in turn; it records the paths asked."""
    asked: list[Path] = []

    def fake(path: Path) -> os.statvfs_result:
        asked.append(path)
        if not free_blocks:
            raise FileNotFoundError(path)
        avail = free_blocks.pop(0)
        return os.statvfs_result((block, block, 1000, avail, avail, 10, 10, 10, 0, 255))

    return asked, fake


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_free_space_is_low_only_under_a_positive_reserve() -> None:
    """free = f_bavail x f_frsize; low below the reserve, never with a reserve of 0 or no figure."""
    _, fake = statvfs_with([100, 300, 0])
    space = FreeSpace(Path("/s"), 1 * MB, statvfs=fake)
    readings: list[tuple[int | None, bool]] = [(None, space.low)]
    for _ in range(4):  # 100 blocks, 300 blocks (1.17 MiB), 0 blocks, then an OSError
        readings.append((space.measure(), space.low))
    assert readings == [
        (None, False),  # not measured yet
        (100 * 4096, True),
        (300 * 4096, False),
        (0, True),
        (None, False),  # the dir vanished: an unknown figure refuses nothing
    ]
    off = FreeSpace(Path("/s"), 0, statvfs=fake)
    off.free_bytes = 0
    assert not off.low


def test_measure_if_stale_measures_at_most_once_per_interval() -> None:
    """After commits, statvfs runs only when the last figure is older than min_interval_s."""
    asked, fake = statvfs_with([1] * 10)
    clock = Clock()
    space = FreeSpace(Path("/s"), 0, min_interval_s=0.1, statvfs=fake, monotonic=clock)
    for _ in range(5):  # five commits within the same instant
        space.measure_if_stale()
    clock.now += 0.05
    space.measure_if_stale()
    clock.now += 0.06
    space.measure_if_stale()
    assert len(asked) == 2


class Observed:
    def __init__(self) -> None:
        self.events: list[str] = []
        self.held_gauge = 0

    def recorded(
        self, org: str | None, model: str | None, prompt: int, completion: int, usd: float
    ) -> None:
        del org, model, prompt, completion, usd  # only the count matters here
        self.events.append("written")

    def record_failed(self, reason: str) -> None:
        self.events.append(reason)

    def held(self, records: int) -> None:
        self.held_gauge = records


class BrokenOutbox:
    """Appends fail with SQLite's full-disk error while `full` is set."""

    def __init__(self) -> None:
        self.full = True
        self.ids: list[str] = []

    async def append(self, topic: Topic, key: str, record_id: str, payload: bytes) -> None:
        del topic, key, payload
        if self.full:
            raise StoreError("outbox.sqlite: outbox store: append failed: database or disk is full")
        self.ids.append(record_id)

    async def peek(self, limit: int, after_seq: int = 0) -> list[OutboxItem]:
        del limit, after_seq
        return []

    async def delete(self, seqs: Sequence[int]) -> None:
        del seqs

    async def stats(self) -> OutboxStats:
        return OutboxStats(len(self.ids), 0, None)


def recorder_on(outbox: BrokenOutbox, observed: Observed, space: FreeSpace | None) -> UsageRecorder:
    return UsageRecorder(
        outbox=outbox,
        prices=lambda _model: (0.0, 0.0),
        notify=lambda: None,
        observer=observed,
        max_bytes=10 * MB,
        reject_when_full=True,
        free_space=space,
    )


def facts(record_id: str) -> RequestFacts:
    return RequestFacts(id=record_id, request_id=record_id, started_at=1.0, ended_at=2.0)


async def test_a_record_the_outbox_refuses_is_held_then_written_in_order() -> None:
    """record() never raises on a full disk: the record is held (counted), new requests are
    refused with usage_buffer_full, and flush_held() writes held records oldest first."""
    outbox, observed = BrokenOutbox(), Observed()
    recorder = recorder_on(outbox, observed, None)
    assert recorder.admit()
    assert recorder.admit()
    await recorder.record(facts("r1"))
    await recorder.record(facts("r2"))
    assert recorder.held == 2
    assert observed.held_gauge == 2
    assert observed.events == ["held", "held"]
    assert "held in memory" in (recorder.refusal() or "")
    with pytest.raises(UsageBufferFull) as refused:
        recorder.admit()
    assert "disk" in refused.value.message
    assert await recorder.flush_held() == 0  # still full
    outbox.full = False
    assert await recorder.flush_held() == 2
    assert outbox.ids == ["r1", "r2"]
    assert (recorder.held, observed.held_gauge, recorder.refusal()) == (0, 0, None)
    assert observed.events == ["held", "held", "written", "written"]
    assert recorder.admit()


async def test_held_records_left_at_shutdown_are_counted_as_lost() -> None:
    """drop_held() logs and counts every record still held, and empties the hold."""
    outbox, observed = BrokenOutbox(), Observed()
    recorder = recorder_on(outbox, observed, None)
    await recorder.record(facts("r1"), admitted=False)
    assert recorder.drop_held() == 1
    assert (recorder.held, observed.held_gauge) == (0, 0)
    assert observed.events == ["held", "lost"]


def test_a_low_disk_refuses_with_the_reason() -> None:
    """Under the reserve admit() raises usage_buffer_full and refusal() names the figures."""
    _, fake = statvfs_with([10])
    space = FreeSpace(Path("/s"), 1 * MB, statvfs=fake)
    space.measure()
    recorder = recorder_on(BrokenOutbox(), Observed(), space)
    with pytest.raises(UsageBufferFull):
        recorder.admit()
    assert recorder.refusal() == "state dir disk low: 0.0 MB free, below state.min_free_mb (1 MB)"
