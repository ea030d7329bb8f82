"""Prometheus metrics: one registry per app, children cached so the hot path skips label lookups.

Each process has its own registry. With `[server] workers` > 1 every worker keeps its own
counts and the supervisor merges them at each scrape (telemetry/metrics_merge), so the hot
path never shares memory or takes a lock to count.
"""

from __future__ import annotations

from typing import Generic, TypeVar

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.metrics import MetricWrapperBase

from appliance.build import BUILD

# Routes are a closed set so label cardinality stays bounded whatever clients send: every
# operation of the API (http/api_routes.py; tests/unit/test_metrics.py keeps the two equal).
KNOWN_ROUTES = frozenset(
    {
        "/v1/chat/completions",
        "/v1/completions",
        "/v1/embeddings",
        "/v1/responses",
        "/v1/models",
        "/v1/status/healthz",
        "/v1/status/readyz",
        "/v1/openapi.json",
        "/v1/admin/backends",
        "/v1/admin/overrides",
        "/v1/admin/audit",
        "/v1/admin/buffer",
        "/v1/admin/buffer/replay",
        "/v1/admin/config/reload",
    }
)
# Clients may send any method token; unknown ones share one label value.
_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
# Paths with an id in them count under their template, never under the id; `{…}` is one
# path segment.
_TEMPLATES = (
    "/v1/usage/{request_id}",
    "/v1/models/{model}",
    "/v1/admin/backends/{backend_id}/degrade",
    "/v1/admin/backends/{backend_id}/drain",
    "/v1/admin/backends/{backend_id}/restore",
    "/v1/admin/overrides/{override_id}",
)
_BY_SEGMENTS = tuple((template, template.split("/")) for template in _TEMPLATES)
_LATENCY_BUCKETS = (
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0,
)  # fmt: skip
_TTFT_BUCKETS = (
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
)  # fmt: skip
# The performance budget is ~1 ms added per request: resolve below it.
_OVERHEAD_BUCKETS = (
    0.0001, 0.00025, 0.0005, 0.001, 0.0015, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0,
)  # fmt: skip


_M = TypeVar("_M", bound=MetricWrapperBase)


class Children(Generic[_M]):
    """A labelled metric's children, each looked up once: `.labels()` validates the values
    and takes a lock on every call. Label values must be a bounded set (configured ids)."""

    __slots__ = ("_found", "_metric")

    def __init__(self, metric: _M) -> None:
        self._metric = metric
        self._found: dict[tuple[str, ...], _M] = {}

    def __call__(self, *values: str) -> _M:
        child = self._found.get(values)
        if child is None:
            child = self._found[values] = self._metric.labels(*values)
        return child


def _status_class(status: int) -> str:
    return "429" if status == 429 else f"{status // 100}xx"


def route_label(path: str) -> str:
    """The bounded `route` label of a request path."""
    if path in KNOWN_ROUTES:
        return path
    segments = path.split("/")
    for template, pattern in _BY_SEGMENTS:
        if len(pattern) == len(segments) and all(
            want == got or (want.startswith("{") and got)
            for want, got in zip(pattern, segments, strict=True)
        ):
            return template
    return "/v1/admin/other" if path.startswith("/v1/admin/") else "other"


class Metrics:
    """The router's request metrics; `registry` is what the metrics listener exposes."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        self._requests = Children(
            Counter(
                "router_http_requests_total",
                "HTTP requests answered, by route, method and status code.",
                ["route", "method", "status"],
                registry=self.registry,
            )
        )
        self._latency = Children(
            Histogram(
                "router_http_request_duration_seconds",
                "Time from request start to the last byte of the response (whole stream included).",
                ["route"],
                buckets=_LATENCY_BUCKETS,
                registry=self.registry,
            )
        )
        self._inflight = Gauge(
            "router_inflight_requests",
            "HTTP requests being served (streams until their last byte).",
            registry=self.registry,
        )
        self._ttft = Children(
            Histogram(
                "router_time_to_first_token_seconds",
                "Streams: time from request start to the first byte of the stream at the client.",
                ["model"],
                buckets=_TTFT_BUCKETS,
                registry=self.registry,
            )
        )
        self._by_model = Children(
            Counter(
                "router_model_requests_total",
                "Inference requests for a configured model, by org, model and status class "
                "(2xx, 429, 4xx, 5xx).",
                ["org", "model", "status"],
                registry=self.registry,
            )
        )
        self._overhead = Histogram(
            "router_overhead_seconds",
            "Time spent in the router, backend time excluded (streams: up to the first byte).",
            buckets=_OVERHEAD_BUCKETS,
            registry=self.registry,
        )
        Gauge(
            "router_build_info",
            "Always 1; the labels say which build is running.",
            ["version", "commit"],
            registry=self.registry,
        ).labels(BUILD.version, BUILD.commit).set(1)

    def request_started(self) -> None:
        self._inflight.inc()

    def observe_request(self, path: str, method: str, status: int, seconds: float) -> None:
        """A request ended (each request exactly once, after `request_started`)."""
        self._inflight.dec()
        route = route_label(path)
        self._requests(route, method if method in _METHODS else "other", str(status)).inc()
        self._latency(route).observe(seconds)

    def observe_model(self, org: str, model: str, status: int) -> None:
        """An inference request for a configured model ended (each once)."""
        self._by_model(org, model, _status_class(status)).inc()

    def observe_forwarded(
        self, model: str, overhead_s: float | None, first_token_s: float | None
    ) -> None:
        """A request a backend served; `model` must be a configured one (bounded label)."""
        if overhead_s is not None:
            self._overhead.observe(max(overhead_s, 0.0))
        if first_token_s is not None:
            self._ttft(model).observe(first_token_s)

    def render(self) -> bytes:
        return generate_latest(self.registry)
