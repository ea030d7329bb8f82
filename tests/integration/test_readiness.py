"""`/v1/status/readyz` against real Redis and Kafka: each component down in turn, then back."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from appliance import BUILD
from tests.integration.router_harness import RouterUnderTest, chat, running_router
from tests.services import KafkaBroker, RedisServer

# The harness config has a model ("nowhere") served only by a dead backend; probes are slow
# enough by default that it stays "unknown" (routable) during these short tests.
FAST_CACHE = """
[health]
cache_s = 0.05
readiness_timeout_s = 0.5
"""


def shared(redis: RedisServer, kafka: KafkaBroker, extra: str = FAST_CACHE) -> dict[str, str]:
    return {
        "state_extra": f'redis_url = "{redis.url}"',
        "extra": f"""{extra}
[usage]
sink = "kafka"
kafka_bootstrap = ["{kafka.bootstrap}"]
""",
    }


async def readyz(router: RouterUnderTest) -> tuple[int, dict[str, object]]:
    async with router.session.get(f"{router.url}/v1/status/readyz") as response:
        body: dict[str, object] = await response.json()
        assert response.headers["cache-control"] == "no-store"
        return response.status, body


async def until(
    router: RouterUnderTest, wanted: Callable[[int, dict[str, object]], bool]
) -> tuple[int, dict[str, object]]:
    """Poll readiness (bounded) until `wanted` holds; the last answer either way."""
    status, body = await readyz(router)
    for _ in range(200):
        if wanted(status, body):
            break
        await asyncio.sleep(0.05)
        status, body = await readyz(router)
    return status, body


def component(name: str, value: str) -> Callable[[int, dict[str, object]], bool]:
    return lambda _status, body: body["components"][name] == value  # type: ignore[index]


async def test_all_configured_components_healthy(
    redis_server: RedisServer, kafka_broker: KafkaBroker
) -> None:
    """Redis, Kafka, the registry and the buffer healthy: 200 `ready`, build metadata, no etcd."""
    async with running_router(**shared(redis_server, kafka_broker)) as router:
        status, body = await readyz(router)
    assert status == 200
    assert body["status"] == "ready"
    assert body["components"] == {
        "redis": "healthy",
        "kafka": "healthy",
        "config_service": "disabled",
        "backend_registry": "healthy",
        "usage_buffer": "healthy",
    }
    assert body["build"] == {
        "version": BUILD.version,
        "commit": BUILD.commit,
        "build_time": BUILD.build_time,
    }
    assert str(body["timestamp"]).endswith("Z")
    # Only Redis adds a note when healthy: its mode and each node's state.
    assert body["details"] == {"redis": f"standalone: primary 127.0.0.1:{redis_server.port} ok"}


async def test_embedded_router_reports_unconfigured_components_disabled() -> None:
    """Without Redis and Kafka, those are `disabled` and readiness is still 200."""
    async with running_router() as router:
        status, body = await readyz(router)
    assert status == 200
    components = body["components"]
    assert isinstance(components, dict)
    assert components["redis"] == components["kafka"] == "disabled"
    assert components["backend_registry"] == "healthy"


async def test_redis_down_degrades_and_recovery_restores(
    redis_server: RedisServer, kafka_broker: KafkaBroker
) -> None:
    """Redis stopped: 503 with redis unhealthy and the others healthy; restarted: 200."""
    async with running_router(**shared(redis_server, kafka_broker)) as router:
        assert (await readyz(router))[0] == 200
        redis_server.stop()
        status, body = await until(router, component("redis", "unhealthy"))
        assert status == 503
        assert body["status"] == "degraded"
        assert body["components"]["kafka"] == "healthy"  # type: ignore[index]
        assert "redis" in body["details"]  # type: ignore[operator]
        redis_server.start()
        status, body = await until(router, lambda s, _b: s == 200)
    assert body["components"]["redis"] == "healthy"  # type: ignore[index]


async def test_kafka_down_degrades_and_recovery_restores(
    redis_server: RedisServer, kafka_broker: KafkaBroker
) -> None:
    """Kafka stopped: 503 with kafka unhealthy while requests still succeed; back: 200."""
    async with running_router(**shared(redis_server, kafka_broker)) as router:
        kafka_broker.stop()
        status, body = await until(router, component("kafka", "unhealthy"))
        assert status == 503
        assert body["components"]["redis"] == "healthy"  # type: ignore[index]
        response = await router.post("/v1/chat/completions", chat())
        await response.read()
        assert response.status == 200  # the outbox keeps serving through the outage
        kafka_broker.start()
        status, body = await until(router, lambda s, _b: s == 200)
    assert body["components"]["kafka"] == "healthy"  # type: ignore[index]


async def test_required_components_decide_readiness(
    redis_server: RedisServer, kafka_broker: KafkaBroker
) -> None:
    """`health.required` without kafka: Kafka down shows unhealthy but readiness stays 200."""
    policy = '[health]\ncache_s = 0.05\nrequired = ["redis", "backend_registry"]\n'
    async with running_router(**shared(redis_server, kafka_broker, policy)) as router:
        kafka_broker.stop()
        status, body = await until(router, component("kafka", "unhealthy"))
        kafka_broker.start()
    assert status == 200
    assert body["status"] == "ready"


async def test_backend_registry_follows_health_and_drains() -> None:
    """A model whose only backend fails its probes, or is drained, makes readiness 503."""
    probes = """
