"""Row 7 of the reliability matrix: canary secrets never leave the router in any output.

One router process holds a canary of every secret it can hold (an org key, an operator's
admin token, a backend's API key and a secret header from the environment, the etcd
password), logs at debug level with the access log on, and exports traces to a collector in
the test. Every route is driven, wrong credentials included, then every output is searched
for the canaries' common marker: the process's stdout and stderr, every file in its state
dir (outbox, usage file sink, audit, config cache), /metrics, the trace export bodies, every
HTTP answer's head and body, and what `routerctl config show`, `doctor`, `backend list` and
`audit lookup` print.
"""

from __future__ import annotations

import asyncio
import json
from collections import Counter
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web

from appliance.auth.keyring import hash_key
from appliance.configsvc.etcd_client import EtcdClient
from appliance.mock.server import MockBackend
from tests.e2e.cli import RouterProcess, router_process, run_cli
from tests.reliability import Figures
from tests.services import EtcdServer, etcd_binary, free_port

MARK = b"CANARY"  # every canary holds it, so one search finds any of them, or a part
ORG_KEY = "rk-CANARY-org-key-41d9"
WRONG_KEY = "rk-CANARY-wrong-key-0b2e"
ADMIN_TOKEN = "CANARY-admin-token-c7a1"
WRONG_ADMIN_TOKEN = "CANARY-wrong-admin-token-5e08"
BACKEND_KEY = "CANARY-backend-key-9f3a"
BACKEND_HEADER = "CANARY-backend-header-2c64"
ETCD_PASSWORD = "CANARY-etcd-password-77b0"
ROOT_PASSWORD = "etcd-root-password"  # the test's own, never given to the router
SECRETS = {  # variable names hold no marker: they are not secret and are shown
    "SECRET_TEST_BACKEND_KEY": BACKEND_KEY,
    "SECRET_TEST_BACKEND_HEADER": BACKEND_HEADER,
    "SECRET_TEST_ETCD_PASSWORD": ETCD_PASSWORD,
    "ROUTERCTL_TOKEN": ADMIN_TOKEN,
}
PREFIX = "/secrets/"
PIN = {"kind": "pin", "model": "m", "backend": "b0", "reason": "x"}


@dataclass
class Outputs:
    """Every output of the run by kind: the bytes searched, and the canary hits in them."""

    scanned: Counter[str] = field(default_factory=Counter)
    hits: Counter[str] = field(default_factory=Counter)
    where: list[str] = field(default_factory=list)

    def scan(self, kind: str, data: bytes, what: str = "") -> None:
        self.scanned[kind] += len(data)
        if found := data.count(MARK):
            self.hits[kind] += found
            at = data.index(MARK)
            self.where.append(f"{kind} {what}: ...{data[max(0, at - 80) : at + 40]!r}...")


@pytest.fixture(scope="module")
def auth_etcd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EtcdServer]:
    """An etcd of its own with auth on: user "router" (the canary password) may use PREFIX."""
    server = EtcdServer(etcd_binary(), tmp_path_factory.mktemp("etcd-secrets"))
    try:
        server.start()
        server.enable_auth(ROOT_PASSWORD, {"router": (ETCD_PASSWORD, PREFIX)})
        yield server
    finally:
        server.retire()


async def seed(etcd: EtcdServer, mock_url: str) -> None:
    """The policy in etcd: backend b0 with its credentials from the environment, model m,
    org acme and its (canary) key."""
    backend = {
        "url": mock_url,
        "api_key_env": "SECRET_TEST_BACKEND_KEY",
        "secret_headers": {"x-backend-secret": "SECRET_TEST_BACKEND_HEADER"},
    }
    documents = {
        f"{PREFIX}backends/b0": json.dumps(backend).encode(),
        f"{PREFIX}models/m": json.dumps({"backends": [{"backend": "b0"}]}).encode(),
        f"{PREFIX}orgs/acme": b"{}",
        f"{PREFIX}keys/k-canary": json.dumps({"org": "acme", "sha256": hash_key(ORG_KEY)}).encode(),
    }
    async with EtcdClient(
        [etcd.url], username="router", password=ETCD_PASSWORD, timeout_s=5
    ) as client:
        await client.txn_put_delete(documents)


