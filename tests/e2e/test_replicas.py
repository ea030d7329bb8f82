"""Three `routerctl serve` replicas sharing a Redis cluster, Kafka and etcd, driven by one
client that round-robins over them: limits hold across all three, an override made through
one replica's admin API is obeyed by all three within a second, and after a drain (SIGTERM)
every answered request has exactly one usage record in Kafka."""

from __future__ import annotations

import asyncio
import itertools
import json
import time
import urllib.request
import uuid
from collections import Counter
from collections.abc import Iterator
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from appliance.auth.keyring import hash_key
from appliance.configsvc.documents import render_documents
from appliance.configsvc.etcd_client import EtcdClient
from appliance.settings.loader import parse_settings
from tests.e2e.cli import RouterProcess, mock_backend_process, router_process
from tests.e2e.test_usage_durability import published_ids
from tests.redis_topologies import Cluster, redis_cluster
from tests.services import EtcdServer, KafkaBroker

pytestmark = pytest.mark.services

REPLICAS = 3
OPERATOR = "rt-replicas-operator-token"
ORGS = {
    "rpm-org": "rpm = 10",
    "tpm-org": "tpm = 100",
    "cc-org": "max_concurrent = 2",
    "free-org": "",  # the override probe's: no limit in the way
}
SLOW = "[mock:chunks=3] [mock:chunk_delay_ms=300]"  # a stream held ~0.9 s
PINNED_TOKENS = 7  # m1's mock answers with this many completion tokens, m0's with fewer
OBEY_BOUND_S = 1.0  # DESIGN.md: an override applies on every replica within one second


def config(tmp: Path, index: int, cluster: Cluster, shared: dict[str, str]) -> Path:
    """Replica `index`'s file: its own state dir, everything else shared; the routing
    policy (backends, models, orgs, keys) is in etcd."""
    endpoints = ", ".join(f'"{e}"' for e in cluster.endpoints)
    text = f"""
[server]
graceful_shutdown_s = 3
metrics_listen = ""

[state]
dir = "{tmp / f"state-{index}"}"
redis_mode = "cluster"
redis_endpoints = [{endpoints}]
redis_failure_mode = "closed"

[limits]
redis_timeout_s = 0.5

[usage]
sink = "kafka"
kafka_bootstrap = ["{shared["bootstrap"]}"]
kafka_topic = "{shared["topic"]}"
kafka_audit_topic = "{shared["topic"]}-audit"

[config_service]
etcd_endpoints = ["{shared["etcd"]}"]
prefix = "{shared["prefix"]}"
timeout_s = 1.0

[telemetry]
access_log = false

[[admin.tokens]]
id = "oncall"
sha256 = "{hash_key(OPERATOR)}"
role = "operator"
"""
    path = tmp / f"router-{index}.toml"
    path.write_text(text)
    return path


def policy(m0_url: str, m1_url: str) -> str:
    """Backends m0 and m1 (told apart by the tokens they answer with), m1 without traffic
    until pinned; the orgs and their keys (each key is its org's name)."""
    text = f"""
[[backends]]
id = "m0"
url = "{m0_url}"

[[backends]]
id = "m1"
url = "{m1_url}"

[[models]]
name = "chat"
backends = [{{ backend = "m0" }}, {{ backend = "m1", weight = 0.0 }}]
"""
    for org, line in ORGS.items():
        text += f'\n[[orgs]]\nid = "{org}"\n{line}\n'
        text += f'\n[[keys]]\nid = "k-{org}"\norg = "{org}"\nsha256 = "{hash_key(org)}"\n'
    return text


async def push_policy(etcd: EtcdServer, prefix: str, m0_url: str, m1_url: str) -> None:
    """The policy's documents under `prefix`, as `routerctl config push` writes them."""
    documents = render_documents(prefix, parse_settings(policy(m0_url, m1_url)))
    async with EtcdClient([etcd.url], timeout_s=2.0) as client:
        await client.txn_put_delete(documents)


@pytest.fixture
def mocks(mock_url: str, tmp_path: Path) -> Iterator[tuple[str, str]]:
    """m0's mock (the module's) and m1's: a second process answering PINNED_TOKENS tokens."""
    with mock_backend_process(tmp_path) as url:
        directives = json.dumps({"directives": f"[mock:chunks={PINNED_TOKENS}]"}).encode()
        config_url = url.removesuffix("/v1") + "/_mock/config"
        request = urllib.request.Request(config_url, directives)  # noqa: S310 (our own http URL)
        with urllib.request.build_opener(urllib.request.ProxyHandler({})).open(request) as done:
            assert done.status == 200
        yield mock_url, url


def pinned(status: int, body: dict[str, Any] | None) -> bool:
    return (
        status == 200 and body is not None and body["usage"]["completion_tokens"] == PINNED_TOKENS
    )


