"""Usage sinks against real files and a real Kafka broker (Tansu)."""

from __future__ import annotations

import asyncio
import json
import os
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from unittest import mock

import pytest
import structlog
from aiokafka import AIOKafkaConsumer
from aiokafka.structs import ConsumerRecord

from appliance.usage.file_sink import FileSink, NoneSink, StdoutSink
from appliance.usage.kafka_sink import KafkaSink
from appliance.usage.ports import OutboxItem, SinkError, Topic
from tests.services import KafkaBroker, free_port

pytestmark = pytest.mark.services


def item(seq: int, *, org: str = "acme", topic: Topic = "usage", size: int = 0) -> OutboxItem:
    """One record whose JSON payload names its seq (padded to about `size` bytes)."""
    body = {"request_id": f"req-{seq:04d}", "org": org, "pad": "x" * size}
    return OutboxItem(
        seq=seq,
        topic=topic,
        key=org,
        record_id=f"req-{seq:04d}",
        payload=json.dumps(body, separators=(",", ":")).encode(),
        created_at=1_700_000_000.0 + seq,
    )


def lines(path: Path) -> list[dict[str, object]]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def files_in(directory: Path) -> dict[str, list[object]]:
    """Each file's name and the request ids in it, in file order."""
    return {p.name: [r["request_id"] for r in lines(p)] for p in directory.iterdir()}


def sizes(directory: Path) -> list[int]:
    return [p.stat().st_size for p in directory.iterdir()]


# -- FileSink ------------------------------------------------------------------------------
async def test_file_sink_appends_json_lines(tmp_path: Path) -> None:
    """Each published record is one JSON line, in order, appended across batches and reopens."""
    path = tmp_path / "state" / "usage.jsonl"
    sink = FileSink(path, max_bytes=1_000_000, keep=3)
    await sink.open()
    await sink.publish([item(1), item(2)])
    await sink.publish([item(3)])
    await sink.close()
    again = FileSink(path, max_bytes=1_000_000, keep=3)
    await again.publish([item(4)])  # opens on first use
    await again.close()
    assert [r["request_id"] for r in lines(path)] == [
        "req-0001",
        "req-0002",
        "req-0003",
        "req-0004",
    ]


async def test_file_sink_fsyncs_before_acknowledging(tmp_path: Path) -> None:
    """publish() returns only after fsync of the file's descriptor: acknowledged means on disk."""
    path = tmp_path / "usage.jsonl"
    sink = FileSink(path, max_bytes=1_000_000, keep=1)
    await sink.open()
    with mock.patch("appliance.usage.file_sink.os.fsync", wraps=os.fsync) as fsync:
        await sink.publish([item(1), item(2)])
    await sink.close()
    assert fsync.call_count >= 1
    assert path.read_bytes().count(b"\n") == 2


async def test_file_sink_rotates_and_keeps_n(tmp_path: Path) -> None:
    """Past max_bytes the file rotates to .1, .2 …; only `keep` rotated files remain, and no
    record is lost from those that remain or split across files."""
    path = tmp_path / "usage.jsonl"
    one = len(item(0, size=100).payload) + 1
    sink = FileSink(path, max_bytes=one * 3, keep=2)  # three records per file
    await sink.open()
    for seq in range(1, 13):  # 12 records: 4 files' worth, one file more than kept
        await sink.publish([item(seq, size=100)])
    await sink.close()
    assert files_in(tmp_path) == {
        "usage.jsonl.2": ["req-0004", "req-0005", "req-0006"],
        "usage.jsonl.1": ["req-0007", "req-0008", "req-0009"],
        "usage.jsonl": ["req-0010", "req-0011", "req-0012"],
    }
    assert max(sizes(tmp_path)) <= one * 3


async def test_file_sink_write_error_is_a_sink_error(tmp_path: Path) -> None:
    """A file that cannot be opened raises SinkError naming the path, not OSError."""
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("")
    sink = FileSink(blocker / "usage.jsonl", max_bytes=1000, keep=1)
    with pytest.raises(SinkError, match="not-a-dir"):
        await sink.publish([item(1)])
    await sink.close()


async def test_stdout_and_none_sinks(tmp_path: Path) -> None:
    """StdoutSink writes one line per record to its stream; NoneSink accepts and discards."""
    out = tmp_path / "out.jsonl"
    with out.open("wb") as stream:
        sink = StdoutSink(stream)
        await sink.open()
        await sink.publish([item(1), item(2)])
        await sink.close()
    assert [r["request_id"] for r in lines(out)] == ["req-0001", "req-0002"]
    none = NoneSink()
    await none.open()
    await none.publish([item(3)])
    await none.close()


# -- KafkaSink -----------------------------------------------------------------------------
@pytest.fixture
def topic(kafka_broker: KafkaBroker) -> str:
    name = f"usage-{uuid.uuid4().hex[:8]}"
    kafka_broker.create_topic(name, 1)
    return name


@pytest.fixture
async def kafka_sink(kafka_broker: KafkaBroker, topic: str) -> AsyncIterator[KafkaSink]:
    sink = KafkaSink([kafka_broker.bootstrap], {"usage": topic, "audit": topic}, timeout_s=5)
    try:
        yield sink
    finally:
        await sink.close()


