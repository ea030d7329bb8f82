"""`routerctl serve --demo`: two in-process mock backends, one model, one org, a known key.

The key is fixed so the README's curl works as printed; the demo listens on loopback only.
"""

from __future__ import annotations

import tempfile
from contextlib import AsyncExitStack

from appliance.auth.keyring import hash_key
from appliance.mock.server import MockBackend
from appliance.settings import (
    ApiKey,
    Backend,
    Model,
    ModelRoute,
    Org,
    ServerSettings,
    Settings,
    StateSettings,
    TelemetrySettings,
)
from appliance.settings_loader import BackendCredentials, LoadedConfig

DEMO_KEY = "rk-demo-key-for-local-use-only"
DEMO_MODEL = "demo"
_MOCK_HOST = "127.0.0.1"


async def start_demo(
    stack: AsyncExitStack, listen: str = "127.0.0.1:8080", metrics_listen: str = "127.0.0.1:9090"
) -> LoadedConfig:
    """Start the demo's mock backends (stopped with `stack`) and return its config."""
    state_dir = stack.enter_context(tempfile.TemporaryDirectory(prefix="routerctl-demo-"))
    backends = []
    for index, name in enumerate(("mock-a", "mock-b")):
        mock = MockBackend(models=[DEMO_MODEL], seed=index)
        await mock.start(_MOCK_HOST, 0)
        stack.push_async_callback(mock.stop)
        backends.append(Backend(id=name, url=mock.url, health_path="/health"))
    settings = Settings(
        server=ServerSettings(listen=listen, metrics_listen=metrics_listen),
        state=StateSettings(dir=state_dir),
        telemetry=TelemetrySettings(log_format="console"),
        backends=tuple(backends),
        models=(
            Model(name=DEMO_MODEL, backends=tuple(ModelRoute(backend=b.id) for b in backends)),
        ),
        orgs=(Org(id="demo"),),
        keys=(ApiKey(id="demo-key", org="demo", sha256=hash_key(DEMO_KEY)),),
    )
    return LoadedConfig(
        settings=settings,
        credentials={b.id: BackendCredentials() for b in backends},
        source="<demo>",
    )
