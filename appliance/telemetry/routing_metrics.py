"""Routing metrics: per-attempt counters and histograms, live backend state read at scrape."""

from __future__ import annotations

from collections.abc import Callable, Iterator

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from appliance.routing.registry import Registry
from appliance.telemetry.metrics import Children

_LATENCY_BUCKETS = (
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
)  # fmt: skip
_DECISION_BUCKETS = (0.00001, 0.000025, 0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.005)


class RoutingMetrics:
    """Implements RoutingObserver; gauges come from the registry when Prometheus scrapes."""

    def __init__(
        self, registry: CollectorRegistry, routing: Registry, monotonic: Callable[[], float]
    ) -> None:
        self._requests = Children(
            Counter(
                "router_requests_total",
                "Attempts sent to backends, by backend, decision type and success.",
                ["backend_id", "decision_type", "success"],
                registry=registry,
            )
        )
        self._by_backend = Children(
            Counter(
                "router_requests_by_backend_total",
                "Attempts sent to each backend.",
                ["backend_id"],
                registry=registry,
            )
        )
        self._latency = Children(
            Histogram(
                "router_backend_latency_seconds",
                "Backend latency per attempt: the whole answer for JSON, the whole stream for "
                "streams.",
                ["backend_id"],
                buckets=_LATENCY_BUCKETS,
                registry=registry,
            )
        )
        self._failovers = Counter(
            "router_failover_total",
            "Retries on another backend, by the failed backend, the next one and the reason.",
            ["from", "to", "reason"],
            registry=registry,
        )
        self._ejections = Counter(
            "router_backend_ejections_total",
            "Outlier ejections after consecutive failures.",
            ["backend_id"],
            registry=registry,
        )
        self._decisions = Histogram(
            "router_decision_latency_seconds",
            "Time to choose a backend.",
            buckets=_DECISION_BUCKETS,
            registry=registry,
        )
        registry.register(_LiveState(routing, monotonic))

    def attempt(self, backend_id: str, kind: str, success: bool, latency_s: float) -> None:
        self._requests(backend_id, kind, "true" if success else "false").inc()
        self._by_backend(backend_id).inc()
        self._latency(backend_id).observe(latency_s)

    def failover(self, from_backend: str, to_backend: str, reason: str) -> None:
        self._failovers.labels(from_backend, to_backend, reason).inc()

    def decision(self, seconds: float) -> None:
        self._decisions.observe(seconds)

    def ejected(self, backend_id: str) -> None:
        self._ejections.labels(backend_id).inc()


class _LiveState(Collector):
    def __init__(self, routing: Registry, monotonic: Callable[[], float]) -> None:
        self._routing = routing
        self._monotonic = monotonic

    def collect(self) -> Iterator[GaugeMetricFamily]:
        now = self._monotonic()
        health = GaugeMetricFamily(
            "router_backend_health_status",
            "1 when the backend takes traffic (healthy or not yet probed), 0 when not.",
            labels=["backend_id", "state"],
        )
        inflight = GaugeMetricFamily(
            "router_backend_inflight", "Requests in flight per backend.", labels=["backend_id"]
        )
        for state in self._routing.backends.values():
            health.add_metric(
                [state.id, state.health(now).value], 1.0 if state.routable(now) else 0.0
            )
            inflight.add_metric([state.id], float(state.inflight))
        panic = GaugeMetricFamily(
            "router_panic_mode",
            "1 while no backend of the model is routable and all are used anyway.",
            labels=["model"],
        )
        for model in self._routing.model_backends:
            panic.add_metric([model], 1.0 if self._routing.panic(model, now) else 0.0)
        yield health
        yield inflight
        yield panic
