"""Smoke tests: each real service starts, answers its client library, and survives restart."""

from __future__ import annotations

import asyncio
import uuid

import aetcd
import pytest
import redis.asyncio as aioredis
import redis.exceptions
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

from tests.services import EtcdServer, KafkaBroker, RedisServer

pytestmark = pytest.mark.services

# grpc would otherwise honour an http_proxy from the environment, even for loopback.
_GRPC_OPTIONS = {"grpc.enable_http_proxy": 0}


def _etcd_client(etcd_server: EtcdServer) -> aetcd.Client:
    return aetcd.Client(
        host=etcd_server.host, port=etcd_server.port, timeout=5, options=_GRPC_OPTIONS
    )


async def test_redis_set_get_round_trip(redis_server: RedisServer) -> None:
    """A value set through redis.asyncio comes back unchanged from the real valkey server."""
    client = aioredis.Redis.from_url(redis_server.url)
    try:
        assert await client.set("smoke:round-trip", "v1")
        assert await client.get("smoke:round-trip") == b"v1"
    finally:
        await client.aclose()


async def test_redis_stop_fails_commands_and_start_restores(redis_server: RedisServer) -> None:
    """While valkey is stopped commands raise ConnectionError; after start() on the same port
    they work again, on an empty server since valkey runs without persistence."""
    port = redis_server.port
    client = aioredis.Redis.from_url(redis_server.url, socket_connect_timeout=2, socket_timeout=2)
    try:
        await client.set("smoke:restart", "before")
        redis_server.stop()
        assert not redis_server.running
        with pytest.raises(redis.exceptions.ConnectionError):
            await client.get("smoke:restart")
        redis_server.start()
        assert redis_server.port == port
        assert await client.get("smoke:restart") is None
        await client.set("smoke:restart", "after")
        assert await client.get("smoke:restart") == b"after"
    finally:
        await client.aclose()


async def _take(consumer: AIOKafkaConsumer, count: int) -> list[bytes]:
    values: list[bytes] = []
    async for message in consumer:
        assert message.value is not None
        values.append(message.value)
        if len(values) == count:
            break
    return values


async def test_kafka_produce_and_consume(kafka_broker: KafkaBroker) -> None:
    """Three messages produced with acks=all to a created topic are consumed back, and no more."""
    topic = f"smoke-{uuid.uuid4().hex[:8]}"
    kafka_broker.create_topic(topic, partitions=1)
    sent = [f"message-{i}".encode() for i in range(3)]

    producer = AIOKafkaProducer(
        bootstrap_servers=kafka_broker.bootstrap, enable_idempotence=False, acks="all"
    )
    await producer.start()
    try:
        for value in sent:
            await asyncio.wait_for(producer.send_and_wait(topic, value), timeout=10)
    finally:
        await producer.stop()

    consumer = AIOKafkaConsumer(
        topic,
        bootstrap_servers=kafka_broker.bootstrap,
        auto_offset_reset="earliest",
        enable_auto_commit=False,
    )
    await consumer.start()
    try:
        received = await asyncio.wait_for(_take(consumer, len(sent)), timeout=15)
        extra = await consumer.getmany(timeout_ms=500)
    finally:
        await consumer.stop()

    assert received == sent
    assert not any(extra.values())


async def test_etcd_put_get_round_trip(etcd_server: EtcdServer) -> None:
    """A key put through aetcd is read back with the same value."""
    async with _etcd_client(etcd_server) as client:
        await client.put(b"/smoke/round-trip", b"v1")
        got = await client.get(b"/smoke/round-trip")
    assert got is not None
    assert got.value == b"v1"


async def test_etcd_restart_keeps_data(etcd_server: EtcdServer) -> None:
    """Requests fail while etcd is stopped, and after start() on the same ports the key is still
    there because the data dir is kept."""
    port = etcd_server.port
    async with _etcd_client(etcd_server) as client:
        await client.put(b"/smoke/restart", b"kept")
        etcd_server.stop()
        with pytest.raises((aetcd.ConnectionFailedError, aetcd.ConnectionTimeoutError)):
            await client.get(b"/smoke/restart")
    etcd_server.start()
    assert etcd_server.port == port
    # A fresh client: the old channel may sit in gRPC's reconnect backoff for a while.
    async with _etcd_client(etcd_server) as client:
        got = await client.get(b"/smoke/restart")
    assert got is not None
    assert got.value == b"kept"