def write_config(tmp: Path, etcd: EtcdServer, metrics_port: int, otlp: str) -> Path:
    path = tmp / "router.toml"
    path.write_text(
        f"""
[server]
metrics_listen = "127.0.0.1:{metrics_port}"
graceful_shutdown_s = 1

[state]
dir = "{tmp / "state"}"

[telemetry]
log_level = "debug"
access_log = true
otlp_endpoint = "{otlp}"

[usage]
sink = "file"

[config_service]
etcd_endpoints = ["{etcd.url}"]
prefix = "{PREFIX}"
username = "router"
password_env = "SECRET_TEST_ETCD_PASSWORD"

[[admin.tokens]]
id = "oncall"
sha256 = "{hash_key(ADMIN_TOKEN)}"
role = "operator"

"""
    )
    return path


@asynccontextmanager
async def collector() -> AsyncIterator[tuple[str, list[bytes]]]:
    """An OTLP/HTTP trace collector: its URL and the raw protobuf bodies POSTed to it."""
    bodies: list[bytes] = []

    async def traces(request: web.Request) -> web.Response:
        bodies.append(await request.read())
        return web.Response(body=b"", content_type="application/x-protobuf")

    app = web.Application()
    app.router.add_post("/v1/traces", traces)
    runner = web.AppRunner(app)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    try:
        yield f"http://127.0.0.1:{port}", bodies
    finally:
        await runner.cleanup()


@asynccontextmanager
async def mock_backend() -> AsyncIterator[MockBackend]:
    mock = MockBackend()
    await mock.start()
    try:
        yield mock
    finally:
        await mock.stop()


@asynccontextmanager
async def router(config: Path, tmp: Path) -> AsyncIterator[RouterProcess]:
    """The router process, started and stopped in a thread (the mock and the collector live
    in this loop); stopped with SIGTERM, so its last spans are exported."""
    running = router_process(["--config", str(config)], tmp, env=SECRETS)
    process = await asyncio.to_thread(running.__enter__)
    try:
        yield process
    finally:
        await asyncio.to_thread(process.terminate)
        await asyncio.to_thread(running.__exit__, None, None, None)


@dataclass
class Client:
    """HTTP calls to the router; every answer's status line, headers and body are scanned."""

    router: RouterProcess
    session: aiohttp.ClientSession
    outputs: Outputs
    last_id: str = ""

    async def call(
        self, method: str, path: str, token: str = "", body: object = None
    ) -> tuple[int, bytes]:
        """(status, body) of one call; its request id is kept in `last_id`."""
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        async with self.session.request(
            method, self.router.url_for(path), json=body, headers=headers
        ) as response:
            data = await response.read()
        self.last_id = response.headers.get("x-request-id", "")
        head = f"HTTP {response.status} {response.reason}\r\n".encode() + b"".join(
            name + b": " + value + b"\r\n" for name, value in response.raw_headers
        )
        self.outputs.scan("HTTP answers", head + data, f"{method} {path}")
        return response.status, data


def chat(content: str, *, stream: bool = False) -> dict[str, object]:
    return {"model": "m", "stream": stream, "messages": [{"role": "user", "content": content}]}


async def inference(client: Client) -> str:
    """Every public route, served, failed and refused; the id of a served request."""
    statuses = [
        (await client.call("POST", "/v1/chat/completions", WRONG_KEY, chat("hi")))[0],
        (await client.call("POST", "/v1/chat/completions", "", chat("hi")))[0],
        (await client.call("GET", "/v1/models", ORG_KEY))[0],
        (await client.call("POST", "/v1/chat/completions", ORG_KEY, chat("hi", stream=True)))[0],
        (await client.call("POST", "/v1/chat/completions", ORG_KEY, chat("[mock:status=500]")))[0],
        (await client.call("POST", "/v1/completions", ORG_KEY, {"model": "m", "prompt": "hi"}))[0],
        (await client.call("POST", "/v1/embeddings", ORG_KEY, {"model": "m", "input": "hi"}))[0],
        (await client.call("POST", "/v1/chat/completions", ORG_KEY, {"model": "nope"}))[0],
        (await client.call("GET", "/v1/status/healthz"))[0],
        (await client.call("GET", "/v1/status/readyz"))[0],
    ]
    assert statuses == [401, 401, 200, 200, 502, 200, 200, 400, 200, 200]
    status, body = await client.call("POST", "/v1/chat/completions", ORG_KEY, chat("hi"))
    assert status == 200
    assert body
    return client.last_id


