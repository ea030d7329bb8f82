"""`routerctl serve --demo`: two in-process mock backends, one model, one org, a known key
and an operator admin token.

The key and the token are fixed so the README's commands work as printed, while the demo
listens on loopback. Given a non-loopback `--listen` or `--admin-listen`, the token is a fresh
random one (printed by the banner): a fixed operator token must never be reachable from other
hosts.
"""

from __future__ import annotations

import ipaddress
import tempfile
from collections.abc import Mapping
from contextlib import AsyncExitStack

import msgspec

from appliance.auth.admin import generate_admin_token
from appliance.auth.keyring import hash_key
from appliance.mock.server import MockBackend
from appliance.settings import (
    ADMIN_ON_PUBLIC,
    AdminSettings,
    AdminToken,
    ApiKey,
    Backend,
    Model,
    ModelRoute,
    Org,
    ServerSettings,
    Settings,
    StateSettings,
    TelemetrySettings,
    admin_listen_problems,
    parse_listen,
)
from appliance.settings.loader import BackendCredentials, ConfigError, LoadedConfig

DEMO_KEY = "rk-demo-key-for-local-use-only"
DEMO_MODEL = "demo"
DEMO_ADMIN_TOKEN = "rka-demo-operator-token-for-local-use-only"  # noqa: S105 - documented demo
_MOCK_HOST = "127.0.0.1"


def demo_server(overrides: Mapping[str, str]) -> ServerSettings:
    """The demo's listeners (the defaults: 8080, admin 8081, metrics 9090) with `overrides`;
    ConfigError when the admin listener would clash with another."""
    server = msgspec.structs.replace(ServerSettings(), **overrides)
    if problems := admin_listen_problems(server):
        raise ConfigError([f"server.admin_listen: {why}" for _, why in problems])
    return server


def demo_admin_token(server: ServerSettings) -> str:
    """The fixed demo token when every listener taking admin tokens is on loopback, else a
    random one for this run (the public one takes them too, for usage lookups)."""
    addresses = [server.listen]
    if server.admin_listen != ADMIN_ON_PUBLIC:
        addresses.append(server.admin_listen)
    loopback = all(_loopback(parse_listen(address)[0]) for address in addresses)
    return DEMO_ADMIN_TOKEN if loopback else generate_admin_token()


def _loopback(host: str) -> bool:
    try:
        return host == "localhost" or ipaddress.ip_address(host).is_loopback
    except ValueError:  # a host name other than localhost
        return False


async def start_demo(
    stack: AsyncExitStack,
    server: ServerSettings | None = None,
    admin_token: str = DEMO_ADMIN_TOKEN,
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
        server=server or ServerSettings(),
        state=StateSettings(dir=state_dir),
        telemetry=TelemetrySettings(log_format="console"),
        backends=tuple(backends),
        models=(
            Model(name=DEMO_MODEL, backends=tuple(ModelRoute(backend=b.id) for b in backends)),
        ),
        orgs=(Org(id="demo"),),
        keys=(ApiKey(id="demo-key", org="demo", sha256=hash_key(DEMO_KEY)),),
        admin=AdminSettings(
            tokens=(AdminToken(id="demo-operator", sha256=hash_key(admin_token), role="operator"),)
        ),
    )
    return LoadedConfig(
        settings=settings,
        credentials={b.id: BackendCredentials() for b in backends},
        source="<demo>",
    )
