"""Steering a running router from the CLI: degrade shifts share, TTLs lapse, drain, audit."""

from __future__ import annotations

import asyncio
import os
import signal
import sqlite3
import subprocess
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import aiohttp
import msgspec
import pytest

from appliance.auth.keyring import hash_key
from tests.e2e.cli import RouterProcess, router_process, routerctl_command
from tests.services import free_port

KEY = "rk-e2e-routing"
OPERATOR = "rka-e2e-operator"
VIEWER = "rka-e2e-viewer"
BACKENDS = ("b0", "b1", "b2")
_HTTP = urllib.request.build_opener(urllib.request.ProxyHandler({}))


@pytest.fixture(scope="module")
def mocks(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, str]]:
    """Three `routerctl mock-backend` processes: backend id -> base URL (without /v1)."""
    tmp = tmp_path_factory.mktemp("mocks")
    processes: list[subprocess.Popen[bytes]] = []
    urls = {}
    try:
        for name in BACKENDS:
            port = free_port()
            with (tmp / f"{name}.log").open("w") as sink:
                processes.append(
                    subprocess.Popen(
                        [*routerctl_command(), "mock-backend", "--port", str(port)],
                        stdout=sink,
                        stderr=subprocess.STDOUT,
                    )
                )
            urls[name] = f"http://127.0.0.1:{port}"
        for url in urls.values():
            _wait(f"{url}/health")
        yield urls
    finally:
        for process in processes:
            process.send_signal(signal.SIGTERM)
        for process in processes:
            try:
                process.wait(10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(5)


def _wait(url: str) -> None:
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        try:
            with _HTTP.open(url, timeout=1):
                return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"{url} did not come up")


@pytest.fixture
def router(mocks: dict[str, str], tmp_path: Path) -> Iterator[RouterProcess]:
    backends = "".join(
        f'[[backends]]\nid = "{name}"\nurl = "{url}/v1"\n\n' for name, url in mocks.items()
    )
    routes = ", ".join(f'{{ backend = "{name}" }}' for name in mocks)
    config = tmp_path / "router.toml"
    config.write_text(
        f"""
[server]
metrics_listen = ""

[state]
dir = "{tmp_path / "state"}"

[telemetry]
access_log = false

[admin]
tokens = [
    {{ id = "oncall", sha256 = "{hash_key(OPERATOR)}", role = "operator" }},
    {{ id = "watcher", sha256 = "{hash_key(VIEWER)}", role = "viewer" }},
]

{backends}
[[models]]
name = "m"
backends = [{routes}]

[[orgs]]
id = "acme"

[[keys]]
id = "k"
org = "acme"
sha256 = "{hash_key(KEY)}"
"""
    )
    with router_process(["--config", str(config)], tmp_path) as running:
        yield running


