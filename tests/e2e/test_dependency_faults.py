"""Row 3 of the reliability matrix: Redis, Kafka and etcd each killed and restarted, or made
slow by a proxy that delays every chunk, under load through a real router process.

Each case: readiness 200; the fault; chat requests (every other one streamed) while readiness
is polled until it names the component; the dependency back; readiness polled until 200 again,
with the same router process. None of the three is on a request's critical path beyond a bound
(Redis: `limits.redis_timeout_s`, then the failure mode; Kafka: the outbox; etcd: the live
config in memory), so no request may take as long as the proxy's delay, and none may fail.
"""

from __future__ import annotations

import asyncio
import json
import re
import time
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from appliance.auth.keyring import hash_key
from appliance.configsvc.etcd_client import EtcdClient
from tests.e2e.cli import RouterProcess, router_process
from tests.e2e.traffic import Tally, chat, drive, write_config
from tests.integration.kafka_cut import ProxiedBroker
from tests.integration.tcp_proxy import TcpProxy, tcp_proxy
from tests.reliability import Figures, sized
from tests.services import EtcdServer, KafkaBroker, RedisServer, free_port, tansu_binary

KEY = "rk-e2e-dependency-faults"
OPERATOR = "at-e2e-dependency-faults-operator"
DELAY_S = 2.0  # the slow proxy's delay per chunk, each way
SLOWEST_S = 1.5  # no request may come near DELAY_S: none waited on the dependency
READYZ_S = 1.5  # readiness_timeout_s 0.5 per probe, plus a loaded machine's slack
LOAD = sized(240, 2400)
CONFIG = """
[health]
cache_s = 0.05
readiness_timeout_s = 0.5

[limits]
redis_timeout_s = 0.1

[[admin.tokens]]
id = "oncall"
sha256 = "{operator}"
role = "operator"
"""

# Limits far above the load, so that every request is admitted through Redis when it is set.
LIMITS = "rpm = 1000000\ntpm = 1000000000"
Body = dict[str, Any]
Starter = Callable[..., AbstractAsyncContextManager[RouterProcess]]


def mixed(n: int) -> dict[str, object]:
    return chat("[mock:chunks=3] hello", stream=n % 2 == 1)


@dataclass(frozen=True)
class Fault:
    component: str  # as readiness names it
    begin: Callable[[], Awaitable[None]]
    end: Callable[[], Awaitable[None]]
    deadline: str  # what bounds a request during the fault, for the figure's name


@dataclass
class Readiness:
    """`/v1/status/readyz` as a load balancer polls it."""

    url: str
    session: aiohttp.ClientSession
    slowest_s: float = 0.0

    async def poll(self) -> tuple[int, Body]:
        started = time.monotonic()
        async with self.session.get(f"{self.url}/v1/status/readyz") as response:
            body: Body = await response.json()
        self.slowest_s = max(self.slowest_s, time.monotonic() - started)
        return response.status, body

    async def until(self, wanted: Callable[[int, Body], bool], limit_s: float = 15) -> Body:
        """Poll until `wanted` holds (within `limit_s`); the answer that held."""
        deadline = time.monotonic() + limit_s
        while True:
            status, body = await self.poll()
            if wanted(status, body):
                return body
            if time.monotonic() > deadline:
                raise AssertionError(f"readiness stuck at {status} {body}")
            await asyncio.sleep(0.05)


def redacted(text: str) -> str:
    """A readiness detail without the run's ports, so the matrix reads the same every run."""
    return re.sub(r"127\.0\.0\.1:\d+", "127.0.0.1:PORT", text)


def by_status(tally: Tally) -> str:
    counts = Counter(str(o.status or o.kind) for o in tally.errors)
    return ", ".join(f"{status}: {n}" for status, n in sorted(counts.items())) or "none"


