"""Publisher and replay: the real SqliteOutbox drained into file and Kafka sinks."""

from __future__ import annotations

import asyncio
import json
import sqlite3
import time
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import closing
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from appliance.usage.backoff import Backoff
from appliance.usage.file_sink import FileSink
from appliance.usage.kafka_sink import KafkaSink
from appliance.usage.ports import OutboxItem, SinkError, Topic
from appliance.usage.publisher import Publisher, replay
from appliance.usage.sqlite_outbox import SqliteOutbox
from tests.integration.kafka_cut import ProduceCutter, ProxiedBroker
from tests.integration.test_usage_sinks import consume
from tests.services import KafkaBroker, tansu_binary
from tests.small_fs import fill as fill_disk
from tests.small_fs import tmpfs

pytestmark = pytest.mark.services

FAST = Backoff(first_s=0.02, max_s=0.2)


@pytest.fixture
async def outbox(tmp_path: Path) -> AsyncIterator[SqliteOutbox]:
    async with SqliteOutbox(tmp_path / "outbox.sqlite", 50_000_000, "reject") as opened:
        yield opened


async def fill(
    outbox: SqliteOutbox, count: int, *, first: int = 0, topic: Topic = "usage", pad: int = 0
) -> None:
    """Append `count` usage records req-{first}… over three orgs (padded by `pad` bytes)."""
    for n in range(first, first + count):
        rid = f"req-{n:05d}"
        body = {"request_id": rid, "org": f"org-{n % 3}", "n": n, "pad": "x" * pad}
        await outbox.append(topic, f"org-{n % 3}", rid, json.dumps(body).encode())


def ids_in(path: Path) -> list[str]:
    if not path.exists():
        return []
    return [json.loads(line)["request_id"] for line in path.read_text().splitlines()]


async def eventually(check: Callable[[], Awaitable[bool]], timeout_s: float = 20) -> None:
    deadline = time.monotonic() + timeout_s
    while not await check():
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.02)


def empty(outbox: SqliteOutbox) -> Callable[[], Awaitable[bool]]:
    async def check() -> bool:
        return (await outbox.stats()).records == 0

    return check


@dataclass
class Observed:
    """A PublishObserver that remembers every call."""

    published: list[tuple[str, int]] = field(default_factory=list)
    failed: list[tuple[str, str]] = field(default_factory=list)
    resent: list[tuple[str, int]] = field(default_factory=list)
    buffers: list[tuple[int, int, float]] = field(default_factory=list)

    def on_published(self, sink: str, n: int, latency_s: float) -> None:
        assert latency_s >= 0
        self.published.append((sink, n))

    def on_failed(self, sink: str, error_kind: str) -> None:
        self.failed.append((sink, error_kind))

    def on_resent(self, sink: str, n: int) -> None:
        self.resent.append((sink, n))

    def on_buffer(self, records: int, bytes: int, oldest_age_s: float) -> None:
        self.buffers.append((records, bytes, oldest_age_s))


class Observer:
    def __init__(self, seen: Observed) -> None:
        self.published = seen.on_published
        self.failed = seen.on_failed
        self.resent = seen.on_resent
        self.buffer = seen.on_buffer


class FlakySink:
    """Refuses the first `failures` publishes (or opens), then records what it is given."""

    name = "flaky"

    def __init__(self, failures: int = 0, open_failures: int = 0, delay_s: float = 0) -> None:
        self.failures = failures
        self.open_failures = open_failures
        self.delay_s = delay_s
        self.batches: list[list[str]] = []
        self.opened = self.closed = 0

    async def open(self) -> None:
        if self.open_failures:
            self.open_failures -= 1
            raise SinkError("cannot open")
        self.opened += 1

    async def publish(self, items: Sequence[OutboxItem]) -> None:
        if self.failures:
            self.failures -= 1
            raise SinkError("refused")
        self.batches.append([i.record_id for i in items])
        await asyncio.sleep(self.delay_s)  # acknowledged, not yet deleted: a cancel lands here

    async def close(self) -> None:
        self.closed += 1

    @property
    def ids(self) -> list[str]:
        return [rid for batch in self.batches for rid in batch]


ALL_200 = [f"req-{n:05d}" for n in range(200)]