[routing]
health_interval_s = 0.1
health_timeout_s = 0.2
unhealthy_threshold = 1
healthy_threshold = 1

[health]
cache_s = 0.05
"""
    async with running_router(extra=probes) as router:
        status, body = await until(router, component("backend_registry", "unhealthy"))
        assert status == 503
        assert "nowhere" in body["details"]["backend_registry"]  # type: ignore[index]
        assert "chat" not in body["details"]["backend_registry"]  # type: ignore[index]

    policy = '[health]\ncache_s = 0.05\nrequired = ["backend_registry"]\n'
    async with running_router(extra=policy) as router:
        assert (await readyz(router))[0] == 200
        await router.state.control.drain("m0", "test", "tester", None)
        await router.state.control.drain("dead", "test", "tester", None)
        status, body = await until(router, component("backend_registry", "unhealthy"))
        assert status == 503
        await router.state.control.restore("m0", "test", "tester")
        await router.state.control.restore("dead", "test", "tester")
        status, _ = await until(router, lambda s, _b: s == 200)
    assert status == 200


FULL_REJECT = """
[health]
cache_s = 0.05
required = ["usage_buffer"]

[usage]
sink = "kafka"
kafka_bootstrap = ["127.0.0.1:1"]
max_buffer_mb = 0.02
on_full = "{on_full}"
"""


async def fill(router: RouterUnderTest) -> list[int]:
    statuses = []
    for _ in range(60):
        response = await router.post("/v1/chat/completions", chat())
        await response.read()
        statuses.append(response.status)
    return statuses


async def test_full_buffer_in_reject_mode_degrades_readiness() -> None:
    """on_full = reject: once new requests are refused, usage_buffer is unhealthy (503)."""
    async with running_router(extra=FULL_REJECT.format(on_full="reject")) as router:
        assert (await readyz(router))[0] == 200
        statuses = await fill(router)
        assert statuses[-1] == 503
        status, body = await readyz(router)
    assert status == 503
    assert body["components"]["usage_buffer"] == "unhealthy"  # type: ignore[index]
    assert "full" in body["details"]["usage_buffer"]  # type: ignore[index]


async def test_full_buffer_in_drop_oldest_mode_stays_ready() -> None:
    """on_full = drop_oldest keeps serving (dropping, counted), so readiness stays 200."""
    async with running_router(extra=FULL_REJECT.format(on_full="drop_oldest")) as router:
        statuses = await fill(router)
        assert set(statuses) == {200}
        status, body = await readyz(router)
    assert status == 200
    assert body["components"]["usage_buffer"] == "healthy"  # type: ignore[index]
