"""Composition root: builds every component from settings and owns their lifecycle.

This is the only module that chooses implementations and wires them together.
"""

from __future__ import annotations

import os
import time
from collections.abc import AsyncGenerator, Callable
from contextlib import AsyncExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from quart import Quart, has_request_context, has_websocket_context

from appliance import BUILD
from appliance.app_config import ConfigStore, build_config_service, build_store
from appliance.app_limits import LimitParts, build_limits
from appliance.app_usage import UsageParts, build_usage
from appliance.audit.sink import AuditSink
from appliance.audit.sqlite_store import SqliteAuditStore
from appliance.auth.admin import AdminTokens
from appliance.configsvc.live import LiveConfig
from appliance.configsvc.service import ConfigService
from appliance.http.access_log import access_logger
from appliance.http.admin import admin_blueprint
from appliance.http.buffer_admin import buffer_blueprint
from appliance.http.config_admin import config_blueprint
from appliance.http.edge import ASGIApp, EdgeLimits, EdgeMiddleware
from appliance.http.errors import install_error_handlers
from appliance.http.fast_path import InferenceFastPath
from appliance.http.inference import InferenceHandler, inference_blueprint
from appliance.http.listeners import listener_split
from appliance.http.lookup import lookup_blueprint
from appliance.http.openapi import build_document, encode_document, openapi_blueprint
from appliance.http.status import status_blueprint
from appliance.http.usage_facts import usage_hook
from appliance.readiness import Probe, ProbeFailed, Readiness
from appliance.routing.control import Control, OverrideBook
from appliance.routing.health_monitor import HealthMonitor
from appliance.routing.override_sync import OverrideSync
from appliance.routing.registry import Registry
from appliance.routing.retry_budget import RetryBudget
from appliance.routing.sqlite_override_store import SqliteOverrideStore
from appliance.runtime import Runtime
from appliance.settings import Settings
from appliance.settings.loader import LoadedConfig
from appliance.telemetry.config_metrics import ConfigMetrics
from appliance.telemetry.limit_metrics import BudgetLimits
from appliance.telemetry.logging import get_logger
from appliance.telemetry.loop_lag import LoopLagMonitor
from appliance.telemetry.metrics import Metrics
from appliance.telemetry.routing_metrics import RoutingMetrics
from appliance.telemetry.tracing import OtelTracing
from appliance.upstream.aiohttp_client import AiohttpBackendClient
from appliance.upstream.forwarder import Forwarder, RoutingParts
from appliance.upstream.h1.client import H1BackendClient
from appliance.upstream.ports import BackendClient
from appliance.usage.buffer_service import BufferService
from appliance.usage.ports import SinkError

_log = get_logger("routerctl.app")


@dataclass
class AppState:
    """Every long-lived component of one router process."""

    config: LoadedConfig
    runtime: Runtime
    metrics: Metrics
    config_metrics: ConfigMetrics  # the config service reports here; the file at start
    backends: BackendClient
    registry: Registry
    control: Control
    health: HealthMonitor
    store: ConfigStore
    audit: SqliteAuditStore
    limits: LimitParts
    usage: UsageParts
    tracing: OtelTracing | None = None  # None without [telemetry] otlp_endpoint: no spans
    config_service: ConfigService = field(init=False)
    readiness: Readiness = field(init=False)

    def current_runtime(self) -> Runtime:
        return self.runtime

    def swap_runtime(self, runtime: Runtime) -> None:
        self.runtime = runtime


@dataclass(frozen=True, slots=True)
class WorkerSlot:
    """This process is worker `index` of `[server] workers`, all on one port."""

    index: int
    started: Callable[[], None]  # startup succeeded: tell the supervisor
    reload_all: Callable[[], None]  # an admin reload applied here: reload every worker


@dataclass(frozen=True, slots=True)
class BuiltApp:
    quart: Quart
    asgi: ASGIApp
    state: AppState


