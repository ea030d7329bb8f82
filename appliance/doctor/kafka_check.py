"""Kafka: the bootstrap brokers answer a metadata request, and the usage topics have leaders."""

from __future__ import annotations

import asyncio

from aiokafka.client import AIOKafkaClient
from aiokafka.errors import KafkaError

from appliance.doctor.report import CheckResult, count, describe, failed, passed, skipped, warned
from appliance.settings import Settings, UsageSettings


async def check_kafka(settings: Settings, timeout_s: float) -> list[CheckResult]:
    """Rows kafka and one kafka.topic per topic; one skip row when the sink is not Kafka."""
    u = settings.usage
    if u.sink != "kafka":
        return [skipped("kafka", "-", f'not configured (usage.sink = "{u.sink}")')]
    target = ",".join(u.kafka_bootstrap)
    topics = [u.kafka_topic, u.kafka_audit_topic]
    client = AIOKafkaClient(
        bootstrap_servers=list(u.kafka_bootstrap),
        client_id="routerctl-doctor",
        request_timeout_ms=max(1, int(timeout_s * 1000)),
    )
    try:
        async with asyncio.timeout(timeout_s):
            await client.bootstrap()
            # All topics (a null list): asking for ours by name could auto-create them.
            cluster = await client.fetch_all_metadata()
    except (KafkaError, OSError) as exc:  # OSError includes asyncio's TimeoutError
        return [
            _unreachable(target, exc, timeout_s),
            *(skipped("kafka.topic", t, "not checked: Kafka did not answer") for t in topics),
        ]
    finally:
        await client.close()
    brokers = len(cluster.brokers())
    rows = [
        passed("kafka", target, f"metadata answered by the cluster ({count(brokers, 'broker')})")
    ]
    for topic in topics:
        partitions = cluster.partitions_for_topic(topic)
        led = cluster.available_partitions_for_topic(topic)
        rows.append(_topic(topic, partitions, led, u))
    return rows


def _unreachable(target: str, exc: BaseException, timeout_s: float) -> CheckResult:
    what = f"no answer within {timeout_s:g} s" if isinstance(exc, TimeoutError) else describe(exc)
    return failed(
        "kafka",
        target,
        f"{what}; usage records wait in the outbox meanwhile",
        "start the brokers or fix usage.kafka_bootstrap (HOST:PORT, reachable from this host)",
    )


def _topic(
    topic: str, partitions: set[int] | None, led: set[int] | None, u: UsageSettings
) -> CheckResult:
    role = "usage records" if topic == u.kafka_topic else "audit events"
    if not partitions:
        return warned(
            "kafka.topic",
            topic,
            f"does not exist ({role}); it appears on first publish only if the broker"
            " auto-creates topics",
            f"create it: kafka-topics.sh --create --topic {topic} (or grant Describe on it)",
        )
    leaderless = len(partitions) - len(led or ())
    if leaderless:
        return failed(
            "kafka.topic",
            topic,
            f"{leaderless} of {len(partitions)} partitions have no leader ({role} to them wait)",
            "bring back the brokers that led them (kafka-topics.sh --describe --topic ...)",
        )
    return passed("kafka.topic", topic, f"{count(len(partitions), 'partition')}, all led ({role})")
