"""Kafka: the bootstrap brokers take our credentials and answer a metadata request, the
producer's settings (acks, idempotence) hold there, and the usage topics have leaders."""

from __future__ import annotations

import asyncio

from aiokafka.cluster import ClusterMetadata
from aiokafka.conn import AIOKafkaConnection
from aiokafka.errors import KafkaError, for_code
from aiokafka.protocol.metadata import MetadataRequest
from aiokafka.protocol.transaction import InitProducerIdRequest

from appliance.doctor.report import CheckResult, count, describe, failed, passed, skipped, warned
from appliance.settings import Settings, UsageSettings
from appliance.usage.kafka_security import (
    KafkaProbeError,
    KafkaSecurity,
    KafkaSecurityError,
    connect_any,
)

_FIXES = {
    "auth": "check usage.kafka_username, the password in ${env} and kafka_sasl_mechanism"
    " (the broker must hold that user for that mechanism)",
    "tls": "check usage.kafka_ssl_ca_file (the CA that signed the brokers' certificates) and"
    " kafka_security_protocol (SSL/SASL_SSL only for a TLS listener)",
    "unreachable": "start the brokers or fix usage.kafka_bootstrap (HOST:PORT, reachable from"
    " this host)",
}


async def check_kafka(settings: Settings, password: str, timeout_s: float) -> list[CheckResult]:
    """Rows kafka and one kafka.topic per topic; one skip row when the sink is not Kafka."""
    u = settings.usage
    if u.sink != "kafka":
        return [skipped("kafka", "-", f'not configured (usage.sink = "{u.sink}")')]
    target = ",".join(u.kafka_bootstrap)
    topics = [u.kafka_topic, u.kafka_audit_topic]
    not_checked = [skipped("kafka.topic", t, "not checked: Kafka did not answer") for t in topics]
    try:
        security = KafkaSecurity.from_settings(u, password)
        async with asyncio.timeout(timeout_s):
            async with connect_any(
                u.kafka_bootstrap, security, client_id="routerctl-doctor", timeout_s=timeout_s
            ) as conn:
                # All topics (null): asking for ours by name could auto-create them.
                cluster = ClusterMetadata()
                cluster.update_metadata(await conn.send(MetadataRequest(None)))
                idempotence = await _idempotence(conn, u)
    except KafkaSecurityError as exc:
        return [failed("kafka", target, str(exc), "fix the files named there"), *not_checked]
    except KafkaProbeError as exc:
        fix = _FIXES[exc.kind].replace("${env}", f"${u.kafka_password_env}")
        return [
            failed("kafka", target, f"{exc}; usage records wait in the outbox", fix),
            *not_checked,
        ]
    except (KafkaError, OSError) as exc:  # OSError includes asyncio's TimeoutError
        return [_unreachable(target, exc, timeout_s), *not_checked]
    partitions = len(cluster.partitions_for_topic(u.kafka_topic) or ())
    detail = (
        f"metadata answered by the cluster ({count(len(cluster.brokers()), 'broker')})"
        f" over {security.describe()}; producer acks={u.kafka_acks}, {idempotence};"
        f" {u.kafka_topic}: {count(partitions, 'partition')}, keyed by org"
    )
    rows = [passed("kafka", target, detail)]
    for topic in topics:
        rows.append(
            _topic(
                topic,
                cluster.partitions_for_topic(topic),
                cluster.available_partitions_for_topic(topic),
                u,
            )
        )
    return rows


async def _idempotence(conn: AIOKafkaConnection, u: UsageSettings) -> str:
    """Whether the sink's producer will be idempotent: only with acks=all, and only where the
    broker hands out a producer id (the sink asks the same way at start)."""
    if u.kafka_acks != "all":
        return "idempotence off (needs acks=all)"
    try:
        response = await conn.send(InitProducerIdRequest(None, 60_000))
    except KafkaError as exc:
        return f"idempotence off (the broker did not answer InitProducerId: {type(exc).__name__})"
    if response.error_code:
        refused = for_code(response.error_code).__name__
        return f"idempotence off (the broker refuses producer ids: {refused}; acks=all still)"
    return "idempotent"


def _unreachable(target: str, exc: BaseException, timeout_s: float) -> CheckResult:
    what = f"no answer within {timeout_s:g} s" if isinstance(exc, TimeoutError) else describe(exc)
    return failed(
        "kafka",
        target,
        f"{what}; usage records wait in the outbox meanwhile",
        _FIXES["unreachable"],
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