# -- Publisher -----------------------------------------------------------------------------
async def test_drains_outbox_to_file_in_order(outbox: SqliteOutbox, tmp_path: Path) -> None:
    """Every record reaches the file once, in seq order, and the outbox ends empty."""
    await fill(outbox, 200)
    path = tmp_path / "usage.jsonl"
    seen = Observed()
    publisher = Publisher(outbox, FileSink(path, 10_000_000, 2), 64, observer=Observer(seen))
    publisher.start()
    await eventually(empty(outbox))
    await publisher.stop()
    assert ids_in(path) == ALL_200
    assert sum(n for _, n in seen.published) == 200
    assert seen.buffers[-1] == (0, 0, 0.0)
    assert max(n for _, n in seen.published) <= 64


async def test_notify_wakes_before_the_poll(outbox: SqliteOutbox) -> None:
    """With a one-minute poll, a notify() after appends gets them published at once."""
    sink = FlakySink()
    publisher = Publisher(outbox, sink, 100, poll_interval_s=60)
    publisher.start()
    await asyncio.sleep(0.05)  # the publisher is idle, waiting
    await fill(outbox, 5)
    publisher.notify()
    await eventually(empty(outbox), timeout_s=2)
    await publisher.stop()
    assert sink.ids == ALL_200[:5]


async def test_sink_failures_back_off_and_retry_the_same_batch(outbox: SqliteOutbox) -> None:
    """A sink that refuses three times and cannot open once gets the same first batch again
    after backoffs; nothing is skipped, reordered or deleted before its acknowledgement."""
    await fill(outbox, 30)
    sink = FlakySink(failures=3, open_failures=1)
    seen = Observed()
    publisher = Publisher(outbox, sink, 10, observer=Observer(seen), backoff=FAST)
    started = time.monotonic()
    publisher.start()
    await eventually(empty(outbox))
    await publisher.stop()
    assert sink.ids == ALL_200[:30]
    assert seen.failed == [("flaky", "open")] + [("flaky", "publish")] * 3
    assert [records for records, _, _ in seen.buffers[:4]] == [30] * 4  # shown during the outage
    # Four backoffs of at least 0.01, 0.02, 0.04 and 0.08 s (half of each exponential step).
    assert time.monotonic() - started >= 0.15
    assert (sink.opened, sink.closed) == (1, 1)


async def test_a_sink_bug_does_not_stop_the_publisher(outbox: SqliteOutbox) -> None:
    """An exception other than SinkError is reported as "unexpected" and retried like a
    failure; the loop goes on and publishes everything."""
    await fill(outbox, 5)
    sink = FlakySink()
    original = sink.publish
    calls = 0

    async def buggy(items: Sequence[OutboxItem]) -> None:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise KeyError("bug")
        await original(items)

    sink.publish = buggy  # type: ignore[method-assign]
    seen = Observed()
    publisher = Publisher(outbox, sink, 10, observer=Observer(seen), backoff=FAST)
    publisher.start()
    await eventually(empty(outbox))
    await publisher.stop()
    assert seen.failed == [("publisher", "unexpected")]
    assert sink.ids == ALL_200[:5]


async def test_backoff_is_bounded_and_jittered() -> None:
    """Delays double from first_s up to max_s, each between half and all of its step."""
    backoff = Backoff(first_s=0.1, max_s=30)
    delays = [backoff.next_delay() for _ in range(20)]
    for n, delay in enumerate(delays):
        step = min(30, 0.1 * 2**n)
        assert step / 2 <= delay <= step
    backoff.reset()
    assert backoff.next_delay() <= 0.1


async def test_topics_go_to_their_own_sinks(outbox: SqliteOutbox) -> None:
    """With a sink per topic, usage and audit records each reach only their sink, in order."""
    await fill(outbox, 10)
    await fill(outbox, 5, first=100, topic="audit")
    await fill(outbox, 10, first=10)
    usage, audit = FlakySink(), FlakySink()
    publisher = Publisher(outbox, {"usage": usage, "audit": audit}, 7)
    publisher.start()
    await eventually(empty(outbox))
    await publisher.stop()
    assert usage.ids == ALL_200[:20]
    assert audit.ids == [f"req-{n:05d}" for n in range(100, 105)]


