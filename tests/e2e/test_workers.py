"""`[server] workers = 2`: two processes on one port share limits, records, overrides, metrics."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import subprocess
import uuid
from collections import Counter
from pathlib import Path

import aiohttp
import pytest

from appliance.auth.keyring import hash_key
from tests.e2e.cli import RouterProcess, router_process, routerctl_command
from tests.e2e.test_usage_durability import metric, published_ids
from tests.services import KafkaBroker, RedisServer, free_port

KEY = "rk-e2e-workers"
ADMIN = "adm-e2e-workers"
RPM = 40
pytestmark = pytest.mark.services


def config(tmp: Path, mock_url: str, metrics_port: int, extra: str = "") -> Path:
    path = tmp / "router.toml"
    path.write_text(
        f"""
[server]
workers = 2
metrics_listen = "127.0.0.1:{metrics_port}"
graceful_shutdown_s = 2

[state]
dir = "{tmp / "state"}"
{extra}

[telemetry]
log_format = "json"

[admin]
tokens = [{{ id = "op", role = "operator", sha256 = "{hash_key(ADMIN)}" }}]

[[backends]]
id = "mock"
url = "{mock_url}"

[[models]]
name = "m"
backends = [{{ backend = "mock" }}]

[[keys]]
id = "k"
org = "acme"
sha256 = "{hash_key(KEY)}"
"""
    )
    return path


async def chat(url: str, n: int, concurrency: int = 8) -> list[tuple[int, str]]:
    """`n` chat requests, each on a new connection (so both workers take some): (status, id)."""
    sem = asyncio.Semaphore(concurrency)
    connector = aiohttp.TCPConnector(force_close=True)
    async with aiohttp.ClientSession(connector=connector) as session:

        async def one() -> tuple[int, str]:
            rid = uuid.uuid4().hex
            body = {"model": "m", "messages": [{"role": "user", "content": "hi"}]}
            headers = {"Authorization": f"Bearer {KEY}", "x-request-id": rid}
            async with (
                sem,
                session.post(f"{url}/v1/chat/completions", json=body, headers=headers) as r,
            ):
                await r.read()
                return r.status, rid

        return await asyncio.gather(*(one() for _ in range(n)))


def workers_seen(router: RouterProcess) -> set[int]:
    """Which workers wrote an access line for a chat request."""
    seen = set()
    for line in router.output().splitlines():
        if line.startswith("{") and '"/v1/chat/completions"' in line:
            seen.add(json.loads(line)["worker"])
    return seen


async def chat_requests_counted(port: int) -> float:
    async with (
        aiohttp.ClientSession() as session,
        session.get(f"http://127.0.0.1:{port}/metrics") as response,
    ):
        text = await response.text()
    prefix = "router_http_requests_total{"
    lines = [x for x in text.splitlines() if x.startswith(prefix) and "/v1/chat/" in x]
    return sum(float(line.split()[-1]) for line in lines)


async def logged(router: RouterProcess, event: str) -> None:
    for _ in range(100):
        if f'"event": "{event}"' in router.output():
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"no {event} in:\n{router.output()}")


def worker_pids(supervisor: int) -> list[int]:
    children = Path(f"/proc/{supervisor}/task/{supervisor}/children").read_text()
    return [int(pid) for pid in children.split()]


async def backend_field(url: str, n: int, field: str) -> Counter[float]:
    """The mock backend's `field` in /v1/admin/backends as `n` fresh connections (either
    worker) see it."""
    connector = aiohttp.TCPConnector(force_close=True)
    headers = {"Authorization": f"Bearer {ADMIN}"}
    seen: Counter[float] = Counter()
    async with aiohttp.ClientSession(connector=connector, headers=headers) as session:
        for _ in range(n):
            async with session.get(f"{url}/v1/admin/backends") as r:
                seen[(await r.json())["data"][0][field]] += 1
    return seen


async def test_two_workers_share_limits_records_overrides_and_metrics(
    redis_server: RedisServer, kafka_broker: KafkaBroker, mock_url: str, tmp_path: Path
) -> None:
    """Both workers serve; the org's rpm holds across them (Redis), every answer has one
    record in Kafka, a degrade set through one worker is obeyed by both within a second (on
    the admin listener; the public one refuses the admin routes),
    the merged metrics count every request, and SIGTERM drains both and exits 0."""
    topic = f"usage-{uuid.uuid4().hex[:8]}"
    kafka_broker.create_topic(topic, 1)
    metrics_port = free_port()
    extra = f"""redis_url = "{redis_server.url}"

[usage]
sink = "kafka"
kafka_bootstrap = ["{kafka_broker.bootstrap}"]
kafka_topic = "{topic}"
kafka_audit_topic = "{topic}-audit"

