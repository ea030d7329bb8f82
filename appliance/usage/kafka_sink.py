"""Publish outbox items to Kafka with aiokafka: acks=all, keyed by org, one future per record.

A publish that fails part-way names the records the broker did acknowledge (their futures
resolved), so the publisher sends only the others again: a broken link duplicates at most
the records that were in flight, never the whole batch.

The producer is idempotent where the broker allows it. Some brokers refuse to hand out a
producer id (Tansu's memory store does): the sink logs that once and goes on with a plain
producer, still with acks=all; the outbox and the stable record ids make delivery
at-least-once either way.

Every wait is bounded by `timeout_s`, so a dead or frozen broker turns into a SinkError
the publisher retries, never into a hang. After any failure the producer is dropped and a
fresh one is made for the next batch: nothing half-sent lingers in aiokafka's buffers.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping, Sequence
from typing import Any, Literal

from aiokafka import AIOKafkaProducer
from aiokafka.errors import KafkaConnectionError, KafkaError
from aiokafka.protocol.metadata import MetadataRequest

from appliance.telemetry.logging import get_logger
from appliance.usage.kafka_security import KafkaProbeError, KafkaSecurity, connect_any
from appliance.usage.ports import OutboxItem, SinkError, Topic

_log = get_logger("routerctl.usage")


class KafkaSink:
    name = "kafka"

    def __init__(
        self,
        bootstrap: Sequence[str],
        topics: Mapping[Topic, str],
        *,
        acks: Literal["all", "1"] = "all",
        compression: Literal["gzip"] | None = "gzip",
        timeout_s: float = 10.0,
        client_id: str = "routerctl",
        security: KafkaSecurity | None = None,
    ) -> None:
        if not bootstrap:
            raise ValueError("KafkaSink needs at least one bootstrap server")
        self._bootstrap = list(bootstrap)
        self._topics = dict(topics)
        self._acks: int | str = "all" if acks == "all" else 1
        self._compression = compression
        self._timeout_s = timeout_s
        self._client_id = client_id
        self._security = security or KafkaSecurity()
        # aiokafka allows idempotence with acks=all only; on until a broker refuses it.
        self._idempotent = acks == "all"
        self._producer: AIOKafkaProducer | None = None

    @property
    def idempotent(self) -> bool:
        """Whether the producer is idempotent (False after a broker refused it)."""
        return self._idempotent

    async def open(self) -> None:
        """Connect, within timeout_s; SinkError when Kafka cannot be reached (retry later)."""
        if self._producer is not None:
            return
        try:
            self._producer = await self._start(idempotent=self._idempotent)
        except (KafkaConnectionError, TimeoutError) as exc:
            if self._security.protocol != "PLAINTEXT" and not isinstance(exc, TimeoutError):
                await self.ping()  # a SinkError that names an authentication or TLS failure
            raise SinkError(f"kafka unreachable at {self._servers()}") from None
        except KafkaError as exc:
            if not self._idempotent or exc.retriable:
                raise SinkError(f"kafka producer start failed: {_kind(exc)}") from None
            # The broker answered but refused a producer id: it does not do idempotence.
            _log.warning(
                "kafka_idempotence_unsupported",
                error=_kind(exc),
                fallback="enable_idempotence=False, acks=all",
            )
            self._idempotent = False
            await self.open()

    async def publish(self, items: Sequence[OutboxItem]) -> None:
        """Send every item and wait for each acknowledgement, within timeout_s."""
        if not items:
            return
        missing = {item.topic for item in items} - self._topics.keys()
        if missing:
            raise SinkError(f"no kafka topic configured for {sorted(missing)} records")
        await self.open()
        producer = self._producer
        assert producer is not None
        futures: list[asyncio.Future[Any]] = []
        try:
            async with asyncio.timeout(self._timeout_s):
                for item in items:
                    futures.append(await self._send(producer, item))
                await asyncio.gather(*futures)
        except (KafkaError, TimeoutError) as exc:
            # Dropping the producer settles every future it can (delivered, or failed); each
            # record's own outcome says what the broker acknowledged before the failure.
            await self._discard_producer()
            sent = zip(items, futures, strict=False)  # futures stop where a send failed
            delivered = [item.seq for item, f in sent if _delivered(f)]
            what = "timed out" if isinstance(exc, TimeoutError) else f"failed: {_kind(exc)}"
            raise SinkError(
                f"kafka publish of {len(items)} records to {self._servers()} {what}"
                f" ({len(delivered)} acknowledged before the failure)",
                acknowledged=delivered,
            ) from None

    async def ping(self) -> None:
        """Fetch cluster metadata on a fresh connection; raises SinkError when unreachable,
        saying so when Kafka refused the credentials or the TLS handshake failed.

        A fresh connection: the producer may be gone (dropped after a failure) or idle, and
        its cached metadata says nothing about whether the broker answers now.
        """
        client_id = f"{self._client_id}-probe"
        try:
            async with asyncio.timeout(self._timeout_s):
                async with connect_any(
                    self._bootstrap, self._security, client_id=client_id, timeout_s=self._timeout_s
                ) as conn:
                    await conn.send(MetadataRequest(None))
        except KafkaProbeError as exc:
            if exc.kind == "unreachable":
                raise SinkError(f"kafka unreachable at {self._servers()}: {exc}") from None
            raise SinkError(f"{exc} at {self._servers()}") from None
        except (KafkaError, TimeoutError) as exc:
            raise SinkError(f"kafka unreachable at {self._servers()}: {_kind(exc)}") from None

    async def close(self) -> None:
        """Deliver what is still buffered (within timeout_s), then close the connections."""
        await self._discard_producer()

    async def _send(self, producer: AIOKafkaProducer, item: OutboxItem) -> asyncio.Future[Any]:
        future: asyncio.Future[Any] = await producer.send(
            self._topics[item.topic],
            value=item.payload,
            key=item.key.encode(),
            headers=[("record_id", item.record_id.encode())],
        )
        # Read the outcome even when nobody awaits it any more (after a timeout), so asyncio
        # never reports "exception was never retrieved".
        future.add_done_callback(_consume)
        return future

    async def _start(self, *, idempotent: bool) -> AIOKafkaProducer:
        producer = AIOKafkaProducer(
            bootstrap_servers=self._bootstrap,
            client_id=self._client_id,
            acks=self._acks,
            enable_idempotence=idempotent,
            compression_type=self._compression,
            request_timeout_ms=int(self._timeout_s * 1000),
            linger_ms=5,
            **self._security.client_options(),
        )
        try:
            async with asyncio.timeout(self._timeout_s):
                await producer.start()
                # Track every topic from the start: aiokafka otherwise asks for a topic it has
                # not seen on its own, forgets the others' leaders, and their batches wait
                # until the publish times out.
                await producer.client.set_topics(sorted(set(self._topics.values())))
        except BaseException:
            await _stop(producer, self._timeout_s)
            raise
        return producer

    async def _discard_producer(self) -> None:
        producer, self._producer = self._producer, None
        if producer is not None:
            await _stop(producer, self._timeout_s)

    def _servers(self) -> str:
        return ",".join(self._bootstrap)


async def _stop(producer: AIOKafkaProducer, timeout_s: float) -> None:
    """Stop a producer, giving buffered records timeout_s to be delivered.

    An idempotent producer never expires its batches, and stop() waits for all of them: with
    the broker down it would wait forever. aiokafka has no public way to abandon them, so
    they are failed through the accumulator; their records are still in the outbox.
    """
    try:
        async with asyncio.timeout(timeout_s):
            await producer.flush()
    except (KafkaError, TimeoutError):
        accumulator = getattr(producer, "_message_accumulator", None)
        if accumulator is not None:
            accumulator.fail_all(KafkaConnectionError("producer closed by routerctl"))
    try:
        await producer.stop()
    except KafkaError as exc:
        _log.warning("kafka_producer_stop_failed", error=_kind(exc))


def _delivered(future: asyncio.Future[Any]) -> bool:
    return future.done() and not future.cancelled() and future.exception() is None


def _consume(future: asyncio.Future[Any]) -> None:
    if not future.cancelled():
        future.exception()


def _kind(exc: BaseException) -> str:
    """The error's class name only: messages can carry addresses or SASL details."""
    return type(exc).__name__
