"""Prometheus metrics: one registry per app, children cached so the hot path skips label lookups."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.metrics import MetricWrapperBase

# Routes are a closed set so label cardinality stays bounded whatever clients send.
KNOWN_ROUTES = frozenset(
    {
        "/v1/chat/completions",
        "/v1/completions",
        "/v1/embeddings",
        "/v1/models",
        "/v1/status/healthz",
        "/v1/status/readyz",
        "/v1/admin/backends",
        "/v1/admin/overrides",
    }
)
_LATENCY_BUCKETS = (
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0,
)  # fmt: skip


class Metrics:
    """The router's metrics; `registry` is what the metrics listener exposes."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        self._requests = Counter(
            "router_http_requests_total",
            "HTTP requests answered, by route, method and status code.",
            ["route", "method", "status"],
            registry=self.registry,
        )
        self._latency = Histogram(
            "router_http_request_duration_seconds",
            "Time from request start to the last byte of the response (whole stream included).",
            ["route"],
            buckets=_LATENCY_BUCKETS,
            registry=self.registry,
        )
        self._children: dict[tuple[str, ...], MetricWrapperBase] = {}

    def observe_request(self, path: str, method: str, status: int, seconds: float) -> None:
        route = path if path in KNOWN_ROUTES else "other"
        key = (route, method, str(status))
        counter = self._children.get(key)
        if counter is None:
            counter = self._children[key] = self._requests.labels(*key)
        counter.inc()  # type: ignore[attr-defined]
        hkey = (route,)
        histogram = self._children.get(hkey)
        if histogram is None:
            histogram = self._children[hkey] = self._latency.labels(route)
        histogram.observe(seconds)  # type: ignore[attr-defined]

    def render(self) -> bytes:
        return generate_latest(self.registry)
