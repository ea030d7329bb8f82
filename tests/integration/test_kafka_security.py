"""The Kafka sink over PLAINTEXT, SSL, SASL_PLAINTEXT and SASL_SSL, end to end.

Tansu 0.6 serves neither TLS nor SASL, so a front in the fixtures (tests/kafka_front.py)
terminates both and passes Kafka frames through to it; Tansu advertises the front's port.
"""

from __future__ import annotations

import asyncio
import io
import json
import ssl
import uuid
from collections.abc import Iterator

import pytest
from aiokafka import AIOKafkaConsumer
from aiokafka.structs import ConsumerRecord

from appliance.doctor import load_target, run_doctor
from appliance.settings.loader import load_text
from appliance.usage.kafka_security import KafkaSecurity
from appliance.usage.kafka_sink import KafkaSink
from appliance.usage.ports import OutboxItem, SinkError
from tests.certs import make_certs
from tests.integration.router_harness import chat, running_router
from tests.kafka_front import FrontMode, KafkaFront
from tests.log_capture import all_logs
from tests.services import EtcdTLS, KafkaBroker, free_port, tansu_binary

pytestmark = pytest.mark.services

USER = "router"
PASSWORD = "s3cret-kafka-password"
CANARY = "CANARY-kafka-password-6e1b"  # a wrong password, searched for in every output


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> EtcdTLS:
    return make_certs(tmp_path_factory.mktemp("kafka-certs"))


@pytest.fixture(scope="module")
def fronted(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[KafkaBroker, int]]:
    """A Tansu of this module's own, advertising the port its front will listen on."""
    front_port = free_port()
    broker = KafkaBroker(
        tansu_binary(), tmp_path_factory.mktemp("tansu-front"), advertised_port=front_port
    )
    try:
        broker.start()
        yield broker, front_port
    finally:
        broker.close()


def front_mode(protocol: str, mechanism: str, certs: EtcdTLS) -> FrontMode:
    tls = None
    if "SSL" in protocol:
        tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        tls.load_cert_chain(certs.cert_file, certs.key_file)
    mechanisms = (mechanism,) if protocol.startswith("SASL_") else ()
    return FrontMode(tls=tls, mechanisms=mechanisms, users={USER: PASSWORD})


def open_front(
    fronted: tuple[KafkaBroker, int], protocol: str, mechanism: str, certs: EtcdTLS
) -> KafkaFront:
    """The front on the port the module's Tansu advertises, demanding `protocol`."""
    broker, port = fronted
    return KafkaFront(port, (broker.host, broker.port), front_mode(protocol, mechanism, certs))


def usage_toml(front: KafkaFront, protocol: str, mechanism: str, certs: EtcdTLS) -> str:
    lines = [
        'sink = "kafka"',
        f'kafka_bootstrap = ["{front.bootstrap}"]',
        f'kafka_security_protocol = "{protocol}"',
    ]
    if protocol.startswith("SASL_"):
        lines += [
            f'kafka_sasl_mechanism = "{mechanism}"',
            f'kafka_username = "{USER}"',
            'kafka_password_env = "TEST_KAFKA_PASSWORD"',
        ]
    if "SSL" in protocol:
        lines.append(f'kafka_ssl_ca_file = "{certs.ca_file}"')
    return "[usage]\n" + "\n".join(lines) + "\n"


def item(seq: int, org: str) -> OutboxItem:
    payload = json.dumps({"request_id": f"r-{seq}", "org": org}).encode()
    return OutboxItem(
        seq=seq,
        topic="usage",
        key=org,
        record_id=f"r-{seq}",
        payload=payload,
        created_at=1_700_000_000.0 + seq,
    )


async def consume(
    bootstrap: str, security: KafkaSecurity, topic: str, count: int
) -> list[ConsumerRecord[bytes, bytes]]:
    """Read `count` records from the start of `topic` (bounded: 20 s)."""
    consumer = AIOKafkaConsumer(
        topic,
        bootstrap_servers=bootstrap,
        auto_offset_reset="earliest",
        enable_auto_commit=False,
        **security.client_options(),
    )
    await consumer.start()
    got: list[ConsumerRecord[bytes, bytes]] = []
    try:
        async with asyncio.timeout(20):
            while len(got) < count:
                for records in (await consumer.getmany(timeout_ms=500)).values():
                    got += records
    finally:
        await consumer.stop()
    return got


MODES = [
    ("PLAINTEXT", ""),
    ("SSL", ""),
    ("SASL_PLAINTEXT", "PLAIN"),
    ("SASL_PLAINTEXT", "SCRAM-SHA-256"),
    ("SASL_SSL", "SCRAM-SHA-512"),
    ("SASL_SSL", "PLAIN"),
]


@pytest.mark.parametrize(
    ("protocol", "mechanism"), MODES, ids=["-".join(filter(None, m)) for m in MODES]
)
async def test_usage_sink_publishes_through_each_protocol(
    fronted: tuple[KafkaBroker, int], certs: EtcdTLS, protocol: str, mechanism: str
) -> None:
    """Records from the config's security settings reach the topic, keyed by org, and each
    org's records land on one partition in order."""
    async with open_front(fronted, protocol, mechanism, certs) as front:
        await publish_and_check(front, protocol, mechanism, certs)