async def exercise(
    router: RouterProcess,
    fault: Fault,
    figures: Figures,
    during: Callable[[Figures], Awaitable[None]] | None = None,
) -> None:
    """One case: load through the fault, readiness naming it, recovery; the row's figures,
    then those of `during` (run while readiness names the fault)."""
    later = Figures()
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as session:
        readiness = Readiness(router.url, session)
        await readiness.until(lambda status, _: status == 200)
        await fault.begin()
        began = time.monotonic()
        load = asyncio.create_task(drive(router.url, KEY, mixed, LOAD, workers=4))
        named = await readiness.until(
            lambda status, body: status == 503 and fault.component in body.get("details", {})
        )
        noticed_s = time.monotonic() - began
        if during is not None:
            await during(later)
        tally = await load
        await fault.end()
        back = time.monotonic()
        await readiness.until(lambda status, _: status == 200)
        recovered_s = time.monotonic() - back
        after = await drive(router.url, KEY, mixed, 20, workers=2)
    slowest = max(o.seconds for o in tally.outcomes)
    figures.add("requests during the fault", len(tally.outcomes))
    figures.add(
        f"slowest request ({fault.deadline})", round(slowest * 1000), "ms", SLOWEST_S * 1000
    )
    figures.add("errors by status", by_status(tally))
    figures.add(
        "readiness named", redacted(f"{fault.component}: {named['details'][fault.component]}")
    )
    figures.add("fault to readiness 503", round(noticed_s, 2), "s")
    figures.add("dependency back to readiness 200", round(recovered_s, 2), "s")
    figures.add(
        "slowest readiness answer", round(readiness.slowest_s * 1000), "ms", READYZ_S * 1000
    )
    figures.items += later.items
    assert router.process.poll() is None  # recovered without a restart
    assert tally.errors == [], by_status(tally)
    assert after.errors == [], by_status(after)
    assert slowest < SLOWEST_S
    assert readiness.slowest_s < READYZ_S


def start_again(service: RedisServer | KafkaBroker | EtcdServer) -> Callable[[], Awaitable[None]]:
    """The service started on its ports again (in a thread: the test's loop keeps relaying)."""
    return lambda: asyncio.to_thread(service.start)


def killing(service: RedisServer | KafkaBroker | EtcdServer) -> Callable[[], Awaitable[None]]:
    async def kill() -> None:
        service.kill()

    return kill


def slowing(proxy: TcpProxy, delay_s: float) -> Callable[[], Awaitable[None]]:
    async def slow() -> None:
        proxy.delay_s = delay_s

    return slow


@pytest.fixture
def run_router(mock_url: str, tmp_path: Path) -> Starter:
    """Starts a router over the module's mock backend with `state` and `extra` config; in a
    thread, so that a proxy in the test's loop relays while the router connects."""

    @asynccontextmanager
    async def start(*, state: str = "", extra: str = "") -> AsyncIterator[RouterProcess]:
        admin = CONFIG.format(operator=hash_key(OPERATOR))
        path = write_config(
            tmp_path, [mock_url], KEY, state=state, org=LIMITS, extra=admin + extra,
            backend="ttfb_timeout_s = 5",
        )  # fmt: skip
        running = router_process(["--config", str(path)], tmp_path)
        router = await asyncio.to_thread(running.__enter__)
        try:
            yield router
        finally:
            await asyncio.to_thread(running.__exit__, None, None, None)

    return start


@pytest.mark.reliability("3.1", "Redis killed under load, then restarted")
async def test_redis_killed_and_restarted(
    redis_server: RedisServer, run_router: Starter, figures: Figures
) -> None:
    """Redis SIGKILLed: requests are admitted in the failure mode (open) within
    redis_timeout_s, readiness names redis; Redis back: readiness 200, same router."""
    async with run_router(state=f'redis_url = "{redis_server.url}"') as router:
        fault = Fault(
            "redis", killing(redis_server), start_again(redis_server), "redis_timeout_s 0.1 s"
        )
        await exercise(router, fault, figures)


@pytest.mark.reliability("3.2", "Redis slow: 2 s a chunk (redis_timeout_s 0.1 s)")
async def test_redis_slow(redis_server: RedisServer, run_router: Starter, figures: Figures) -> None:
    """Redis answering 2 s late, past redis_timeout_s: requests are admitted in the failure
    mode without waiting for it, readiness names redis; Redis fast again: readiness 200."""
    redis = 'redis_url = "redis://127.0.0.1:{}/0"'
    async with (
        tcp_proxy(redis_server.host, redis_server.port) as proxy,
        run_router(state=redis.format(proxy.port)) as router,
    ):
        fault = Fault("redis", slowing(proxy, DELAY_S), slowing(proxy, 0), "redis_timeout_s 0.1 s")
        await exercise(router, fault, figures)


def kafka_usage(bootstrap: str) -> str:
    return f'\n[usage]\nsink = "kafka"\nkafka_bootstrap = ["{bootstrap}"]\n'


@pytest.mark.reliability("3.3", "Kafka killed under load, then restarted")
async def test_kafka_killed_and_restarted(
    kafka_broker: KafkaBroker, run_router: Starter, figures: Figures
) -> None:
    """Kafka SIGKILLed: requests are served from the outbox without waiting for it, readiness
    names kafka; Kafka back: readiness 200, same router."""
    async with run_router(extra=kafka_usage(kafka_broker.bootstrap)) as router:
        fault = Fault(
            "kafka",
            killing(kafka_broker),
            start_again(kafka_broker),
            "Kafka is off the request path",
        )
        await exercise(router, fault, figures)