def build_app(
    config: LoadedConfig, metrics: Metrics | None = None, worker: WorkerSlot | None = None
) -> BuiltApp:
    settings = config.settings
    metrics = metrics or Metrics()
    state_dir = Path(settings.state.dir)
    registry = Registry.from_settings(settings)
    book = OverrideBook(time.time)
    backends: BackendClient = (
        H1BackendClient(settings.backends, config.credentials)
        if settings.server.upstream_client == "routerctl"
        else AiohttpBackendClient(settings.backends, config.credentials)
    )
    store = build_store(settings, state_dir)
    audit = SqliteAuditStore(state_dir / "audit.sqlite")
    runtime = Runtime.from_settings(settings)
    usage = build_usage(settings, state_dir, metrics, runtime, config.kafka_password)
    usage.publishes = worker is None or worker.index == 0
    audit_sink = AuditSink(audit, forward=usage.forward_audit)
    limits = build_limits(settings, state_dir, metrics, audit_sink, os.environ)
    control = Control(
        registry=registry,
        book=book,
        store=store.overrides,
        audit=audit,
        wall=time.time,
        monotonic=time.monotonic,
    )
    state = AppState(
        config=config,
        runtime=runtime,
        metrics=metrics,
        config_metrics=ConfigMetrics(metrics.registry),
        backends=backends,
        registry=registry,
        control=control,
        health=HealthMonitor(registry, backends.probe, settings.routing, time.monotonic),
        store=store,
        audit=audit,
        limits=limits,
        usage=usage,
        tracing=(
            OtelTracing(settings.telemetry, BUILD.version)
            if settings.telemetry.otlp_endpoint
            else None
        ),
    )
    state.config_service = build_config_service(
        config,
        store,
        LiveConfig(
            registry=registry,
            backends=backends,
            health=state.health,
            current=state.current_runtime,
            swap=state.swap_runtime,
            environ=os.environ,
        ),
        state.config_metrics,
        audit_sink,
        control.load,
    )
    state.readiness = _readiness(settings, limits, usage, control, state.config_service)
    metrics.registry.register(BudgetLimits(lambda: state.current_runtime().settings))
    routing = RoutingParts(
        registry=registry,
        book=book,
        budget=RetryBudget(
            settings.routing.retry_budget_ratio, settings.routing.retry_budget_min_per_s
        ),
        observer=RoutingMetrics(metrics.registry, registry, time.monotonic),
        monotonic=time.monotonic,
        max_retries=settings.routing.max_retries,
    )
    app = Quart("routerctl", static_folder=None)  # no /static/<path> route: it serves no files
    _report_startup_failures_once(app)
    # "//" in a path must be a JSON 404, not werkzeug's HTML redirect to the merged path.
    app.url_map.merge_slashes = False
    app.config.update(
        # Bodies are bounded and timed by EdgeMiddleware; these are a second line.
        MAX_CONTENT_LENGTH=settings.server.max_body_bytes,
        BODY_TIMEOUT=settings.server.body_read_timeout_s,
        RESPONSE_TIMEOUT=None,
        PROVIDE_AUTOMATIC_OPTIONS=False,
        JSON_SORT_KEYS=False,
    )
    install_error_handlers(app)
    app.register_blueprint(status_blueprint(state.readiness))
    app.register_blueprint(openapi_blueprint(encode_document(build_document())))
    inference = InferenceHandler(
        state.current_runtime,
        Forwarder(state.backends, routing),
        state.limits.limiter,
        state.usage.recorder.admit,
    )
    app.register_blueprint(inference_blueprint(state.current_runtime))
    _register_admin(app, state, state_dir, worker)
    _serve_lifecycle(app, state, LoopLagMonitor(metrics.registry), worker)

    access_log = access_logger(settings.telemetry.access_log)
    edge = EdgeMiddleware(
        # The inference POST routes skip Quart's per-request machinery (see http/fast_path).
        InferenceFastPath(inference, app.asgi_app),  # type: ignore[arg-type]
        EdgeLimits(
            max_body_bytes=settings.server.max_body_bytes,
            body_read_timeout_s=settings.server.body_read_timeout_s,
            max_header_bytes=settings.server.max_header_bytes,
        ),
        state.metrics,
        access_log,
        usage_hook=usage_hook(state.usage.recorder.record),
        tracing=state.tracing,
        listeners=listener_split(settings.server),
    )
    app.asgi_app = edge  # type: ignore[assignment, method-assign]
    return BuiltApp(quart=app, asgi=app, state=state)  # type: ignore[arg-type]


