"""Usage records through a real router: tokens, hidden usage, disconnects, lookups, bounds."""

from __future__ import annotations

import asyncio
import json
import sqlite3
import uuid
from pathlib import Path

import msgspec

from appliance.auth.keyring import hash_key
from tests.integration.router_harness import KEY, RouterUnderTest, chat, running_router
from tests.integration.test_usage_sinks import consume
from tests.services import KafkaBroker

OTHER_KEY = "rk-test-other-org"
OTHER_ORG = f"""
[[orgs]]
id = "globex"

[[keys]]
id = "k-globex"
org = "globex"
sha256 = "{hash_key(OTHER_KEY)}"
"""


async def record_of(router: RouterUnderTest, request_id: str, key: str = KEY) -> dict[str, object]:
    for _ in range(50):  # a disconnect's record is written as the request winds down
        async with router.session.get(
            f"{router.url}/v1/usage/{request_id}", headers={"Authorization": f"Bearer {key}"}
        ) as response:
            if response.status == 200:
                record: dict[str, object] = msgspec.json.decode(await response.read())
                return record
        await asyncio.sleep(0.05)
    raise AssertionError(f"no usage record for {request_id}")


async def test_json_record_has_reported_tokens_and_routing() -> None:
    """A JSON answer's record carries the backend's usage, the route taken and timings."""
    async with running_router() as router:
        response = await router.post("/v1/chat/completions", chat(max_tokens=7))
        await response.read()
        record = await record_of(router, response.headers["x-request-id"])
    assert record["schema_version"] == 1
    assert record["request_id"] == record["id"]  # the router chose the id
    assert (record["org"], record["key_id"], record["model"]) == ("acme", "k-acme", "chat")
    assert (record["backend"], record["upstream_model"], record["decision"]) == (
        "m0",
        "up-m0",
        "PRIMARY",
    )
    assert (record["prompt_tokens"], record["completion_tokens"]) == (2, 7)
    assert record["token_source"] == "reported"
    assert record["status"] == 200
    assert record["error_code"] is None
    assert record["latency_ms"] >= record["ttft_ms"] >= 0  # type: ignore[operator]


async def test_stream_record_has_tokens_from_the_hidden_usage_chunk() -> None:
    """A stream's record has the backend's token counts though the client never saw usage."""
    async with running_router() as router:
        response = await router.post("/v1/chat/completions", chat("[mock:chunks=6]", stream=True))
        body = await response.read()
        record = await record_of(router, response.headers["x-request-id"])
    assert b'"usage":{' not in body
    assert (record["completion_tokens"], record["token_source"], record["stream"]) == (
        6,
        "reported",
        True,
    )


async def test_client_own_request_id_is_kept_and_record_id_is_unique() -> None:
    """Two requests reusing one client x-request-id get two distinct record ids."""
    async with running_router() as router:
        for _ in range(2):
            await (
                await router.post("/v1/chat/completions", chat(), {"x-request-id": "dup-1"})
            ).read()
        await asyncio.sleep(0.1)
        db = Path(router.state.config.settings.state.dir) / "outbox.sqlite"
        with sqlite3.connect(db) as conn:
            ids = [
                r[0]
                for r in conn.execute("SELECT record_id FROM usage_log WHERE request_id = 'dup-1'")
            ]
    assert len(ids) == 2
    assert ids[0] != ids[1]


async def test_disconnect_mid_stream_yields_a_record() -> None:
    """A client that leaves mid-stream still produces a record of what was streamed."""
    async with running_router() as router:
        payload = chat("[mock:chunks=50] [mock:chunk_delay_ms=50]", stream=True)
        response = await router.post("/v1/chat/completions", payload, {"x-request-id": "gone-1"})
        await response.content.readuntil(b"\n\n")
        response.close()
        record = await record_of(router, "gone-1")
    assert record["client_disconnected"] is True
    assert record["token_source"] == "estimated"
    assert 1 <= record["completion_tokens"] < 50  # type: ignore[operator]


async def test_refused_requests_are_recorded_without_tokens() -> None:
    """An unknown model still gets a record, with status 404 and no tokens."""
    async with running_router() as router:
        response = await router.post("/v1/chat/completions", {**chat(), "model": "nope"})
        await response.read()
        record = await record_of(router, response.headers["x-request-id"])
    assert (record["status"], record["error_code"], record["token_source"]) == (
        404,
        "model_not_found",
        "none",
    )
    # The error body is the response's first byte (docs/usage-records.md, first_byte_at).
    assert record["first_byte_at"] is not None
    assert record["ttft_ms"] >= 0  # type: ignore[operator]


