"""Usage pipeline metrics: records written, published, buffered; tokens and cost."""

from __future__ import annotations

from collections.abc import Callable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from appliance.telemetry.metrics import Children

_PUBLISH_BUCKETS = (0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 10.0, 30.0)


class UsageMetrics:
    """Implements UsageObserver and PublishObserver."""

    def __init__(
        self, registry: CollectorRegistry, on_buffer: Callable[[int], None] | None = None
    ) -> None:
        self._on_buffer = on_buffer
        self._records = Counter(
            "router_usage_records_total",
            "Usage records by where they went and how: written to the outbox, published, dropped.",
            ["sink", "result"],
            registry=registry,
        )
        self._buffer_records = Gauge(
            "router_usage_buffer_records", "Records in the outbox.", registry=registry
        )
        self._buffer_bytes = Gauge(
            "router_usage_buffer_bytes", "Bytes of records in the outbox.", registry=registry
        )
        self._oldest = Gauge(
            "router_usage_buffer_oldest_seconds",
            "Age of the oldest record not yet published.",
            registry=registry,
        )
        self._latency = Histogram(
            "router_usage_publish_latency_seconds",
            "Time to publish one batch.",
            ["sink"],
            buckets=_PUBLISH_BUCKETS,
            registry=registry,
        )
        self._held = Gauge(
            "router_usage_records_held",
            "Records waiting in memory because the outbox could not be written (disk full).",
            registry=registry,
        )
        self._resent = Counter(
            "router_usage_resent_records_total",
            "Records published again after an attempt that ended without their"
            " acknowledgement (each may be a duplicate downstream).",
            registry=registry,
        )
        self._state_free = Gauge(
            "router_state_free_bytes",
            "Free bytes on the state dir's filesystem (last measurement).",
            registry=registry,
        )
        self._failures = Counter(
            "router_usage_publish_failures_total",
            "Batches a sink did not acknowledge (retried).",
            ["sink", "kind"],
            registry=registry,
        )
        self._tokens = Children(
            Counter(
                "router_tokens_total", "Tokens used.", ["org", "model", "type"], registry=registry
            )
        )
        self._cost = Children(
            Counter("router_cost_usd_total", "Cost in USD.", ["org", "model"], registry=registry)
        )
        self._written = self._records.labels("outbox", "written")

    def recorded(
        self, org: str | None, model: str | None, prompt: int, completion: int, usd: float
    ) -> None:
        self._written.inc()
        org, model = org or "", model or ""
        if prompt:
            self._tokens(org, model, "input").inc(prompt)
        if completion:
            self._tokens(org, model, "output").inc(completion)
        if usd:
            self._cost(org, model).inc(usd)

    def record_failed(self, reason: str) -> None:
        self._records.labels("outbox", reason).inc()

    def held(self, records: int) -> None:
        self._held.set(records)

    def resent(self, sink: str, n: int) -> None:
        del sink  # one sink per topic in practice; a label would add nothing but series
        self._resent.inc(n)

    def state_free(self, free_bytes: int) -> None:
        self._state_free.set(free_bytes)

    def dropped(self, count: int) -> None:
        self._records.labels("outbox", "dropped_oldest").inc(count)

    def published(self, sink: str, n: int, latency_s: float) -> None:
        self._records.labels(sink, "published").inc(n)
        self._latency.labels(sink).observe(latency_s)

    def failed(self, sink: str, error_kind: str) -> None:
        self._failures.labels(sink, error_kind).inc()

    def buffer(self, records: int, bytes: int, oldest_age_s: float) -> None:
        self._buffer_records.set(records)
        self._buffer_bytes.set(bytes)
        self._oldest.set(oldest_age_s)
        if self._on_buffer is not None:
            self._on_buffer(bytes)
