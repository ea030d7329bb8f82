"""Usage records are never lost: SIGKILL of the router mid-load, and a Kafka outage."""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections import Counter
from pathlib import Path

import aiohttp
import pytest
from aiokafka import AIOKafkaConsumer

from appliance.auth.keyring import hash_key
from tests.e2e.cli import router_process
from tests.reliability import Figures, sized
from tests.services import KafkaBroker, free_port

KEY = "rk-e2e-usage"
pytestmark = pytest.mark.services


def config(tmp: Path, mock_url: str, bootstrap: str, topic: str, metrics_port: int) -> Path:
    path = tmp / "router.toml"
    path.write_text(
        f"""
[server]
metrics_listen = "127.0.0.1:{metrics_port}"
graceful_shutdown_s = 2

[state]
dir = "{tmp / "state"}"

[telemetry]
access_log = false

[usage]
sink = "kafka"
kafka_bootstrap = ["{bootstrap}"]
kafka_topic = "{topic}"
kafka_audit_topic = "{topic}-audit"

[[backends]]
id = "mock"
url = "{mock_url}"

[[models]]
name = "m"
backends = [{{ backend = "mock" }}]

[[orgs]]
id = "acme"

[[keys]]
id = "k"
org = "acme"
sha256 = "{hash_key(KEY)}"
"""
    )
    return path


async def load(url: str, seconds: float, done: list[str], workers: int = 8) -> None:
    """Chat requests, every other one streamed; `done` gets the ids of complete answers."""
    deadline = time.monotonic() + seconds
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as session:

        async def worker(n: int) -> None:
            i = 0
            while time.monotonic() < deadline:
                i += 1
                rid = f"w{n}-{i}-{uuid.uuid4().hex[:8]}"
                stream = i % 2 == 0
                body = {
                    "model": "m",
                    "stream": stream,
                    "messages": [{"role": "user", "content": "[mock:chunks=3] hello"}],
                }
                headers = {"Authorization": f"Bearer {KEY}", "x-request-id": rid}
                try:
                    async with session.post(
                        f"{url}/v1/chat/completions", json=body, headers=headers
                    ) as response:
                        data = await response.read()
                except (aiohttp.ClientError, TimeoutError):
                    await asyncio.sleep(0.05)  # the router is down: not a complete answer
                    continue
                if response.status == 200 and (not stream or data.endswith(b"data: [DONE]\n\n")):
                    done.append(rid)

        await asyncio.gather(*(worker(n) for n in range(workers)))


async def published_ids(bootstrap: str, topic: str, expect: list[str]) -> Counter[str]:
    """Every record in the topic by request id, read until all expected ids have shown up."""
    seen: Counter[str] = Counter()
    consumer = AIOKafkaConsumer(
        topic, bootstrap_servers=bootstrap, auto_offset_reset="earliest", enable_auto_commit=False
    )
    await consumer.start()
    try:
        deadline = time.monotonic() + 30
        quiet_since = time.monotonic()
        while time.monotonic() < deadline:
            batches = await consumer.getmany(timeout_ms=300)
            for batch in batches.values():
                seen.update(json.loads(r.value)["request_id"] for r in batch)
                quiet_since = time.monotonic()
            # Done when all are in and the topic has been quiet a moment (duplicates too).
            if all(rid in seen for rid in expect) and time.monotonic() - quiet_since > 1:
                break
    finally:
        await consumer.stop()
    return seen


async def metric(port: int, name: str) -> float:
    async with (
        aiohttp.ClientSession() as session,
        session.get(f"http://127.0.0.1:{port}/metrics") as response,
    ):
        text = await response.text()
    return sum(float(line.split()[-1]) for line in text.splitlines() if line.startswith(name + " "))


@pytest.mark.reliability("1.1", "router SIGKILLed under load and restarted, again and again")
async def test_sigkill_mid_load_loses_no_record(
    kafka_broker: KafkaBroker, mock_url: str, tmp_path: Path, figures: Figures
) -> None:
    """Every request answered in full before any of several SIGKILLs has a record in Kafka,
    and each kill republishes at most one batch."""
    topic = f"usage-{uuid.uuid4().hex[:8]}"
    kafka_broker.create_topic(topic, 1)
    metrics_port = free_port()
    path = config(tmp_path, mock_url, kafka_broker.bootstrap, topic, metrics_port)
    kills = sized(3, 20)
    done: list[str] = []
    for _ in range(kills):
        with router_process(["--config", str(path)], tmp_path) as router:
            before = len(done)
            loader = asyncio.create_task(load(router.url, 1.5, done))
            await asyncio.sleep(0.7)
            router.process.kill()  # SIGKILL: no drain, no flush, nothing graceful
            await asyncio.to_thread(router.process.wait, 10)
            await loader
            assert len(done) > before, "no request was answered before the kill"
    with router_process(["--config", str(path)], tmp_path):
        seen = await published_ids(kafka_broker.bootstrap, topic, done)
    missing = [rid for rid in done if rid not in seen]
    duplicates = sum(n - 1 for n in seen.values() if n > 1)
    print(f"kills {kills}, complete answers {len(done)}, records {sum(seen.values())}, "
          f"duplicates {duplicates}")  # fmt: skip
    figures.add("kills", kills)
    figures.add("answered", len(done))
    figures.add("lost", len(missing), bound=0)
    figures.add("duplicates", duplicates, bound=kills * 500)  # one batch (batch_max) a kill
    assert missing == []
    assert duplicates <= kills * 500


