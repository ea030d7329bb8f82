"""`routerctl top`'s arithmetic: rates, error shares and quantiles from two scrapes."""

from __future__ import annotations

from prometheus_client import generate_latest

from appliance.routing.registry import Registry
from appliance.settings import Backend, Model, ModelRoute, Settings
from appliance.telemetry.metrics import Metrics
from appliance.telemetry.routing_metrics import RoutingMetrics
from routerctl.admin_client import BackendInfo
from routerctl.top import parse, view


def test_rates_errors_and_quantiles_over_the_interval() -> None:
    """Only what happened between the scrapes counts, per second; a backend's p50/p99 come
    from its latency histogram's buckets; 429s and 5xx are split out per org and model."""
    settings = Settings(
        backends=(Backend(id="b1", url="http://x/v1"),),
        models=(Model(name="m", backends=(ModelRoute(backend="b1"),)),),
    )
    metrics = Metrics()
    routing = RoutingMetrics(metrics.registry, Registry.from_settings(settings), lambda: 0.0)
    routing.attempt("b1", "PRIMARY", True, 0.5)  # before the interval: not counted
    before = parse(generate_latest(metrics.registry).decode(), at=10.0)
    for latency in (0.02,) * 8 + (0.2, 0.2):
        routing.attempt("b1", "PRIMARY", latency < 0.1, latency)
    for status in (200, 200, 429, 503):
        metrics.observe_model("acme", "m", status)
    after = parse(generate_latest(metrics.registry).decode(), at=12.0)
    admin = BackendInfo("b1", ["m"], 1.0, 1.0, "healthy", 3, 0, 20.0, 1, None)

    shown = view(before, after, [admin])
    (b1,) = shown.backends
    assert (b1.rps, b1.error_pct, b1.inflight, b1.ejections) == (5.0, 20.0, 3, 1)
    assert 10 < (b1.p50_ms or 0) <= 25  # in the 10-25 ms bucket
    assert 100 < (b1.p99_ms or 0) <= 250
    (m,) = shown.models
    assert (m.org, m.model, m.rps, m.rate_limited_ps, m.errors_ps) == ("acme", "m", 2.0, 0.5, 0.5)
