"""A real router (its configured engine and the built app) in the test's event loop, in front
of mock backends."""

from __future__ import annotations

import asyncio
import tempfile
from collections.abc import AsyncIterator, Mapping
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass, field

import aiohttp

from appliance.app import AppState, build_app
from appliance.auth.keyring import hash_key
from appliance.mock.server import MockBackend
from appliance.server import MetricsListener, engine_for
from appliance.settings.loader import load_text
from tests.services import free_port

KEY = "rk-test-key-acme"
RESTRICTED_KEY = "rk-test-key-restricted"
DISABLED_ORG_KEY = "rk-test-key-disabled-org"
DISABLED_KEY = "rk-test-key-disabled"
BACKEND_SECRET = "backend-secret-value"


def base_config(
    mock_urls: Mapping[str, str],
    port: int,
    *,
    admin_port: int | None = None,
    server_extra: str = "",
    max_body: int = 65536,
    state_dir: str = "",
    extra: str = "",
    state_extra: str = "",
    telemetry_extra: str = "",
    backend_extra: str = "",
) -> str:
    """A config with model `chat` over the given mocks, orgs, keys and one dead backend, the
    admin routes on `admin_port` (a free one if None); `backend_extra` is added to every
    mock's `[[backends]]` table."""
    backends = "".join(
        f'[[backends]]\nid = "{name}"\nurl = "{url}"\napi_key_env = "TEST_BACKEND_KEY"\n'
        f'headers = {{ "x-extra" = "on" }}\nttfb_timeout_s = 1.0\ntotal_timeout_s = 3.0\n'
        f"{backend_extra}\n\n"
        for name, url in mock_urls.items()
    )
    routes = ", ".join(
        f'{{ backend = "{name}", upstream_model = "up-{name}" }}' for name in mock_urls
    )
    dead = free_port()
    admin = f"127.0.0.1:{admin_port or free_port()}"
    return f"""
[server]
listen = "127.0.0.1:{port}"
admin_listen = "{admin}"
metrics_listen = ""
max_body_bytes = {max_body}
body_read_timeout_s = 0.5
graceful_shutdown_s = 1
{server_extra}

[telemetry]
log_level = "warning"
{telemetry_extra}

[state]
dir = "{state_dir}"
{state_extra}

{extra}

{backends}
[[backends]]
id = "dead"
url = "http://127.0.0.1:{dead}/v1"
connect_timeout_s = 0.5

[[models]]
name = "chat"
backends = [{routes}]

[[models]]
name = "other"
backends = [{routes}]

[[models]]
name = "nowhere"
backends = [{{ backend = "dead" }}]

[[orgs]]
id = "acme"

[[orgs]]
id = "gone"
disabled = true

[[keys]]
id = "k-acme"
org = "acme"
sha256 = "{hash_key(KEY)}"

[[keys]]
id = "k-restricted"
org = "acme"
sha256 = "{hash_key(RESTRICTED_KEY)}"
models = ["chat"]

[[keys]]
id = "k-gone"
org = "gone"
sha256 = "{hash_key(DISABLED_ORG_KEY)}"

[[keys]]
id = "k-off"
org = "acme"
sha256 = "{hash_key(DISABLED_KEY)}"
disabled = true
"""


@dataclass
class RouterUnderTest:
    url: str
    port: int
    admin_url: str  # the admin listener: /v1/admin/..., status and the OpenAPI document
    mocks: dict[str, MockBackend]
    state: AppState
    session: aiohttp.ClientSession
    auth: dict[str, str] = field(default_factory=lambda: {"Authorization": f"Bearer {KEY}"})
    metrics_url: str = ""  # http://host:port/metrics when started with metrics_listener=True

    async def post(
        self, path: str, payload: object, headers: Mapping[str, str] | None = None
    ) -> aiohttp.ClientResponse:
        return await self.session.post(
            f"{self.url}{path}", json=payload, headers={**self.auth, **(headers or {})}
        )


@asynccontextmanager
async def running_router(
    mock_count: int = 1,
    *,
    server_extra: str = "",
    mock_options: Mapping[str, float] | None = None,
    max_body: int = 65536,
    extra: str = "",
    state_dir: str | None = None,
    state_extra: str = "",
    metrics_listener: bool = False,
    telemetry_extra: str = "",
    environ: Mapping[str, str] | None = None,
    backend_extra: str = "",
) -> AsyncIterator[RouterUnderTest]:
    """Start mocks and a router on free ports; stop everything on exit, whatever happened."""
    mocks = {f"m{i}": MockBackend(seed=i, **(mock_options or {})) for i in range(mock_count)}
    stop = asyncio.Event()
    task: asyncio.Task[None] | None = None
    own_state = tempfile.TemporaryDirectory(prefix="routerctl-test-")
    listeners = AsyncExitStack()
    try:
        for mock in mocks.values():
            await mock.start("127.0.0.1", 0)
        port, admin_port = free_port(), free_port()
        text = base_config(
            {n: m.url for n, m in mocks.items()},
            port,
            admin_port=admin_port,
            server_extra=server_extra,
            max_body=max_body,
            state_dir=state_dir or own_state.name,
            extra=extra,
            state_extra=state_extra,
            telemetry_extra=telemetry_extra,
            backend_extra=backend_extra,
        )
        env = {"TEST_BACKEND_KEY": BACKEND_SECRET, **(environ or {})}
        loaded = load_text(text, "test.toml", env)
        built = build_app(loaded)
        engine = engine_for(loaded.settings.server)
        task = asyncio.create_task(engine(built.asgi, stop.wait))
        url = f"http://127.0.0.1:{port}"
        metrics_url = ""
        if metrics_listener:
            listen = f"127.0.0.1:{free_port()}"
            await listeners.enter_async_context(MetricsListener(listen, built.state.metrics))
            metrics_url = f"http://{listen}/metrics"
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=15)) as session:
            await _wait_ready(session, url, task)
            admin_url = f"http://127.0.0.1:{admin_port}"
            yield RouterUnderTest(
                url, port, admin_url, mocks, built.state, session, metrics_url=metrics_url
            )
    finally:
        stop.set()
        try:
            await listeners.aclose()
            if task is not None and not task.done():
                await asyncio.wait_for(task, 10)
        finally:
            # A router that failed to start raised already (from _wait_ready): still clean up.
            for mock in mocks.values():
                await mock.stop()
            own_state.cleanup()


async def _wait_ready(session: aiohttp.ClientSession, url: str, task: asyncio.Task[None]) -> None:
    for _ in range(200):
        if task.done():
            task.result()
        try:
            async with session.get(f"{url}/v1/status/healthz") as response:
                if response.status == 200:
                    return
        except aiohttp.ClientConnectionError:
            pass
        await asyncio.sleep(0.025)
    raise RuntimeError("router did not become ready")


def chat(content: str = "hello world", **extra: object) -> dict[str, object]:
    return {"model": "chat", "messages": [{"role": "user", "content": content}], **extra}


def chat_requests(mock: MockBackend) -> int:
    """Chat completions a mock received (health probes excluded)."""
    by_path = mock.stats()["by_path"]
    assert isinstance(by_path, dict)
    return int(by_path.get("/v1/chat/completions", 0))