async def readiness(url: str) -> tuple[int, dict[str, dict[str, str]]]:
    async with aiohttp.ClientSession() as session, session.get(f"{url}/v1/status/readyz") as r:
        return r.status, await r.json()


@pytest.mark.reliability("1.2", "Kafka down under load, then back (empty)")
async def test_kafka_outage_buffers_then_drains(
    kafka_broker: KafkaBroker, mock_url: str, tmp_path: Path, figures: Figures
) -> None:
    """With Kafka down requests still succeed and records buffer; when it returns they drain."""
    topic = f"usage-{uuid.uuid4().hex[:8]}"
    kafka_broker.create_topic(topic, 1)
    metrics_port = free_port()
    path = config(tmp_path, mock_url, kafka_broker.bootstrap, topic, metrics_port)
    with router_process(["--config", str(path)], tmp_path) as router:
        kafka_broker.stop()
        during: list[str] = []
        await load(router.url, outage_s := sized(2, 30), during, workers=4)
        assert len(during) > 10
        await asyncio.sleep(1.5)  # the publisher reports the buffer after a failed attempt
        buffered = await metric(metrics_port, "router_usage_buffer_records")
        assert buffered >= len(during)
        # The default policy counts every configured component: Kafka down -> not ready.
        status, body = await readiness(router.url)
        assert (status, body["components"]["kafka"]) == (503, "unhealthy")
        kafka_broker.start()  # Tansu's memory store comes back empty: recreate the topic
        kafka_broker.create_topic(topic, 1)
        for _ in range(120):
            if await metric(metrics_port, "router_usage_buffer_records") == 0:
                break
            await asyncio.sleep(0.25)
        assert await metric(metrics_port, "router_usage_buffer_records") == 0
        for _ in range(40):  # readiness probes are cached for a second
            status, body = await readiness(router.url)
            if status == 200:
                break
            await asyncio.sleep(0.25)
        assert (status, body["components"]["kafka"]) == (200, "healthy")
        seen = await published_ids(kafka_broker.bootstrap, topic, during)
    figures.add("Kafka down under load", outage_s, unit="s")
    figures.add("answered while down", len(during))
    figures.add("lost", sum(1 for rid in during if seen[rid] == 0), bound=0)
    figures.add("duplicates", sum(seen[rid] - 1 for rid in during if seen[rid] > 1), bound=0)
    assert [rid for rid in during if seen[rid] != 1] == []


@pytest.mark.reliability("1.3", "Kafka down and the router SIGKILLed during the outage")
async def test_kafka_outage_and_sigkill_together_lose_nothing(
    kafka_broker: KafkaBroker, mock_url: str, tmp_path: Path, figures: Figures
) -> None:
    """Records buffered while Kafka is down survive a SIGKILL of the router and are
    published once Kafka and the router are both back."""
    topic = f"usage-{uuid.uuid4().hex[:8]}"
    kafka_broker.create_topic(topic, 1)
    metrics_port = free_port()
    path = config(tmp_path, mock_url, kafka_broker.bootstrap, topic, metrics_port)
    done: list[str] = []
    with router_process(["--config", str(path)], tmp_path) as router:
        kafka_broker.stop()
        outage_s = sized(2, 30)
        loader = asyncio.create_task(load(router.url, outage_s, done, workers=4))
        await asyncio.sleep(outage_s / 2)
        router.process.kill()
        await asyncio.to_thread(router.process.wait, 10)
        await loader
    assert len(done) > 10
    kafka_broker.start()  # Tansu's memory store comes back empty: recreate the topic
    kafka_broker.create_topic(topic, 1)
    with router_process(["--config", str(path)], tmp_path):
        seen = await published_ids(kafka_broker.bootstrap, topic, done)
    lost = [rid for rid in done if seen[rid] == 0]
    duplicates = sum(seen[rid] - 1 for rid in done if seen[rid] > 1)
    figures.add("Kafka down under load", outage_s, unit="s")
    figures.add("answered", len(done))
    figures.add("lost", len(lost), bound=0)
    figures.add("duplicates", duplicates, bound=500)  # at most the batch in flight at the kill
    assert lost == []
    assert duplicates <= 500