async def consume(
    bootstrap: str, topic: str, count: int, wait_s: float = 15
) -> list[ConsumerRecord]:
    """Read `count` records from the start of `topic` (no consumer group), within wait_s."""
    consumer = AIOKafkaConsumer(
        topic, bootstrap_servers=bootstrap, auto_offset_reset="earliest", enable_auto_commit=False
    )
    await consumer.start()
    records: list[ConsumerRecord] = []
    try:
        deadline = time.monotonic() + wait_s
        while len(records) < count and time.monotonic() < deadline:
            batches = await consumer.getmany(timeout_ms=500)
            for batch in batches.values():
                records.extend(batch)
    finally:
        await consumer.stop()
    return records


async def test_kafka_publish_round_trip(
    kafka_broker: KafkaBroker, topic: str, kafka_sink: KafkaSink
) -> None:
    """50 records published in batches come back from the topic with their org keys, record_id
    headers and payloads, each org's records in publish order."""
    sent = [item(seq, org=f"org-{seq % 3}") for seq in range(1, 51)]
    await kafka_sink.open()
    for start in range(0, 50, 20):
        await kafka_sink.publish(sent[start : start + 20])
    got = await consume(kafka_broker.bootstrap, topic, 50)
    assert len(got) == 50
    assert [(r.key, r.value) for r in got] == [(i.key.encode(), i.payload) for i in sent]
    assert [dict(r.headers)["record_id"] for r in got] == [i.record_id.encode() for i in sent]


async def test_kafka_batch_of_two_topics_with_one_not_seen_yet(
    kafka_broker: KafkaBroker, topic: str
) -> None:
    """A batch of usage records then an audit record whose topic the producer has not seen
    (auto-created on first use) is delivered whole. aiokafka alone forgets the usage topic's
    leader when it asks for the audit topic's metadata, and the usage records wait until the
    publish times out."""
    audit = f"{topic}-audit"
    sink = KafkaSink([kafka_broker.bootstrap], {"usage": topic, "audit": audit}, timeout_s=3)
    sent = [item(seq) for seq in range(1, 11)] + [item(11, topic="audit")]
    try:
        await sink.publish(sent)
        await sink.publish([item(12), item(13, topic="audit")])
    finally:
        await sink.close()
    usage_got = await consume(kafka_broker.bootstrap, topic, 11)
    audit_got = await consume(kafka_broker.bootstrap, audit, 2)
    assert [r.value for r in usage_got] == [i.payload for i in sent[:10]] + [item(12).payload]
    assert [r.value for r in audit_got] == [item(11, topic="audit").payload, item(13).payload]


async def test_kafka_idempotence_fallback_is_logged_once(
    kafka_broker: KafkaBroker, topic: str, kafka_sink: KafkaSink
) -> None:
    """Tansu refuses idempotent producers: the sink logs that once, falls back to a plain
    acks=all producer and publishes; reopening does not log again."""
    with structlog.testing.capture_logs() as logs:
        await kafka_sink.open()
        await kafka_sink.publish([item(1)])
        await kafka_sink.close()
        await kafka_sink.publish([item(2)])
    fallbacks = [e for e in logs if e["event"] == "kafka_idempotence_unsupported"]
    assert len(fallbacks) == 1
    assert fallbacks[0]["fallback"] == "enable_idempotence=False, acks=all"
    assert kafka_sink.idempotent is False
    assert len(await consume(kafka_broker.bootstrap, topic, 2)) == 2


async def test_kafka_down_raises_sink_error_within_timeout(
    kafka_broker: KafkaBroker, topic: str
) -> None:
    """With the broker stopped, publish on an open producer and open of a new one each raise
    SinkError within the timeout (no hang), and the message carries no payload."""
    sink = KafkaSink([kafka_broker.bootstrap], {"usage": topic, "audit": topic}, timeout_s=2)
    try:
        await sink.publish([item(1)])
        kafka_broker.stop()
        started = time.monotonic()
        with pytest.raises(SinkError) as caught:
            await asyncio.wait_for(sink.publish([item(2, size=10)]), timeout=10)
        assert time.monotonic() - started < 5
        assert "xxxxxxxxxx" not in str(caught.value)
        started = time.monotonic()
        with pytest.raises(SinkError, match="unreachable"):
            await asyncio.wait_for(sink.open(), timeout=10)
        assert time.monotonic() - started < 5
    finally:
        await sink.close()
        kafka_broker.start()


async def test_kafka_frozen_broker_times_out(kafka_broker: KafkaBroker, topic: str) -> None:
    """A broker that accepts connections but never answers (SIGSTOP) makes open() raise
    SinkError after timeout_s instead of waiting forever."""
    sink = KafkaSink([kafka_broker.bootstrap], {"usage": topic, "audit": topic}, timeout_s=1)
    kafka_broker.pause()
    try:
        started = time.monotonic()
        with pytest.raises(SinkError):
            await asyncio.wait_for(sink.publish([item(1)]), timeout=10)
        assert time.monotonic() - started < 4
    finally:
        kafka_broker.resume()
        await sink.close()


async def test_kafka_unreachable_address() -> None:
    """A bootstrap address where nothing listens fails open() with SinkError naming it."""
    address = f"127.0.0.1:{free_port()}"
    sink = KafkaSink([address], {"usage": "t", "audit": "t"}, timeout_s=2)
    with pytest.raises(SinkError, match=address):
        await sink.open()
    await sink.close()
