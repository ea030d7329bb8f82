"""The admin blueprint alone on a real hypercorn, over an in-memory fake of RoutingControl.

The server runs in a thread with its own event loop, so sync tests and CLI subprocesses can
talk to it while the test keeps the fake's state in hand.
"""

from __future__ import annotations

import asyncio
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

from hypercorn.asyncio import serve
from quart import Quart

from appliance.auth.admin import AdminTokens
from appliance.auth.keyring import hash_key
from appliance.errors import BackendNotFound, ModelNotFound, OverrideNotFound
from appliance.http.admin import admin_blueprint
from appliance.http.context import RequestContext
from appliance.http.edge import EdgeLimits, EdgeMiddleware
from appliance.http.errors import install_error_handlers
from appliance.routing.overrides import Override, OverrideKind
from appliance.routing.ports import BackendView
from appliance.server import hypercorn_config
from appliance.settings import AdminToken, ServerSettings
from appliance.telemetry.metrics import Metrics
from tests.services import free_port

VIEWER_TOKEN = "rka-test-viewer-token"
OPERATOR_TOKEN = "rka-test-operator-token"
ORG_KEY = "rk-test-key-acme"  # an org API key: never an admin token
NOW = 1_700_000_000.0
TOKENS = (
    AdminToken(id="watcher", sha256=hash_key(VIEWER_TOKEN), role="viewer"),
    AdminToken(id="oncall", sha256=hash_key(OPERATOR_TOKEN), role="operator"),
)
_HTTP = urllib.request.build_opener(urllib.request.ProxyHandler({}))


@dataclass
class FakeBackend:
    """A BackendView with plain attributes the fake control updates."""

    id: str
    models: tuple[str, ...]
    weight: float = 1.0
    effective_weight: float = 1.0
    health: str = "healthy"
    inflight: int = 0
    max_concurrency: int = 0
    ewma_latency_ms: float | None = None
    ejections: int = 0
    override: Override | None = None


@dataclass
class FakeRoutingControl:
    """RoutingControl in memory: two backends, one seeded pin, a fixed clock, a call log."""

    backends_by_id: dict[str, FakeBackend] = field(default_factory=dict)
    overrides_by_id: dict[str, Override] = field(default_factory=dict)
    calls: list[tuple[str, ...]] = field(default_factory=list)
    now: float = NOW  # the fake's clock for created_at and expiries
    _next: int = 0

    def reset(self, now: float = NOW) -> None:
        self.now = now
        self.backends_by_id = {
            "gpu-a": FakeBackend(
                "gpu-a", ("chat", "embed"), 2.0, 2.0, "healthy", 3, 8, 123.4, 0, None
            ),
            "gpu-b": FakeBackend("gpu-b", ("chat",), 1.0, 1.0, "ejected", 0, 0, None, 2, None),
        }
        self._next = 0
        seed = self._make(
            kind=OverrideKind.PIN,
            backend="gpu-b",
            model="chat",
            factor=1.0,
            reason="seeded",
            actor="setup",
            ttl_s=None,
        )
        self.overrides_by_id = {seed.id: seed}
        self.calls = []

    def backends(self) -> list[BackendView]:
        return list(self.backends_by_id.values())

    def overrides(self) -> list[Override]:
        return list(self.overrides_by_id.values())

    async def degrade(
        self, backend_id: str, factor: float, reason: str, actor: str, ttl_s: float | None
    ) -> Override:
        self.calls.append(("degrade", backend_id, str(factor), reason, actor, str(ttl_s)))
        return self._steer(
            backend_id=backend_id,
            kind=OverrideKind.DEGRADE,
            factor=factor,
            reason=reason,
            actor=actor,
            ttl_s=ttl_s,
        )

    async def drain(
        self, backend_id: str, reason: str, actor: str, ttl_s: float | None
    ) -> Override:
        self.calls.append(("drain", backend_id, reason, actor, str(ttl_s)))
        return self._steer(
            backend_id=backend_id,
            kind=OverrideKind.DRAIN,
            factor=0.0,
            reason=reason,
            actor=actor,
            ttl_s=ttl_s,
        )

    async def restore(self, backend_id: str, reason: str, actor: str) -> list[Override]:
        self.calls.append(("restore", backend_id, reason, actor))
        backend = self._backend(backend_id)
        removed = [
            o
            for o in self.overrides_by_id.values()
            if o.backend == backend_id and o.kind is not OverrideKind.PIN
        ]
        for o in removed:
            del self.overrides_by_id[o.id]
        backend.override, backend.effective_weight = None, backend.weight
        return removed

    async def pin(
        self, model: str, backend_id: str, reason: str, actor: str, ttl_s: float | None
    ) -> Override:
        self.calls.append(("pin", model, backend_id, reason, actor, str(ttl_s)))
        if not any(model in b.models for b in self.backends_by_id.values()):
            raise ModelNotFound(f"No model is named '{model}'.", param="model")
        self._backend(backend_id)
        made = self._make(
            kind=OverrideKind.PIN,
            backend=backend_id,
            model=model,
            factor=1.0,
            reason=reason,
            actor=actor,
            ttl_s=ttl_s,
        )
        self.overrides_by_id[made.id] = made
        return made

    async def clear(self, override_id: str, reason: str, actor: str) -> Override:
        self.calls.append(("clear", override_id, reason, actor))
        removed = self.overrides_by_id.pop(override_id, None)
        if removed is None:
            raise OverrideNotFound(f"No override in force has the id '{override_id}'.")
        return removed

    def _steer(
        self,
        *,
        backend_id: str,
        kind: OverrideKind,
        factor: float,
        reason: str,
        actor: str,
        ttl_s: float | None,
    ) -> Override:
        backend = self._backend(backend_id)
        made = self._make(
            kind=kind,
            backend=backend_id,
            model=None,
            factor=factor,
            reason=reason,
            actor=actor,
            ttl_s=ttl_s,
        )
        self.overrides_by_id[made.id] = made
        backend.override, backend.effective_weight = made, backend.weight * factor
        return made

    def _backend(self, backend_id: str) -> FakeBackend:
        found = self.backends_by_id.get(backend_id)
        if found is None:
            raise BackendNotFound(f"No backend has the id '{backend_id}'.")
        return found

    def _make(
        self,
        *,
        kind: OverrideKind,
        backend: str,
        model: str | None,
        factor: float,
        reason: str,
        actor: str,
        ttl_s: float | None,
    ) -> Override:
        self._next += 1
        expires = None if ttl_s is None else self.now + ttl_s
        return Override(
            f"ov-{self._next}", kind, backend, model, factor, reason, actor, self.now, expires
        )


