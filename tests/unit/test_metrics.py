"""Request and config metrics: bounded route labels, in-flight balance, config source switching."""

from __future__ import annotations

import re

import pytest
from prometheus_client import CollectorRegistry

from appliance.http.api_routes import OPERATIONS
from appliance.telemetry.config_metrics import SOURCES, ConfigMetrics
from appliance.telemetry.metrics import Metrics, route_label


def sample(registry: CollectorRegistry, name: str, **labels: str) -> float | None:
    return registry.get_sample_value(name, labels)


@pytest.mark.parametrize(
    ("path", "route"),
    [
        ("/v1/chat/completions", "/v1/chat/completions"),
        ("/v1/responses", "/v1/responses"),
        ("/v1/usage/3f2a9c", "/v1/usage/{request_id}"),
        ("/v1/admin/backends/b1/degrade", "/v1/admin/backends/{backend_id}/degrade"),
        ("/v1/admin/backends//degrade", "/v1/admin/other"),  # an empty id is no id
        ("/v1/admin/backends/b1/explode", "/v1/admin/other"),
        ("/v1/usage/a/b", "other"),
        ("/v1/admin/backends", "/v1/admin/backends"),
        ("/v1/chat/completions/extra", "other"),
        ("/../../etc/passwd", "other"),
    ],
)
def test_route_label_is_a_closed_set(path: str, route: str) -> None:
    """Paths map to known routes or templates, never to themselves when unknown."""
    assert route_label(path) == route


def test_every_api_operation_has_a_route_label_of_its_own() -> None:
    """Each path of the API (the OpenAPI document's) counts under its own template, so a new
    route cannot hide under `other` (parameter names aside)."""
    for operation in OPERATIONS:
        concrete = re.sub(r"\{[^}]+\}", "x1", operation.path)
        label = route_label(concrete)
        assert re.sub(r"\{[^}]+\}", "{}", label) == re.sub(r"\{[^}]+\}", "{}", operation.path), (
            operation.path,
            label,
        )


def test_inflight_rises_with_start_and_falls_with_each_end() -> None:
    """request_started and observe_request balance router_inflight_requests."""
    metrics = Metrics()
    metrics.request_started()
    metrics.request_started()
    assert sample(metrics.registry, "router_inflight_requests") == 2
    metrics.observe_request("/v1/models", "GET", 200, 0.001)
    assert sample(metrics.registry, "router_inflight_requests") == 1


def test_forwarded_overhead_is_never_negative_and_ttft_is_per_model() -> None:
    """Clock noise cannot make overhead negative; TTFT is observed only when given."""
    metrics = Metrics()
    metrics.observe_forwarded("chat", -0.0001, None)
    metrics.observe_forwarded("chat", 0.002, 0.5)
    registry = metrics.registry
    assert sample(registry, "router_overhead_seconds_count") == 2
    assert sample(registry, "router_overhead_seconds_sum") == pytest.approx(0.002)
    assert sample(registry, "router_time_to_first_token_seconds_count", model="chat") == 1


def test_config_metrics_start_nowhere_and_follow_applies() -> None:
    """applied() sets revision, time and source; rejected() only counts."""
    registry = CollectorRegistry()
    config = ConfigMetrics(registry)
    applies = "router_config_applies_total"
    assert sample(registry, applies, result="rejected") == 0
    config.applied(0, "file", 1000.0)
    config.applied(42, "etcd", 2000.0)
    config.rejected()
    assert sample(registry, "router_config_revision") == 42
    assert sample(registry, "router_config_last_apply_timestamp_seconds") == 2000.0
    assert sample(registry, applies, result="applied") == 2
    assert sample(registry, applies, result="rejected") == 1
    config.source("cache")
    sources = {s: sample(registry, "router_config_source", source=s) for s in SOURCES}
    assert sources == {"file": 0, "etcd": 0, "cache": 1}


def test_config_source_refuses_unknown_names() -> None:
    """A typo in a source name is a bug to surface, not a new label value."""
    with pytest.raises(ValueError, match="unknown config source"):
        ConfigMetrics(CollectorRegistry()).source("zookeeper")


def test_unknown_methods_share_one_label_value() -> None:
    """A client inventing HTTP methods cannot add series."""
    metrics = Metrics()
    for method in ("BREW", "WHEN", "GET"):
        metrics.request_started()
        metrics.observe_request("/v1/models", method, 405, 0.001)
    labels = {"route": "/v1/models", "status": "405"}
    assert sample(metrics.registry, "router_http_requests_total", method="other", **labels) == 2
    assert sample(metrics.registry, "router_http_requests_total", method="GET", **labels) == 1