def cli(router: RouterProcess, *args: str, token: str = OPERATOR) -> str:
    env = {**os.environ, "ROUTERCTL_URL": router.admin_url, "ROUTERCTL_TOKEN": token}
    result = subprocess.run(
        [*routerctl_command(), *args],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    return result.stdout


def served(mocks: dict[str, str]) -> dict[str, int]:
    counts = {}
    for name, url in mocks.items():
        with _HTTP.open(f"{url}/_mock/stats", timeout=5) as response:
            by_path = msgspec.json.decode(response.read())["by_path"]
            counts[name] = int(by_path.get("/v1/chat/completions", 0))  # probes excluded
    return counts


async def shares(router: RouterProcess, mocks: dict[str, str], n: int = 300) -> dict[str, float]:
    """Send n chat requests (8 at a time) and return each backend's share of them."""
    before = await asyncio.to_thread(served, mocks)
    body = {"model": "m", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 1}
    headers = {"Authorization": f"Bearer {KEY}"}
    queue = list(range(n))
    async with aiohttp.ClientSession() as session:

        async def worker() -> None:
            while queue:
                queue.pop()
                async with session.post(
                    f"{router.url}/v1/chat/completions", json=body, headers=headers
                ) as response:
                    assert response.status == 200
                    await response.read()

        await asyncio.gather(*(worker() for _ in range(8)))
    after = await asyncio.to_thread(served, mocks)
    return {name: (after[name] - before[name]) / n for name in mocks}


async def test_degrade_shifts_share_and_ttl_lapses(
    router: RouterProcess, mocks: dict[str, str]
) -> None:
    """degrade --factor 0.25 cuts b1 to its expected share (±0.06); the TTL restores it."""
    even = await shares(router, mocks)
    assert abs(even["b1"] - 1 / 3) < 0.08
    args = ("backend", "degrade", "b1", "--factor", "0.25", "--reason", "e2e", "--ttl", "20s")
    out = await asyncio.to_thread(cli, router, *args)
    assert "b1" in out
    listed = msgspec.json.decode(await asyncio.to_thread(cli, router, "backend", "list", "--json"))
    b1 = next(b for b in listed["data"] if b["id"] == "b1")
    assert b1["effective_weight"] == 0.25
    assert b1["override"]["kind"] == "degrade"
    degraded = await shares(router, mocks)
    expected = 0.25 / 2.25  # b1's weight x 0.25 over the new total: about a third of before
    assert abs(degraded["b1"] - expected) < 0.06, degraded
    # Let the TTL lapse (measured from the override's own expiry, however slow the machine).
    await asyncio.sleep(max(0.0, b1["override"]["expires_at"] - time.time()) + 0.2)
    restored = await shares(router, mocks)
    assert abs(restored["b1"] - 1 / 3) < 0.08


async def test_drain_stops_new_traffic_while_a_stream_finishes(
    router: RouterProcess, mocks: dict[str, str], tmp_path: Path
) -> None:
    """A drained backend gets nothing new, its in-flight stream completes, and it is audited."""
    await asyncio.to_thread(cli, router, "override", "pin", "m", "b2", "--reason", "e2e")
    body = {
        "model": "m",
        "stream": True,
        "messages": [{"role": "user", "content": "[mock:chunks=10] [mock:chunk_delay_ms=200]"}],
    }
    async with aiohttp.ClientSession() as session:
        stream = await session.post(
            f"{router.url}/v1/chat/completions",
            json=body,
            headers={"Authorization": f"Bearer {KEY}"},
        )
        await stream.content.readuntil(b"\n\n")
        pins = msgspec.json.decode(
            await asyncio.to_thread(cli, router, "override", "list", "--json")
        )
        await asyncio.to_thread(
            cli, router, "override", "clear", pins["data"][0]["id"], "--reason", "e2e"
        )
        await asyncio.to_thread(cli, router, "backend", "drain", "b2", "--reason", "maintenance")
        drained = await shares(router, mocks, n=120)
        rest = await stream.read()
    assert drained["b2"] == 0
    assert rest.endswith(b"data: [DONE]\n\n")
    with sqlite3.connect(tmp_path / "state" / "audit.sqlite") as db:
        kinds = [
            row[0]
            for row in db.execute(
                "SELECT kind FROM audit_events WHERE actor = 'oncall' ORDER BY seq"
            )
        ]
    assert kinds == ["override.pin", "override.clear", "backend.drain"]


async def test_admin_auth_matrix_on_the_real_router(router: RouterProcess) -> None:
    """No token and org keys get 401, viewers read but may not change, operators may."""
    url = f"{router.admin_url}/v1/admin/backends"
    change = f"{router.admin_url}/v1/admin/backends/b0/degrade"
    body = {"weight": 0.5, "reason": "matrix"}
    async with aiohttp.ClientSession() as session:
        for token, read, write in (
            (None, 401, 401),
            (KEY, 401, 401),
            (VIEWER, 200, 403),
            (OPERATOR, 200, 200),
        ):
            headers = {"Authorization": f"Bearer {token}"} if token else {}
            async with session.get(url, headers=headers) as response:
                assert response.status == read, token
            async with session.post(change, json=body, headers=headers) as response:
                assert response.status == write, token