@dataclass
class AdminServer:
    url: str
    control: FakeRoutingControl
    contexts: list[RequestContext]  # one per finished request, from the access-log hook


@contextmanager
def admin_server() -> Iterator[AdminServer]:
    """Serve the admin blueprint (edge middleware and error handlers included) on a free port."""
    control = FakeRoutingControl()
    control.reset()
    contexts: list[RequestContext] = []
    app = Quart("admin-test")
    install_error_handlers(app)
    app.register_blueprint(admin_blueprint(control, AdminTokens(TOKENS)))
    with threaded_app(app, contexts, "/v1/admin/backends") as url:
        yield AdminServer(url, control, contexts)


@contextmanager
def threaded_app(
    app: Quart, contexts: list[RequestContext], probe_path: str, port: int | None = None
) -> Iterator[str]:
    """Serve `app` behind the edge middleware on a free port, on its own loop in a thread.

    A thread, so plain sync tests and CLI subprocesses can call it; yields its base URL.
    """
    limits = EdgeLimits(max_body_bytes=65536, body_read_timeout_s=5.0, max_header_bytes=16384)
    edge = EdgeMiddleware(app.asgi_app, limits, Metrics(), contexts.append)  # type: ignore[arg-type]
    app.asgi_app = edge  # type: ignore[assignment, method-assign]
    port = port or free_port()
    # The blueprints alone, one listener: the split between listeners is the full app's.
    settings = ServerSettings(
        listen=f"127.0.0.1:{port}",
        admin_listen="public",
        metrics_listen="",
        graceful_shutdown_s=1,
    )
    config = hypercorn_config(settings)
    config.worker_class = "asyncio"
    loop = asyncio.new_event_loop()
    stop = asyncio.Event()
    thread = threading.Thread(
        target=loop.run_until_complete,
        args=(serve(app, config, shutdown_trigger=stop.wait),),
        daemon=True,
    )
    thread.start()
    url = f"http://127.0.0.1:{port}"
    try:
        _wait_answering(url + probe_path, thread)
        yield url
    finally:
        loop.call_soon_threadsafe(stop.set)
        thread.join(10)
        loop.close()


def _wait_answering(url: str, thread: threading.Thread, timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and thread.is_alive():
        try:
            with _HTTP.open(url, timeout=1):
                return
        except urllib.error.HTTPError as answered:  # any HTTP answer means it is serving
            answered.close()
            return
        except OSError:
            time.sleep(0.02)
    raise RuntimeError(f"test server at {url} did not start")