@asynccontextmanager
async def slow_kafka(tmp: Path) -> AsyncIterator[TcpProxy]:
    """A Tansu of its own that advertises a proxy in front of it, so that every connection of
    the router (metadata and produce) goes through the proxy."""
    proxy = TcpProxy("127.0.0.1", 0, port=free_port())
    await proxy.start()
    broker = ProxiedBroker(tansu_binary(), tmp / "tansu", proxy.port)
    try:
        await asyncio.to_thread(broker.start)
        proxy.target = ("127.0.0.1", broker.port)
        yield proxy
    finally:
        await proxy.stop()
        await asyncio.to_thread(broker.close)


@pytest.mark.reliability("3.4", "Kafka slow: 2 s a chunk")
async def test_kafka_slow(run_router: Starter, tmp_path: Path, figures: Figures) -> None:
    """Kafka answering 2 s late: requests do not wait for it, readiness names kafka; Kafka
    fast again: readiness 200."""
    async with (
        slow_kafka(tmp_path) as proxy,
        run_router(extra=kafka_usage(f"127.0.0.1:{proxy.port}")) as router,
    ):
        fault = Fault(
            "kafka", slowing(proxy, DELAY_S), slowing(proxy, 0), "Kafka is off the request path"
        )
        await exercise(router, fault, figures)


async def config_service(etcd: EtcdServer, url: str, mock_url: str) -> str:
    """[config_service] at `url` (etcd, or a proxy to it) under a fresh prefix, which holds
    the router's policy (backend b0, model m, org acme and its key) before the router starts."""
    prefix = f"/faults-{uuid.uuid4().hex[:8]}/"
    policy = {
        "backends/b0": {"url": mock_url, "ttfb_timeout_s": 5},
        "models/m": {"backends": [{"backend": "b0"}]},
        "orgs/acme": {},
        "keys/k": {"org": "acme", "sha256": hash_key(KEY)},
    }
    async with EtcdClient([etcd.url], timeout_s=5) as client:
        await client.txn_put_delete({prefix + k: json.dumps(v).encode() for k, v in policy.items()})
    return f'\n[config_service]\netcd_endpoints = ["{url}"]\nprefix = "{prefix}"\ntimeout_s = 0.5\n'


def admin_write(router: RouterProcess) -> Callable[[Figures], Awaitable[None]]:
    """An operator's degrade during the fault: overrides live in etcd, so it is refused,
    within config_service.timeout_s."""

    async def degrade(figures: Figures) -> None:
        headers = {"Authorization": f"Bearer {OPERATOR}"}
        started = time.monotonic()
        async with (
            aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as session,
            session.post(
                router.url_for("/v1/admin/backends/b0/degrade"),
                json={"weight": 0.5, "reason": "drill"},
                headers=headers,
            ) as response,
        ):
            body = await response.json()
        took = time.monotonic() - started
        figures.add("operator's degrade answered", f"{response.status} {body['error']['code']}")
        figures.add(
            "in (config_service timeout_s 0.5 s)", round(took * 1000), "ms", SLOWEST_S * 1000
        )
        assert response.status == 503
        assert took < SLOWEST_S

    return degrade


@pytest.mark.reliability("3.5", "etcd (the config service) killed, then restarted")
async def test_etcd_killed_and_restarted(
    etcd: EtcdServer, mock_url: str, run_router: Starter, figures: Figures
) -> None:
    """etcd SIGKILLed: requests are served from the live config, an operator's write is
    refused in time, readiness names config_service; etcd back: readiness 200, same router."""
    async with run_router(extra=await config_service(etcd, etcd.url, mock_url)) as router:
        fault = Fault(
            "config_service", killing(etcd), start_again(etcd), "etcd is off the request path"
        )
        await exercise(router, fault, figures, admin_write(router))


@pytest.mark.reliability("3.6", "etcd slow: 2 s a chunk")
async def test_etcd_slow(
    etcd: EtcdServer, mock_url: str, run_router: Starter, figures: Figures
) -> None:
    """etcd answering 2 s late: requests do not wait for it, an operator's write is refused in
    time, readiness names config_service; etcd fast again: readiness 200."""
    async with (
        tcp_proxy(etcd.host, etcd.port) as proxy,
        run_router(extra=await config_service(etcd, proxy.url, mock_url)) as router,
    ):
        fault = Fault(
            "config_service",
            slowing(proxy, DELAY_S),
            slowing(proxy, 0),
            "etcd is off the request path",
        )
        await exercise(router, fault, figures, admin_write(router))