async def test_other_orgs_records_are_not_found() -> None:
    """Another org's record id answers 404 exactly like an unknown id."""
    async with running_router(extra=OTHER_ORG) as router:
        await (await router.post("/v1/chat/completions", chat(), {"x-request-id": "mine-1"})).read()
        await record_of(router, "mine-1")
        headers = {"Authorization": f"Bearer {OTHER_KEY}"}
        async with router.session.get(f"{router.url}/v1/usage/mine-1", headers=headers) as theirs:
            assert theirs.status == 404
            assert (await theirs.json())["error"]["code"] == "usage_record_not_found"
        async with router.session.get(f"{router.url}/v1/usage/never-1", headers=headers) as unknown:
            assert unknown.status == 404
            mine = (await theirs.json())["error"]["message"].replace("mine-1", "X")
            assert (await unknown.json())["error"]["message"].replace("never-1", "X") == mine


FULL = """
[usage]
sink = "kafka"
kafka_bootstrap = ["127.0.0.1:1"]
max_buffer_mb = 0.02
"""


async def test_full_buffer_rejects_new_requests_and_drops_nothing() -> None:
    """With Kafka unreachable and the buffer full, new requests get 503; nothing is dropped."""
    async with running_router(extra=FULL) as router:
        statuses = []
        for _ in range(60):
            response = await router.post("/v1/chat/completions", chat())
            await response.read()
            statuses.append(response.status)
        assert statuses[0] == 200
        assert statuses[-1] == 503
        body = await (await router.post("/v1/chat/completions", chat())).json()
        assert body["error"]["code"] == "usage_buffer_full"
        stats = await router.state.usage.outbox.stats()
        assert stats.records == statuses.count(200)


UNREACHABLE = """
[usage]
sink = "kafka"
kafka_bootstrap = ["127.0.0.1:1"]
"""


async def buffer_gauge(router: RouterUnderTest) -> float:
    async with router.session.get(router.metrics_url) as response:
        text = await response.text()
    [value] = [
        float(line.split()[-1])
        for line in text.splitlines()
        if line.startswith("router_usage_buffer_records ")
    ]
    return value


async def test_buffer_gauge_shows_the_outbox_depth_while_the_publisher_backs_off() -> None:
    """router_usage_buffer_records follows the outbox within about a second, even while the
    publisher waits out a long backoff and attempts nothing."""
    async with running_router(extra=UNREACHABLE, metrics_listener=True) as router:
        publisher = router.state.usage.publisher
        await (await router.post("/v1/chat/completions", chat())).read()  # something to publish
        for _ in range(400):  # 7 failures: the next attempt is 3.2-6.4 s away
            if publisher.state.consecutive_failures >= 7:
                break
            await asyncio.sleep(0.05)
        assert publisher.state.consecutive_failures >= 7
        for _ in range(20):
            await (await router.post("/v1/chat/completions", chat())).read()
        waiting = (await router.state.usage.outbox.stats()).records
        assert waiting >= 20
        for _ in range(50):  # 2.5 s: well before the publisher's next attempt
            if await buffer_gauge(router) == waiting:
                break
            await asyncio.sleep(0.05)
        assert await buffer_gauge(router) == waiting
        assert publisher.state.consecutive_failures >= 7


async def test_usage_and_audit_events_reach_kafka(kafka_broker: KafkaBroker) -> None:
    """With the Kafka sink, usage records and limit-denial audit events land in their topics."""
    topic = f"u-{uuid.uuid4().hex[:8]}"
    kafka_broker.create_topic(topic, 1)
    kafka_broker.create_topic(f"{topic}-audit", 1)
    extra = f"""
[usage]
sink = "kafka"
kafka_bootstrap = ["{kafka_broker.bootstrap}"]
kafka_topic = "{topic}"
kafka_audit_topic = "{topic}-audit"

[[orgs]]
id = "tight"
rpm = 1

[[keys]]
id = "k-tight"
org = "tight"
sha256 = "{hash_key(OTHER_KEY)}"
"""
    async with running_router(extra=extra) as router:
        headers = {"Authorization": f"Bearer {OTHER_KEY}"}
        statuses = []
        for _ in range(2):
            response = await router.post("/v1/chat/completions", chat(), headers)
            await response.read()
            statuses.append(response.status)
        assert statuses == [200, 429]
        usage = await consume(kafka_broker.bootstrap, topic, 2)
        audit = await consume(kafka_broker.bootstrap, f"{topic}-audit", 1)
    assert sorted(json.loads(r.value)["status"] for r in usage) == [200, 429]
    assert {r.key for r in usage} == {b"tight"}
    [event] = [json.loads(r.value) for r in audit]
    assert (event["kind"], event["org"], event["subject"]) == (
        "limit.deny",
        "tight",
        "org:tight:rpm",
    )