async def test_stop_drains_then_leaves_the_rest_when_the_sink_is_down(
    outbox: SqliteOutbox, tmp_path: Path
) -> None:
    """stop() publishes what is pending before returning; with the sink refusing, it returns
    within its timeout and every record is still in the outbox."""
    await fill(outbox, 50)
    path = tmp_path / "usage.jsonl"
    publisher = Publisher(outbox, FileSink(path, 10_000_000, 2), 20, poll_interval_s=60)
    publisher.start()
    await publisher.stop(timeout_s=10)
    assert (await outbox.stats()).records == 0
    assert ids_in(path) == ALL_200[:50]

    await fill(outbox, 10, first=50)
    down = Publisher(outbox, FlakySink(failures=10**6), 20, backoff=Backoff(5, 5))
    down.start()
    await asyncio.sleep(0.1)  # first attempt failed; now in a 2.5-5 s backoff
    started = time.monotonic()
    await down.stop(timeout_s=2)
    assert time.monotonic() - started < 2.5
    assert (await outbox.stats()).records == 10


class StuckOnceSink(FlakySink):
    """Its first publish hangs until `release` is set, then fails (a produce request that
    timed out); every later one is acknowledged."""

    def __init__(self) -> None:
        super().__init__()
        self.stuck = asyncio.Event()
        self.release = asyncio.Event()

    async def publish(self, items: Sequence[OutboxItem]) -> None:
        if not self.stuck.is_set():
            self.stuck.set()
            await self.release.wait()
            raise SinkError("timed out")
        await super().publish(items)


async def test_stop_tries_once_more_after_a_try_that_began_before_it(
    outbox: SqliteOutbox,
) -> None:
    """A publish stuck when the stop begins, then failed, is followed by one more try within
    the stop's time bound: records answered before a drain are published before it ends."""
    await fill(outbox, 10)
    sink = StuckOnceSink()
    publisher = Publisher(outbox, sink, 20, backoff=Backoff(5, 5))
    publisher.start()
    await asyncio.wait_for(sink.stuck.wait(), 5)
    stopping = asyncio.create_task(publisher.stop(timeout_s=5))
    await asyncio.sleep(0.05)  # the stop has begun, the try is still stuck
    sink.release.set()
    await stopping
    assert sink.ids == ALL_200[:10]
    assert (await outbox.stats()).records == 0


async def test_kafka_outage_keeps_records_then_delivers_each_once(
    outbox: SqliteOutbox, kafka_broker: KafkaBroker
) -> None:
    """While Kafka is down records stay in the outbox and failures are reported; once it is
    back (an empty broker: the topic is recreated) every record lands in the topic, and
    each record id exactly once."""
    topic = f"usage-{uuid.uuid4().hex[:8]}"
    kafka_broker.create_topic(topic, 1)
    seen = Observed()
    sink = KafkaSink([kafka_broker.bootstrap], {"usage": topic, "audit": topic}, timeout_s=1)
    publisher = Publisher(outbox, sink, 50, observer=Observer(seen), backoff=FAST)
    publisher.start()
    try:
        await fill(outbox, 20)
        publisher.notify()
        await eventually(empty(outbox))  # Kafka up: published (and lost with the restart)

        kafka_broker.stop()
        await fill(outbox, 150, first=20)
        publisher.notify()
        await eventually(lambda: _at_least(seen.failed, 3))
        assert (await outbox.stats()).records == 150
        assert {kind for _, kind in seen.failed} <= {"open", "publish"}

        # Both calls block the loop, so the publisher cannot auto-create the topic between them.
        kafka_broker.start()
        kafka_broker.create_topic(topic, 1)
        await eventually(empty(outbox), timeout_s=30)
    finally:
        await publisher.stop()
    got = await consume(kafka_broker.bootstrap, topic, 150)
    counts = Counter(dict(r.headers)["record_id"].decode() for r in got)
    duplicates = {rid: n for rid, n in counts.items() if n > 1}
    assert set(counts) == set(ALL_200[20:170])
    assert not duplicates, f"{len(duplicates)} record ids published more than once"


async def _at_least(items: Sequence[object], n: int) -> bool:
    return len(items) >= n


def truncate_wal(path: Path) -> None:
    """Checkpoint the outbox's WAL into the database and cut the WAL to 0 bytes."""
    with closing(sqlite3.connect(path)) as conn:
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")