class Client:
    """One client over every replica in turn; notes each answered request's id."""

    def __init__(self, session: aiohttp.ClientSession, routers: list[RouterProcess]) -> None:
        self.session = session
        self.routers = routers
        self._turn = itertools.cycle(range(len(routers)))
        self.answered: list[str] = []

    async def chat(
        self, org: str, content: str = "hello", index: int | None = None, **extra: object
    ) -> tuple[int, dict[str, Any] | None]:
        """One request (to the next replica, or to `index`): its status and JSON body."""
        router = self.routers[next(self._turn) if index is None else index]
        rid = f"rep-{uuid.uuid4().hex[:12]}"
        body = {"model": "chat", "messages": [{"role": "user", "content": content}], **extra}
        headers = {"Authorization": f"Bearer {org}", "x-request-id": rid}
        async with self.session.post(
            f"{router.url}/v1/chat/completions", json=body, headers=headers
        ) as response:
            await response.read()
        self.answered.append(rid)
        streamed = extra.get("stream") or response.status != 200
        return response.status, None if streamed else await response.json()

    async def burst(
        self, org: str, n: int, content: str = "hello", **extra: object
    ) -> Counter[int]:
        """`n` requests all in flight at once, round-robin over the replicas."""
        calls = [self.chat(org, content, **extra) for _ in range(n)]
        return Counter(status for status, _ in await asyncio.gather(*calls))


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    """Three valkey primaries formed into a cluster (no replicas: nothing fails over here)."""
    with redis_cluster(tmp_path_factory.mktemp("cluster"), replicated=False) as formed:
        yield formed


async def obeyed_after(client: Client, index: int, started: float) -> float:
    """Seconds from `started` until replica `index` answers from the pinned backend."""
    while time.monotonic() - started < 5 * OBEY_BOUND_S:
        if pinned(*await client.chat("free-org", index=index)):
            return time.monotonic() - started
        await asyncio.sleep(0.01)
    return float("inf")


async def pin_through(client: Client, router: RouterProcess) -> None:
    """Pin model chat to m1 through `router`'s admin API."""
    pin = {"kind": "pin", "model": "chat", "backend": "m1", "reason": "replicas test"}
    headers = {"Authorization": f"Bearer {OPERATOR}"}
    url = router.url_for("/v1/admin/overrides")
    async with client.session.post(url, json=pin, headers=headers) as response:
        assert response.status == 200, await response.text()


@dataclass(frozen=True, slots=True)
class Seen:
    rpm: Counter[int]
    tpm: Counter[int]
    concurrent: Counter[int]
    obeyed_s: list[float]  # per replica: from the pin's answer to its first pinned answer


async def exercise(client: Client) -> Seen:
    """Limits, then the override; what was seen."""
    rpm = await client.burst("rpm-org", 24, max_tokens=5)
    # ~10 prompt + 35 completion tokens each, held until the slow streams settle: 2 fit.
    tpm = await client.burst("tpm-org", 9, SLOW, stream=True, max_tokens=35)
    concurrent = await client.burst("cc-org", 9, SLOW, stream=True)
    before = [await client.chat("free-org", index=i) for i in range(REPLICAS)]
    assert [status for status, _ in before] == [200] * REPLICAS
    assert not any(pinned(*answer) for answer in before)  # m1 unused: weight 0
    started = time.monotonic()
    await pin_through(client, client.routers[0])
    took = await asyncio.gather(*(obeyed_after(client, i, started) for i in range(REPLICAS)))
    return Seen(rpm, tpm, concurrent, list(took))


async def test_three_replicas_share_limits_overrides_and_usage(
    cluster: Cluster,
    kafka_broker: KafkaBroker,
    etcd: EtcdServer,
    mocks: tuple[str, str],
    tmp_path: Path,
) -> None:
    """Limits hold across three replicas, a pin through one is obeyed by all within 1 s, and
    after a drain every answered request has exactly one usage record."""
    topic = f"usage-rep-{uuid.uuid4().hex[:8]}"
    kafka_broker.create_topic(topic, 1)
    shared = {
        "bootstrap": kafka_broker.bootstrap, "topic": topic, "etcd": etcd.url,
        "prefix": f"/replicas-{uuid.uuid4().hex[:8]}/",
    }  # fmt: skip
    await push_policy(etcd, shared["prefix"], *mocks)
    with ExitStack() as stack:
        routers = [
            stack.enter_context(
                router_process(["--config", str(config(tmp_path, i, cluster, shared))], tmp_path)
            )
            for i in range(REPLICAS)
        ]
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as session:
            client = Client(session, routers)
            seen = await exercise(client)
        codes = [await asyncio.to_thread(r.terminate) for r in routers]  # drain, then exit
    records = await published_ids(kafka_broker.bootstrap, topic, client.answered)
    missing = [rid for rid in client.answered if rid not in records]
    duplicates = {rid: n for rid, n in records.items() if n > 1}
    took = ", ".join(f"{t * 1000:.0f} ms" for t in seen.obeyed_s)
    print(
        f"\n{REPLICAS} replicas: rpm 10 -> {dict(seen.rpm)}; tpm 100 -> {dict(seen.tpm)};"
        f" max_concurrent 2 -> {dict(seen.concurrent)}; pin obeyed after {took};"
        f" answered {len(client.answered)}, records {sum(records.values())},"
        f" missing {len(missing)}, duplicates {sum(n - 1 for n in duplicates.values())}"
        f" {duplicates or ''}"
    )
    assert codes == [0] * REPLICAS
    assert seen.rpm[200] in (10, 11)  # the limit, plus at most one refill
    assert seen.rpm[200] + seen.rpm[429] == 24
    assert seen.tpm == Counter({200: 2, 429: 7})
    assert seen.concurrent == Counter({200: 2, 429: 7})
    assert max(seen.obeyed_s) <= OBEY_BOUND_S
    assert (missing, duplicates) == ([], {})
