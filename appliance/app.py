"""Composition root: builds every component from settings and owns their lifecycle.

This is the only module that chooses implementations and wires them together.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncGenerator
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
from quart import Quart
from redis.asyncio import BlockingConnectionPool, Redis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff

from appliance.audit.events import AuditEvent, encode_event
from appliance.audit.sink import AuditSink
from appliance.audit.sqlite_store import SqliteAuditStore
from appliance.auth.admin import AdminTokens
from appliance.http.admin import admin_blueprint
from appliance.http.context import RequestContext
from appliance.http.edge import AccessLog, ASGIApp, EdgeLimits, EdgeMiddleware
from appliance.http.errors import install_error_handlers
from appliance.http.inference import inference_blueprint
from appliance.http.lookup import lookup_blueprint
from appliance.http.status import status_blueprint
from appliance.http.usage_facts import facts_from
from appliance.limits.budget_gate import BudgetGate
from appliance.limits.budget_service import HttpBudgetAuthority
from appliance.limits.concurrency import LeaseKeeper, MemoryConcurrencyStore, RedisConcurrencyStore
from appliance.limits.limiter import Limiter, LimiterStores, background
from appliance.limits.memory_store import MemoryBucketStore
from appliance.limits.ports import LimiterBackendError
from appliance.limits.redis_store import RedisBucketStore
from appliance.limits.spend_redis import RedisSpendStore
from appliance.limits.spend_sqlite import SqliteSpendStore
from appliance.routing.control import Control, OverrideBook
from appliance.routing.health_monitor import HealthMonitor
from appliance.routing.registry import Registry
from appliance.routing.retry_budget import RetryBudget
from appliance.routing.sqlite_override_store import SqliteOverrideStore
from appliance.runtime import Runtime
from appliance.settings import Settings
from appliance.settings_loader import LoadedConfig
from appliance.telemetry.limit_metrics import LimitMetrics
from appliance.telemetry.logging import get_logger
from appliance.telemetry.metrics import Metrics
from appliance.telemetry.routing_metrics import RoutingMetrics
from appliance.telemetry.usage_metrics import UsageMetrics
from appliance.upstream.client import BackendClient
from appliance.upstream.forwarder import Forwarder, RoutingParts
from appliance.usage.file_sink import FileSink, NoneSink
from appliance.usage.kafka_sink import KafkaSink
from appliance.usage.ports import Topic, UsageSink
from appliance.usage.publisher import Publisher
from appliance.usage.recorder import UsageRecorder
from appliance.usage.sqlite_outbox import SqliteOutbox
from appliance.usage.state_lock import hold_shared

_log = get_logger("routerctl.app")


@dataclass
class AppState:
    """Every long-lived component of one router process."""

    config: LoadedConfig
    runtime: Runtime
    metrics: Metrics
    backends: BackendClient
    registry: Registry
    control: Control
    health: HealthMonitor
    overrides_store: SqliteOverrideStore
    audit: SqliteAuditStore
    limits: LimitParts
    usage: UsageParts

    def current_runtime(self) -> Runtime:
        return self.runtime


@dataclass(frozen=True, slots=True)
class BuiltApp:
    quart: Quart
    asgi: ASGIApp
    state: AppState


def build_app(config: LoadedConfig, metrics: Metrics | None = None) -> BuiltApp:
    settings = config.settings
    metrics = metrics or Metrics()
    state_dir = Path(settings.state.dir)
    registry = Registry.from_settings(settings)
    book = OverrideBook(time.time)
    backends = BackendClient(settings.backends, config.credentials)
    overrides_store = SqliteOverrideStore(state_dir / "overrides.sqlite")
    audit = SqliteAuditStore(state_dir / "audit.sqlite")
    runtime = Runtime.from_settings(settings)
    usage = _usage(settings, state_dir, metrics, runtime)
    audit_sink = AuditSink(audit, forward=usage.forward_audit)
    state = AppState(
        config=config,
        runtime=runtime,
        metrics=metrics,
        backends=backends,
        registry=registry,
        control=Control(
            registry=registry,
            book=book,
            store=overrides_store,
            audit=audit,
            wall=time.time,
            monotonic=time.monotonic,
        ),
        health=HealthMonitor(registry, backends.probe, settings.routing, time.monotonic),
        overrides_store=overrides_store,
        audit=audit,
        limits=_limits(settings, state_dir, metrics, audit_sink),
        usage=usage,
    )
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
    app = Quart("routerctl")
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
    app.register_blueprint(status_blueprint())
    app.register_blueprint(
        inference_blueprint(
            state.current_runtime,
            Forwarder(state.backends, routing),
            state.limits.limiter,
            state.usage.recorder.full,
        )
    )
    admin_tokens = AdminTokens(settings.admin.tokens)
    app.register_blueprint(admin_blueprint(state.control, admin_tokens))
    app.register_blueprint(
        lookup_blueprint(state.current_runtime, admin_tokens, state.audit, usage.outbox.lookup)
    )

    @app.while_serving
    async def lifecycle() -> AsyncGenerator[None, None]:
        await state.usage.open()
        await state.overrides_store.open()
        await state.audit.open()
        await state.control.load()
        await state.backends.open()
        await state.limits.open()
        state.health.start()
        yield
        await state.health.stop()
        await state.limits.close()
        await state.backends.close()
        await state.audit.close()
        await state.overrides_store.close()
        await state.usage.close()

    access_log = _access_logger(settings.telemetry.access_log)
    edge = EdgeMiddleware(
        app.asgi_app,  # type: ignore[arg-type]
        EdgeLimits(
            max_body_bytes=settings.server.max_body_bytes,
            body_read_timeout_s=settings.server.body_read_timeout_s,
            max_header_bytes=settings.server.max_header_bytes,
        ),
        state.metrics,
        access_log,
        usage_hook=lambda context: state.usage.recorder.record(facts_from(context)),
    )
    app.asgi_app = edge  # type: ignore[assignment, method-assign]
    return BuiltApp(quart=app, asgi=app, state=state)  # type: ignore[arg-type]


@dataclass
class LimitParts:
    """The limiter and what it owns: stores, clients, background tasks."""

    limiter: Limiter
    sink: AuditSink
    spend: SqliteSpendStore | RedisSpendStore
    redis: Redis | None = None
    buckets: RedisBucketStore | None = None
    keeper: LeaseKeeper | None = None
    authority: HttpBudgetAuthority | None = None
    tasks: set[asyncio.Task[None]] = field(default_factory=set)

    async def open(self) -> None:
        if isinstance(self.spend, SqliteSpendStore):
            await self.spend.open()
        if self.buckets is not None:
            try:
                await self.buckets.open()
            except LimiterBackendError as exc:
                # Redis down at start: serve in the failure mode; the store retries itself.
                _log.warning("limiter_store_unavailable_at_start", error=str(exc))
        if self.keeper is not None:
            self.keeper.start()

    async def close(self) -> None:
        if self.keeper is not None:
            await self.keeper.stop()
        if self.tasks:
            await asyncio.gather(*self.tasks, return_exceptions=True)
        await self.sink.drain()
        if self.authority is not None:
            await self.authority.close()
        if isinstance(self.spend, SqliteSpendStore):
            await self.spend.close()
        if self.redis is not None:
            await self.redis.aclose()


def _limits(settings: Settings, state_dir: Path, metrics: Metrics, sink: AuditSink) -> LimitParts:
    """Embedded (in-process buckets, SQLite spend) or shared (Redis), chosen here only."""
    limits = settings.limits
    local_buckets, local_slots = MemoryBucketStore(), MemoryConcurrencyStore()
    tasks: set[asyncio.Task[None]] = set()
    redis: Redis | None = None
    buckets: RedisBucketStore | None = None
    keeper: LeaseKeeper | None = None
    spend: SqliteSpendStore | RedisSpendStore
    if settings.state.redis_url:
        # A blocking pool queues callers for a connection (each call is still bounded by
        # redis_timeout_s) instead of failing past max_connections.
        pool = BlockingConnectionPool.from_url(
            settings.state.redis_url,
            max_connections=64,
            timeout=2.0,
            # Each store call is bounded by redis_timeout_s; socket timeouts only clean up.
            socket_timeout=0.5,
            socket_connect_timeout=0.5,
            health_check_interval=10,
            # One immediate retry replaces a stale pooled connection after a Redis restart.
            retry=Retry(NoBackoff(), 1),
        )
        redis = Redis.from_pool(pool)
        buckets = RedisBucketStore(redis, timeout_s=limits.redis_timeout_s)
        slots = RedisConcurrencyStore(
            redis, lease_s=limits.concurrency_lease_s, timeout_s=limits.redis_timeout_s
        )
        keeper = LeaseKeeper(slots)
        spend = RedisSpendStore(redis, timeout_s=limits.redis_timeout_s)
        stores = LimiterStores(buckets, slots, local_buckets, local_slots, shared=True)
    else:
        spend = SqliteSpendStore(state_dir / "spend.sqlite")
        stores = LimiterStores(local_buckets, local_slots, local_buckets, local_slots, shared=False)
    authority = None
    if settings.budget.service_url:
        authority = HttpBudgetAuthority(
            aiohttp.ClientSession,
            settings.budget.service_url,
            ttl_s=settings.budget.cache_ttl_s,
            timeout_s=settings.budget.timeout_s,
        )
    limiter = Limiter(
        stores=stores,
        budgets=BudgetGate(spend, authority, time.time, time.monotonic),
        fail_open=settings.state.redis_failure_mode == "open",
        expected_replicas=limits.expected_replicas,
        observer=LimitMetrics(metrics.registry),
        audit=sink,
        spawn=background(tasks),
        wall=time.time,
        monotonic=time.monotonic,
    )
    return LimitParts(limiter, sink, spend, redis, buckets, keeper, authority, tasks)


_MB = 1024 * 1024


@dataclass
class UsageParts:
    """The outbox, its publisher and the recorder the edge calls for every request."""

    outbox: SqliteOutbox
    publisher: Publisher
    recorder: UsageRecorder
    state_dir: Path
    audit_to_outbox: bool
    lock: ExitStack = field(default_factory=ExitStack)

    async def open(self) -> None:
        # A shared lock: several workers may serve one state dir; `buffer replay` needs it
        # exclusive, so it refuses to run against a live router.
        self.state_dir.mkdir(parents=True, exist_ok=True)
        self.lock.enter_context(hold_shared(self.state_dir))
        await self.outbox.open()
        self.publisher.start()

    async def close(self) -> None:
        await self.publisher.stop()
        await self.outbox.close()
        self.lock.close()

    async def forward_audit(self, event: AuditEvent) -> None:
        """Audit events go to the Kafka audit topic through the outbox, like usage."""
        if self.audit_to_outbox:
            await self.recorder.append("audit", event.org or "", event.id, encode_event(event))


def _usage(settings: Settings, state_dir: Path, metrics: Metrics, runtime: Runtime) -> UsageParts:
    u = settings.usage
    holder: list[UsageRecorder] = []
    observer = UsageMetrics(
        metrics.registry, on_buffer=lambda n: setattr(holder[0], "buffered_bytes", n)
    )
    outbox = SqliteOutbox(
        state_dir / "outbox.sqlite",
        int(u.max_buffer_mb * _MB),
        u.on_full,
        # No extra wait: appends arriving while a commit runs already share the next one.
        batch_window_s=0,
        on_drop=observer.dropped,
    )
    sinks: dict[Topic, UsageSink]
    if u.sink == "kafka":
        kafka = KafkaSink(
            u.kafka_bootstrap,
            {"usage": u.kafka_topic, "audit": u.kafka_audit_topic},
            acks=u.kafka_acks,
            compression=None if u.kafka_compression == "none" else u.kafka_compression,
        )
        sinks = {"usage": kafka, "audit": kafka}
    elif u.sink == "file":
        path = Path(u.file_path) if u.file_path else state_dir / "usage.jsonl"
        sinks = {
            "usage": FileSink(path, int(u.file_max_mb * _MB), u.file_keep),
            "audit": NoneSink(),
        }
    else:
        sinks = {"usage": NoneSink(), "audit": NoneSink()}
    publisher = Publisher(outbox, sinks, u.batch_max, observer=observer)
    recorder = UsageRecorder(
        outbox=outbox,
        prices=lambda model: _prices(runtime, model),
        notify=publisher.notify,
        observer=observer,
        max_bytes=int(u.max_buffer_mb * _MB),
        reject_when_full=u.on_full == "reject",
    )
    holder.append(recorder)
    return UsageParts(outbox, publisher, recorder, state_dir, audit_to_outbox=u.sink == "kafka")


def _prices(runtime: Runtime, model: str | None) -> tuple[float, float]:
    route = runtime.routes.get(model) if model else None
    return route.prices if route is not None else (0.0, 0.0)


def _access_logger(enabled: bool) -> AccessLog:
    log = get_logger("routerctl.access")

    def skip(_context: RequestContext) -> None:
        return None

    def write(context: RequestContext) -> None:
        log.info(
            "request",
            request_id=context.request_id,
            method=context.method,
            path=context.path,
            status=context.status,
            duration_ms=round(context.duration_s * 1000, 3),
            org=context.org,
            key_id=context.key_id,
            model=context.model,
            backend=context.backend,
            stream=context.stream,
            prompt_tokens=context.prompt_tokens,
            completion_tokens=context.completion_tokens,
            outcome=context.outcome,
        )

    return write if enabled else skip