async def publish_and_check(
    front: KafkaFront, protocol: str, mechanism: str, certs: EtcdTLS
) -> None:
    loaded = load_text(
        usage_toml(front, protocol, mechanism, certs), "t.toml", {"TEST_KAFKA_PASSWORD": PASSWORD}
    )
    security = KafkaSecurity.from_settings(loaded.settings.usage, loaded.kafka_password)
    topic = f"sec-{uuid.uuid4().hex[:8]}"
    sink = KafkaSink([front.bootstrap], {"usage": topic}, security=security, timeout_s=10)
    sent = [item(i, ("acme", "globex", "initech")[i % 3]) for i in range(30)]
    try:
        await sink.publish(sent)
        await sink.ping()
    finally:
        await sink.close()
    got = await consume(front.bootstrap, security, topic, len(sent))
    assert sorted((r.key, r.value) for r in got) == sorted(
        (i.key.encode(), i.payload) for i in sent
    )
    for org in (b"acme", b"globex", b"initech"):
        mine = [r for r in got if r.key == org]
        assert len({r.partition for r in mine}) == 1
        assert [r.offset for r in mine] == sorted(r.offset for r in mine)
    if front.mode.mechanisms:
        assert front.stats.authenticated >= 2
        assert front.stats.refused == 0


async def test_doctor_shows_partitions_acks_and_idempotence(
    fronted: tuple[KafkaBroker, int], certs: EtcdTLS
) -> None:
    """doctor's kafka row names the protocol, acks, idempotence and the usage topic's
    partition count, over SASL_SSL."""
    topic = f"doc-{uuid.uuid4().hex[:8]}"
    fronted[0].create_topic(topic, partitions=3)
    async with open_front(fronted, "SASL_SSL", "SCRAM-SHA-256", certs) as front:
        text = usage_toml(front, "SASL_SSL", "SCRAM-SHA-256", certs) + f'kafka_topic = "{topic}"\n'
        target = load_target(text, "t.toml", {"TEST_KAFKA_PASSWORD": PASSWORD})
        rows = {(r.check, r.target): r for r in await run_doctor(target, 5.0)}
    row = rows[("kafka", front.bootstrap)]
    assert row.status == "pass", row
    assert 'SASL_SSL, SCRAM-SHA-256 as user "router"' in row.detail
    assert "acks=all" in row.detail
    assert "idempotence off (the broker refuses" in row.detail
    assert f"{topic}: 3 partitions, keyed by org" in row.detail
    assert rows[("kafka.topic", topic)].detail.startswith("3 partitions, all led")


@pytest.fixture
def log_output() -> Iterator[io.StringIO]:
    """Every log line of the test, structlog's and stdlib's (aiokafka's), at debug level."""
    with all_logs() as buffer:
        yield buffer


async def test_wrong_password_is_refused_and_records_wait(
    fronted: tuple[KafkaBroker, int], certs: EtcdTLS, log_output: io.StringIO
) -> None:
    """A wrong password: readiness and doctor say Kafka refused the credentials and records
    stay in the outbox; once the broker takes that password they all arrive. The password
    shows in no log line, readiness answer, doctor row or metric."""
    async with open_front(fronted, "SASL_SSL", "SCRAM-SHA-256", certs) as front:
        await refuse_then_accept(front, certs, log_output)


async def refuse_then_accept(front: KafkaFront, certs: EtcdTLS, log_output: io.StringIO) -> None:
    topic = f"wrong-{uuid.uuid4().hex[:8]}"
    usage = usage_toml(front, "SASL_SSL", "SCRAM-SHA-256", certs) + f'kafka_topic = "{topic}"\n'
    env = {"TEST_KAFKA_PASSWORD": CANARY}
    async with running_router(extra=usage, environ=env, metrics_listener=True) as router:
        for _ in range(5):
            async with await router.post("/v1/chat/completions", chat()) as response:
                assert response.status == 200
        async with router.session.get(f"{router.url}/v1/status/readyz") as response:
            ready = await response.text()
            assert response.status == 503
        assert 'Kafka refused the credentials (SASL SCRAM-SHA-256 as user \\"router\\")' in ready
        parts = router.state.usage
        with pytest.raises(SinkError, match="refused the credentials"):
            await parts.publisher.replay_now()
        assert (await parts.outbox.stats()).records == 5
        rows = await run_doctor(load_target(usage, "t.toml", env), 5.0)
        kafka_row = next(r for r in rows if r.check == "kafka")
        assert kafka_row.status == "fail"
        assert kafka_row.detail.startswith("Kafka refused the credentials (SASL SCRAM-SHA-256")
        assert "$TEST_KAFKA_PASSWORD" in kafka_row.fix
        async with router.session.get(router.metrics_url) as response:
            metrics = await response.text()
        front.mode.users[USER] = CANARY  # the broker now holds that password
        assert await parts.publisher.replay_now() == 5
        assert (await parts.outbox.stats()).records == 0
    security = KafkaSecurity(
        protocol="SASL_SSL",
        mechanism="SCRAM-SHA-256",
        username=USER,
        password=CANARY,
        ssl_context=client_context(certs),
    )
    got = await consume(front.bootstrap, security, topic, 5)
    assert len(got) == 5
    assert {r.key for r in got} == {b"acme"}
    assert front.stats.refused >= 3  # the sink's start, its probe and readiness
    shown = "\n".join(
        [log_output.getvalue(), ready, metrics, repr(rows), repr(router.state.config)]
    )
    assert "CANARY" not in shown


def client_context(certs: EtcdTLS) -> ssl.SSLContext:
    return ssl.create_default_context(cafile=str(certs.ca_file))