async def admin(client: Client, request_id: str) -> None:
    """Every admin route with the operator's token, and wrong tokens refused."""
    calls: list[tuple[str, str, str, object, int]] = [
        ("GET", "/v1/admin/backends", WRONG_ADMIN_TOKEN, None, 401),
        ("GET", "/v1/admin/backends", ORG_KEY, None, 401),
        ("GET", "/v1/admin/backends", ADMIN_TOKEN, None, 200),
        ("POST", "/v1/admin/backends/b0/degrade", ADMIN_TOKEN, {"factor": 0.5, "reason": "x"}, 200),
        ("POST", "/v1/admin/backends/b0/restore", ADMIN_TOKEN, {"reason": "x"}, 200),
        ("POST", "/v1/admin/overrides", ADMIN_TOKEN, PIN, 200),
        ("GET", "/v1/admin/overrides", ADMIN_TOKEN, None, 200),
        ("GET", "/v1/admin/audit?since=0", ADMIN_TOKEN, None, 200),
        ("GET", "/v1/admin/buffer", ADMIN_TOKEN, None, 200),
        ("POST", "/v1/admin/config/reload", ADMIN_TOKEN, {}, 200),
        ("GET", f"/v1/usage/{request_id}", ORG_KEY, None, 200),
        ("GET", f"/v1/usage/{request_id}", WRONG_KEY, None, 401),
    ]  # fmt: skip
    for method, path, token, body, wanted in calls:
        status, data = await client.call(method, path, token, body)
        assert status == wanted, (method, path, status, data[:300])


async def cli_outputs(router: RouterProcess, config: Path, outputs: Outputs) -> None:
    """What the operator's commands print, each scanned (run in threads: the mock and the
    collector answer from this loop)."""
    env = {**SECRETS, "ROUTERCTL_URL": router.admin_url}
    commands = [
        ("config", "show", str(config)),
        ("doctor", "--config", str(config), "--timeout", "2"),
        ("doctor", "--url", router.admin_url),
        ("backend", "list"),
        ("audit", "lookup", "--since", "1h"),
    ]
    for command in commands:
        done = await asyncio.to_thread(run_cli, *command, env=env)
        assert done.stdout, (command, done.stderr)
        outputs.scan("CLI output", (done.stdout + done.stderr).encode(), " ".join(command[:2]))


def state_files(state: Path, outputs: Outputs) -> int:
    """Every file the router left in its state dir; the number of usage records on file."""
    for path in sorted(p for p in state.rglob("*") if p.is_file()):
        outputs.scan("state dir files", path.read_bytes(), path.name)
    return len((state / "usage.jsonl").read_text().splitlines())


@pytest.mark.reliability("7.1", "canary secrets through every route; every output searched")
async def test_no_canary_secret_in_any_output(
    auth_etcd: EtcdServer, tmp_path: Path, figures: Figures
) -> None:
    """No canary (org key, admin token, backend key and secret header, etcd password, wrong
    credentials) appears in logs, state files, metrics, traces, HTTP answers or CLI output."""
    outputs = Outputs()
    metrics_port = free_port()
    async with mock_backend() as mock, collector() as (otlp, traces):
        await seed(auth_etcd, mock.url)
        config = write_config(tmp_path, auth_etcd, metrics_port, otlp)
        async with (
            router(config, tmp_path) as running,
            aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as session,
        ):
            client = Client(running, session, outputs)
            request_id = await inference(client)
            await admin(client, request_id)
            async with session.get(f"http://127.0.0.1:{metrics_port}/metrics") as response:
                outputs.scan("/metrics", await response.read())
            await cli_outputs(running, config, outputs)
        sent = mock.requests()
    for body in traces:
        outputs.scan("trace exports", body)
    outputs.scan("router stdout and stderr", running.log.read_bytes())
    records = state_files(tmp_path / "state", outputs)
    figures.add("usage records on file", records)
    for kind, size in sorted(outputs.scanned.items()):
        figures.add(f"{kind} scanned", size, "bytes")
    figures.add("canary hits", sum(outputs.hits.values()), bound=0)
    # Live canaries: the backend got its credentials, the trace and log outputs are there.
    assert any(r["headers"].get("Authorization") == f"Bearer {BACKEND_KEY}" for r in sent)  # type: ignore[union-attr]
    assert traces
    assert outputs.scanned["router stdout and stderr"]
    assert outputs.scanned["/metrics"]
    assert records >= 5
    assert outputs.where == []