def _serve_lifecycle(
    app: Quart, state: AppState, loop_lag: LoopLagMonitor, worker: WorkerSlot | None
) -> None:
    """Open every part while the app serves; with workers, follow the others' overrides."""
    sync = None
    overrides = state.store.overrides
    if worker is not None and isinstance(overrides, SqliteOverrideStore):
        sync = OverrideSync(overrides.version, state.control.load)

    @app.while_serving
    async def lifecycle() -> AsyncGenerator[None, None]:
        # Each part closes if it opened, in reverse order, also when a later one fails.
        async with AsyncExitStack() as parts:
            if state.tracing is not None:  # closed last: flushes the spans of the drain
                await state.tracing.open()
                parts.push_async_callback(state.tracing.close)
            for part in (state.usage, state.store, state.audit, state.config_service):
                await part.open()
                parts.push_async_callback(part.close)
            await state.control.load()
            await state.backends.open()
            parts.push_async_callback(state.backends.close)
            await state.limits.open()
            parts.push_async_callback(state.limits.close)
            state.health.start()
            parts.push_async_callback(state.health.stop)
            loop_lag.start()
            parts.callback(loop_lag.stop)
            if sync is not None:
                sync.start()
                parts.push_async_callback(sync.stop)
            if worker is not None:
                worker.started()
            yield


def _register_admin(
    app: Quart, state: AppState, state_dir: Path, worker: WorkerSlot | None
) -> None:
    """The admin routes (admin tokens) and the lookups (admin tokens and org keys)."""
    settings = state.config.settings
    admin_tokens = AdminTokens(settings.admin.tokens)
    app.register_blueprint(admin_blueprint(state.control, admin_tokens))
    buffer = BufferService(
        state.usage.outbox,
        state.usage.publisher,
        path=str(state_dir / "outbox.sqlite"),
        sink=settings.usage.sink,
        clock=time.time,
    )
    app.register_blueprint(buffer_blueprint(buffer, admin_tokens))
    reloaded = worker.reload_all if worker is not None else None
    app.register_blueprint(config_blueprint(state.config_service, admin_tokens, reloaded))
    lookup = lookup_blueprint(
        state.current_runtime, admin_tokens, state.audit, state.usage.outbox.lookup
    )
    app.register_blueprint(lookup)


def _readiness(
    settings: Settings,
    limits: LimitParts,
    usage: UsageParts,
    control: Control,
    config: ConfigService,
) -> Readiness:
    async def registry_probe() -> None:
        if not control.models():  # the live config's: with etcd, not the file's
            raise ProbeFailed("no models configured")
        if missing := control.unroutable_models():
            raise ProbeFailed(f"no routable backend for: {', '.join(sorted(missing))}")

    redis = limits.redis

    async def redis_probe() -> str:
        assert redis is not None
        nodes = await redis.nodes()
        states = "; ".join(str(node) for node in nodes)
        if not all(node.ok for node in nodes):
            raise ProbeFailed(f"{redis.mode}: {states}")
        return f"{redis.mode}: {states}"

    kafka = usage.kafka

    async def kafka_probe() -> None:
        assert kafka is not None
        try:
            await kafka.ping()
        except SinkError as exc:  # its message names the brokers and the error kind only
            raise ProbeFailed(str(exc)) from None

    probes: dict[str, Probe | None] = {
        "redis": redis_probe if redis is not None else None,
        "kafka": kafka_probe if kafka is not None else None,
        "config_service": config.probe if config.etcd is not None else None,
        "backend_registry": registry_probe,
        "usage_buffer": usage.check_buffer,
    }
    return Readiness(
        probes,
        required=settings.health.required,
        timeout_s=settings.health.readiness_timeout_s,
        cache_s=settings.health.cache_s,
        monotonic=time.monotonic,
    )


def _report_startup_failures_once(app: Quart) -> None:
    """A failed start is reported by `routerctl serve` as one line; Quart would log its
    traceback first. Exceptions in requests are still logged (by the error handlers)."""
    log_exception = app.log_exception

    def log(exc_info: Any) -> None:
        if has_request_context() or has_websocket_context():
            log_exception(exc_info)
        else:
            _log.error("startup_failed", error=str(exc_info[1]))

    app.log_exception = log  # type: ignore[method-assign, assignment]