async def test_a_failed_delete_does_not_publish_the_batch_again(tmp_path: Path) -> None:
    """With the disk full, deleting published records fails: the publisher retries the delete,
    not the publish, so each record reaches the sink once, before and after space returns."""
    with tmpfs(tmp_path / "fs", 2 * 1024 * 1024) as fs:
        async with SqliteOutbox(fs / "outbox.sqlite", 50_000_000, "reject") as outbox:
            await fill(outbox, 20)
            await asyncio.to_thread(truncate_wal, outbox.path)  # the delete must grow the WAL
            filler = fill_disk(fs)
            sink = FlakySink()
            seen = Observed()
            publisher = Publisher(outbox, sink, 10, observer=Observer(seen), backoff=FAST)
            publisher.start()
            try:
                await eventually(lambda: _at_least(seen.failed, 4))
                assert set(seen.failed) == {("outbox", "outbox")}
                assert sink.ids == ALL_200[:10]  # published once, not once per retry
                filler.unlink()
                await eventually(empty(outbox))
            finally:
                await publisher.stop()
    assert sink.ids == ALL_200[:20]
    assert seen.resent == []


@pytest.fixture
async def cut_kafka(tmp_path: Path) -> AsyncIterator[tuple[ProduceCutter, ProxiedBroker]]:
    """A Tansu of its own behind a proxy that breaks the link at the 4th Produce request."""
    cutter = ProduceCutter(cut_at=4)
    await cutter.start()
    broker = ProxiedBroker(tansu_binary(), tmp_path / "tansu", cutter.port)
    try:
        await asyncio.to_thread(broker.start)
        cutter.target = ("127.0.0.1", broker.port)
        yield cutter, broker
    finally:
        await cutter.stop()
        await asyncio.to_thread(broker.close)


async def test_a_publish_broken_mid_batch_resends_only_unacknowledged_records(
    outbox: SqliteOutbox, cut_kafka: tuple[ProduceCutter, ProxiedBroker]
) -> None:
    """When the broker link breaks in the middle of a 500-record publish, the records Kafka
    acknowledged are not sent again: duplicates are at most the records in flight at the
    break, and every record arrives."""
    cutter, broker = cut_kafka
    topic = f"usage-{uuid.uuid4().hex[:8]}"
    await asyncio.to_thread(broker.create_topic, topic, 1)
    await fill(outbox, 500, pad=300)  # ~40 records per Produce request
    seen = Observed()
    sink = KafkaSink(
        [f"127.0.0.1:{cutter.port}"],
        {"usage": topic, "audit": topic},
        compression=None,
        timeout_s=5,  # the cut fails the publish at once; a loaded machine must not time out first
    )
    publisher = Publisher(outbox, sink, 500, observer=Observer(seen), backoff=FAST)
    publisher.start()
    try:
        await eventually(lambda: _at_least(seen.failed, 1))
        assert cutter.was_cut, "the publish failed before the cut"
        cutter.restore()
        await eventually(empty(outbox), timeout_s=30)
    finally:
        await publisher.stop()
    in_flight, acknowledged = cutter.in_flight_at_cut, cutter.acknowledged_before_cut
    got = await consume(broker.bootstrap, topic, 500 + in_flight)
    counts = Counter(dict(r.headers)["record_id"].decode() for r in got)
    duplicates = sum(n - 1 for n in counts.values())
    print(f"acknowledged before the cut {acknowledged}, in flight {in_flight}, dup {duplicates}")
    assert set(counts) == {f"req-{n:05d}" for n in range(500)}
    assert acknowledged > 0
    assert duplicates <= in_flight < 500 - acknowledged
    # Counted per attempt, never the acknowledged part: each failed attempt (a reconnecting
    # producer may fail more than once) resends at most the records still unacknowledged.
    resent = sum(n for _, n in seen.resent)
    assert 0 < resent <= (500 - acknowledged) * len(seen.failed)
    assert all(n <= 500 - acknowledged for _, n in seen.resent)


# -- replay --------------------------------------------------------------------------------
async def test_replay_publishes_everything_and_reports_progress(outbox: SqliteOutbox) -> None:
    """replay() sends every record in order, deletes them, and reports (done, total)."""
    await fill(outbox, 120)
    sink = FlakySink()
    progress: list[tuple[int, int]] = []
    done = await replay(outbox, sink, batch_max=50, progress=lambda d, t: progress.append((d, t)))
    assert done == 120
    assert sink.ids == ALL_200[:120]
    assert progress == [(0, 120), (50, 120), (100, 120), (120, 120)]
    assert (await outbox.stats()).records == 0
    assert (sink.opened, sink.closed) == (1, 1)