[[orgs]]
id = "acme"
rpm = {RPM}
"""
    path = config(tmp_path, mock_url, metrics_port, extra)
    with router_process(["--config", str(path)], tmp_path) as router:
        results = await chat(router.url, 60)
        statuses = Counter(status for status, _ in results)
        # One minute's refill is 40 requests: the few hundred ms of the run add at most 1-2.
        assert RPM <= statuses[200] <= RPM + 2, statuses
        assert statuses[200] + statuses[429] == 60, statuses
        sent = 60
        for _ in range(10):  # the kernel picks the worker: bounded rounds until both did
            if workers_seen(router) == {0, 1}:
                break
            sent += len(await chat(router.url, 16))
        assert workers_seen(router) == {0, 1}
        answered = [rid for status, rid in results if status == 200]
        seen = await published_ids(kafka_broker.bootstrap, topic, answered)
        assert {rid: seen[rid] for rid in answered} == dict.fromkeys(answered, 1)

        # Every chat request counted once, summed over both workers.
        assert await chat_requests_counted(metrics_port) == sent
        assert await metric(metrics_port, "router_workers") == 2

        async with aiohttp.ClientSession() as session:
            degrade = {"weight": 0.5, "reason": "drill", "ttl_s": 600}
            headers = {"Authorization": f"Bearer {ADMIN}"}
            url = f"{router.admin_url}/v1/admin/backends/mock/degrade"
            async with session.post(url, json=degrade, headers=headers) as r:
                assert r.status == 200
        await asyncio.sleep(1.0)
        assert await backend_field(router.admin_url, 12, "effective_weight") == Counter({0.5: 12})
        # Both workers hold both listeners: the public one refuses the admin routes.
        assert await public_admin_refusals(router.url, 8) == 8
        assert router.terminate() == 0


async def public_admin_refusals(url: str, n: int) -> int:
    """How many of `n` fresh connections to the public listener get the admin routes' 404."""
    connector = aiohttp.TCPConnector(force_close=True)
    headers = {"Authorization": f"Bearer {ADMIN}"}
    refused = 0
    async with aiohttp.ClientSession(connector=connector, headers=headers) as session:
        for _ in range(n):
            async with session.get(f"{url}/v1/admin/backends") as r:
                message = (await r.json())["error"]["message"]
                refused += r.status == 404 and "served on the admin listener" in message
    return refused


async def test_a_dead_worker_is_restarted_and_clients_see_no_error(
    mock_url: str, tmp_path: Path
) -> None:
    """SIGKILL of one worker: the other keeps serving (no client error), the supervisor
    starts a new one within seconds and counts the restart, and the merged request counter
    keeps what the dead worker had counted (it never goes down)."""
    metrics_port = free_port()
    path = config(tmp_path, mock_url, metrics_port, '\n[[orgs]]\nid = "acme"\n')
    with router_process(["--config", str(path)], tmp_path) as router:
        await logged(router, "workers_started")  # healthz answers once one worker serves
        assert Counter(status for status, _ in await chat(router.url, 20)) == Counter({200: 20})
        assert await chat_requests_counted(metrics_port) == 20  # a scrape just before the kill
        first, _ = worker_pids(router.process.pid)
        os.kill(first, signal.SIGKILL)
        await logged(router, "worker_exited")  # its accepted connections die with it
        results = await chat(router.url, 30, concurrency=2)
        assert Counter(status for status, _ in results) == Counter({200: 30})
        for _ in range(60):
            if await metric(metrics_port, "router_workers") == 2:
                break
            await asyncio.sleep(0.25)
        assert await metric(metrics_port, "router_workers") == 2
        assert await metric(metrics_port, "router_worker_restarts_total") == 1
        assert await chat_requests_counted(metrics_port) == 50
        assert first not in worker_pids(router.process.pid)


def serve_until_exit(config: Path, port: int) -> subprocess.CompletedProcess[str]:
    """`routerctl serve` expected to fail at start: its output once it exited."""
    return subprocess.run(
        [*routerctl_command(), "serve", "--config", str(config), "--listen", f"127.0.0.1:{port}"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        start_new_session=True,  # a group of its own, as router_process's
    )


def test_a_worker_that_cannot_start_fails_the_start(mock_url: str, tmp_path: Path) -> None:
    """A state dir the workers cannot use: `serve` exits 1 saying why, no worker left behind."""
    path = config(tmp_path, mock_url, free_port(), '\n[[orgs]]\nid = "acme"\n')
    (tmp_path / "state").write_text("a file, not a directory")
    done = serve_until_exit(path, free_port())
    assert done.returncode == 1, done.stderr
    assert "cannot start" in done.stderr
    assert "worker_start_failed" in done.stderr


def test_a_busy_port_is_one_line_and_exit_1(mock_url: str, tmp_path: Path) -> None:
    """The supervisor binds the port itself: a taken one is reported as for one worker."""
    path = config(tmp_path, mock_url, free_port(), '\n[[orgs]]\nid = "acme"\n')
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        done = serve_until_exit(path, taken.getsockname()[1])
    assert done.returncode == 1
    assert (
        done.stderr.strip()
        .splitlines()[-1]
        .startswith("routerctl: error: cannot listen: address already in use")
    )


async def test_a_reload_through_either_path_reaches_every_worker(
    mock_url: str, tmp_path: Path
) -> None:
    """An admin API reload answered by one worker, and SIGHUP to the supervisor, both leave
    every worker serving the new file."""
    path = config(tmp_path, mock_url, free_port(), '\n[[orgs]]\nid = "acme"\n')
    backend = f'url = "{mock_url}"'
    with router_process(["--config", str(path)], tmp_path) as router:
        await logged(router, "workers_started")
        path.write_text(path.read_text().replace(backend, f"{backend}\nweight = 2.0"))
        async with aiohttp.ClientSession() as session:
            headers = {"Authorization": f"Bearer {ADMIN}"}
            reload = f"{router.admin_url}/v1/admin/config/reload"
            async with session.post(reload, headers=headers) as r:
                assert r.status == 200
        for _ in range(40):  # the other worker reloads on the supervisor's SIGHUP
            if await backend_field(router.admin_url, 8, "weight") == Counter({2.0: 8}):
                break
            await asyncio.sleep(0.1)
        assert await backend_field(router.admin_url, 12, "weight") == Counter({2.0: 12})

        path.write_text(path.read_text().replace("weight = 2.0", "weight = 3.0"))
        router.process.send_signal(signal.SIGHUP)
        for _ in range(40):
            if await backend_field(router.admin_url, 8, "weight") == Counter({3.0: 8}):
                break
            await asyncio.sleep(0.1)
        assert await backend_field(router.admin_url, 12, "weight") == Counter({3.0: 12})
        assert router.terminate() == 0