async def test_replay_resumes_after_interruption(outbox: SqliteOutbox) -> None:
    """A replay cancelled midway deletes only acknowledged records; a second run delivers the
    rest, so every record is delivered and none was lost."""
    await fill(outbox, 200)
    first = FlakySink(delay_s=0.02)
    progress: list[int] = []
    task = asyncio.create_task(
        replay(outbox, first, batch_max=20, progress=lambda d, _t: progress.append(d))
    )
    await eventually(lambda: _at_least(progress, 4))  # three batches done
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    remaining = {item.record_id for item in await outbox.peek(1000)}
    deleted = set(ALL_200) - remaining
    assert deleted, "the first run deleted nothing"
    assert remaining, "the first run was not interrupted"
    assert deleted <= set(first.ids), "a record was deleted without acknowledgement"
    assert first.closed == 1

    second = FlakySink()
    assert await replay(outbox, second, batch_max=20) == len(remaining)
    assert set(first.ids) | set(second.ids) == set(ALL_200)
    assert (await outbox.stats()).records == 0


async def test_replay_stops_at_a_sink_error_and_keeps_the_rest(outbox: SqliteOutbox) -> None:
    """A sink failure raises SinkError; the batches acknowledged before it are deleted and
    everything after it stays."""
    await fill(outbox, 60)
    sink = FlakySink()
    original = sink.publish

    async def fail_third(items: Sequence[OutboxItem]) -> None:
        if len(sink.batches) == 2:
            raise SinkError("kafka unreachable")
        await original(items)

    sink.publish = fail_third  # type: ignore[method-assign]
    with pytest.raises(SinkError):
        await replay(outbox, sink, batch_max=20)
    assert [i.record_id for i in await outbox.peek(100)] == ALL_200[40:60]


def zero_size_counter(path: Path) -> None:
    """Make the outbox's size row lie, as after a hand repair of the file."""
    with closing(sqlite3.connect(path)) as conn, conn:
        conn.execute("UPDATE outbox_size SET records = 0, bytes = 0")


async def test_replay_does_not_trust_the_size_counter(outbox: SqliteOutbox) -> None:
    """replay() runs until the outbox is empty, even when the size counter says it is."""
    await fill(outbox, 20)
    await asyncio.to_thread(zero_size_counter, outbox.path)
    sink = FlakySink()
    progress: list[tuple[int, int]] = []
    done = await replay(outbox, sink, batch_max=8, progress=lambda d, t: progress.append((d, t)))
    assert done == 20
    assert sink.ids == ALL_200[:20]
    assert progress[-1] == (20, 20)
    assert await outbox.peek(100) == []


async def test_replay_limit(outbox: SqliteOutbox) -> None:
    """limit=N publishes and deletes the N oldest records only."""
    await fill(outbox, 30)
    sink = FlakySink()
    assert await replay(outbox, sink, limit=25, batch_max=10) == 25
    assert sink.ids == ALL_200[:25]
    assert [i.record_id for i in await outbox.peek(100)] == ALL_200[25:30]


async def test_replay_dry_run_deletes_nothing(outbox: SqliteOutbox) -> None:
    """A dry run counts the records (all, or up to limit), opens no sink and deletes nothing."""
    await fill(outbox, 45)
    before = await outbox.stats()
    sink = FlakySink(failures=10**6, open_failures=10**6)
    assert await replay(outbox, sink, dry_run=True, batch_max=10) == 45
    assert await replay(outbox, sink, dry_run=True, limit=12, batch_max=10) == 12
    assert await outbox.stats() == before
    assert sink.batches == []


async def test_replay_to_kafka(outbox: SqliteOutbox, kafka_broker: KafkaBroker) -> None:
    """replay() into the real broker: every record arrives with its key, then the outbox is
    empty."""
    topic = f"replay-{uuid.uuid4().hex[:8]}"
    kafka_broker.create_topic(topic, 1)
    await fill(outbox, 40)
    sink = KafkaSink([kafka_broker.bootstrap], {"usage": topic, "audit": topic}, timeout_s=5)
    assert await replay(outbox, sink, batch_max=15) == 40
    got = await consume(kafka_broker.bootstrap, topic, 40)
    assert [dict(r.headers)["record_id"].decode() for r in got] == ALL_200[:40]
    assert [r.key for r in got] == [f"org-{n % 3}".encode() for n in range(40)]
    assert (await outbox.stats()).records == 0
