"""Merging the Prometheus text of several workers into one exposition, on real registries."""

from __future__ import annotations

from pathlib import Path

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.metrics_core import Metric
from prometheus_client.parser import text_string_to_metric_families

from appliance.routing.registry import BackendState, Registry
from appliance.settings import RoutingSettings
from appliance.telemetry.metrics import Metrics
from appliance.telemetry.metrics_merge import SUMMED_GAUGES, cumulative_only, merge_expositions
from appliance.telemetry.routing_metrics import RoutingMetrics
from appliance.telemetry.usage_metrics import UsageMetrics

DOC = Path(__file__).resolve().parents[2] / "docs" / "metrics.md"
ODD_ORG = 'a "quoted"\norg\\with} a backslash, a \r and a \u2028 line separator'


class Worker:
    """One worker's registries, as a worker process builds them."""

    def __init__(self) -> None:
        self.metrics = Metrics()
        self.usage = UsageMetrics(self.metrics.registry)
        self.routing = Registry(
            policy=RoutingSettings(),
            backends={"b1": BackendState(id="b1", weight=1.0, max_concurrency=0, models=("m",))},
            model_backends={"m": ("b1",)},
        )
        self.routing_metrics = RoutingMetrics(self.metrics.registry, self.routing, lambda: 0.0)

    def text(self) -> str:
        return generate_latest(self.metrics.registry).decode()


def value(families: dict[str, Metric], name: str, **labels: str) -> float:
    """The one sample `name{labels}` across the parsed families."""
    found = [
        s.value
        for f in families.values()
        for s in f.samples
        if (s.name, s.labels) == (name, labels)
    ]
    assert len(found) == 1, (name, labels, found)
    return float(found[0])


def parse(text: bytes | str) -> dict[str, Metric]:
    raw = text.decode() if isinstance(text, bytes) else text
    return {f.name: f for f in text_string_to_metric_families(raw)}


def two_workers() -> tuple[Worker, Worker]:
    one, two = Worker(), Worker()
    for _ in range(3):
        one.metrics.request_started()
        one.metrics.observe_request("/v1/models", "GET", 200, 0.003)
    one.metrics.request_started()  # still in flight
    two.metrics.request_started()
    two.metrics.request_started()
    two.metrics.observe_request("/v1/models", "GET", 200, 0.2)
    one.usage.recorded("acme", "m", 10, 5, 0.25)
    two.usage.recorded("acme", "m", 7, 0, 0.5)
    one.usage.buffer(40, 4000, 3.0)
    two.usage.buffer(42, 4200, 2.0)
    one.routing.begin("b1")
    two.routing.begin("b1")
    two.routing.begin("b1")
    return one, two


def test_counters_and_histogram_buckets_sum_exactly() -> None:
    """Counter totals, every histogram bucket, _count and _sum are the sum over workers."""
    one, two = two_workers()
    merged = parse(merge_expositions([one.text(), two.text()]))
    labels = {"route": "/v1/models", "method": "GET", "status": "200"}
    assert value(merged, "router_http_requests_total", **labels) == 4
    hist = "router_http_request_duration_seconds"
    assert value(merged, f"{hist}_bucket", route="/v1/models", le="0.005") == 3
    assert value(merged, f"{hist}_bucket", route="/v1/models", le="0.25") == 4
    assert value(merged, f"{hist}_bucket", route="/v1/models", le="+Inf") == 4
    assert value(merged, f"{hist}_count", route="/v1/models") == 4
    assert value(merged, f"{hist}_sum", route="/v1/models") == 3 * 0.003 + 0.2
    assert value(merged, "router_tokens_total", org="acme", model="m", type="input") == 17
    assert value(merged, "router_cost_usd_total", org="acme", model="m") == 0.75


def test_per_process_gauges_sum_and_shared_gauges_take_the_max() -> None:
    """In-flight gauges add up over workers; the outbox depth all workers share is the max."""
    one, two = two_workers()
    merged = parse(merge_expositions([one.text(), two.text()]))
    assert {"router_inflight_requests", "router_backend_inflight"} <= SUMMED_GAUGES
    assert value(merged, "router_inflight_requests") == 2
    assert value(merged, "router_backend_inflight", backend_id="b1") == 3
    assert value(merged, "router_usage_buffer_records") == 42
    assert value(merged, "router_usage_buffer_oldest_seconds") == 3
    assert value(merged, "router_build_info", **_build_labels(merged)) == 1


def _build_labels(families: dict[str, Metric]) -> dict[str, str]:
    (sample,) = families["router_build_info"].samples
    return dict(sample.labels)


def test_created_is_the_earliest_worker_start() -> None:
    """A counter's or histogram's _created is the earliest of the workers' values, not a sum."""
    texts = [_stamped_text(created) for created in (1700000000.5, 1600000000.25)]
    merged = parse(merge_expositions(texts))
    assert merged["jobs_created"].type == "gauge"
    assert value(merged, "jobs_created", kind="x") == 1600000000.25
    assert value(merged, "wait_seconds_created") == 1600000000.25
    assert value(merged, "jobs_total", kind="x") == 2
    assert value(merged, "wait_seconds_count") == 2
    one, two = two_workers()
    created = "router_http_request_duration_seconds_created"
    earliest = min(value(parse(w.text()), created, route="/v1/models") for w in (one, two))
    merged = parse(merge_expositions([two.text(), one.text()]))
    assert value(merged, created, route="/v1/models") == earliest


def _stamped_text(created: float) -> str:
    """What generate_latest writes for a counter and a histogram started at `created`."""
    registry = CollectorRegistry()

    class Fixed:
        def collect(self) -> list[Metric]:
            jobs = Metric("jobs", "Jobs done.", "counter")
            jobs.add_sample("jobs_total", {"kind": "x"}, 1.0)
            jobs.add_sample("jobs_created", {"kind": "x"}, created)
            wait = Metric("wait_seconds", "Waits.", "histogram")
            wait.add_sample("wait_seconds_bucket", {"le": "+Inf"}, 1.0)
            wait.add_sample("wait_seconds_count", {}, 1.0)
            wait.add_sample("wait_seconds_sum", {}, 0.5)
            wait.add_sample("wait_seconds_created", {}, created)
            return [jobs, wait]

    registry.register(Fixed())
    return generate_latest(registry).decode()


def test_label_values_with_quotes_newlines_and_backslashes_survive() -> None:
    """Escaped label values parse back to the same string and merge as one series."""
    one, two = two_workers()
    one.usage.recorded(ODD_ORG, "m", 1, 0, 0.0)
    two.usage.recorded(ODD_ORG, "m", 2, 0, 0.0)
    merged = parse(merge_expositions([one.text(), two.text()]))
    assert value(merged, "router_tokens_total", org=ODD_ORG, model="m", type="input") == 3


def test_a_family_only_one_worker_has_is_published() -> None:
    """A metric family one worker lacks is published from the worker that has it."""
    one, _ = two_workers()
    lone = CollectorRegistry()
    UsageMetrics(lone)  # no Metrics: no router_http_requests_total here
    merged = parse(merge_expositions([generate_latest(lone).decode(), one.text()]))
    labels = {"route": "/v1/models", "method": "GET", "status": "200"}
    assert value(merged, "router_http_requests_total", **labels) == 3
    assert value(merged, "router_inflight_requests") == 1
    assert value(merged, "router_usage_buffer_records") == 40


def test_merging_one_worker_is_byte_identical() -> None:
    """One worker's text merged alone comes back byte for byte, HELP and TYPE lines included."""
    one, _ = two_workers()
    one.usage.recorded(ODD_ORG, "m", 1, 0, 0.0)
    text = generate_latest(one.metrics.registry)
    assert merge_expositions([text.decode()]) == text


def test_output_order_and_help_lines_are_stable() -> None:
    """Families keep their first-seen order and each HELP/TYPE line appears once."""
    one, two = two_workers()
    out = merge_expositions([one.text(), two.text()]).decode()
    assert [f.name for f in text_string_to_metric_families(one.text())] == list(parse(out))
    type_lines = [line for line in out.splitlines() if line.startswith("# TYPE")]
    assert len(type_lines) == len(set(type_lines)) == len(parse(out))
    assert "# TYPE router_http_requests_total counter" in type_lines


def test_no_workers_is_an_empty_exposition() -> None:
    """An empty list of texts merges to empty bytes."""
    assert merge_expositions([]) == b""


def test_label_order_does_not_split_a_series_and_untyped_samples_sum() -> None:
    """Texts from other writers: the same labels in another order are one series; untyped adds."""
    one = '# TYPE jobs_total counter\njobs_total{a="1",b="2"} 1\n# TYPE up untyped\nup 1\n'
    two = '# TYPE jobs_total counter\njobs_total{b="2",a="1"} 2\n# TYPE up untyped\nup 1\n'
    merged = parse(merge_expositions([one, two]))
    assert value(merged, "jobs_total", a="1", b="2") == 3
    assert value(merged, "up") == 2


def test_summed_gauges_are_gauges_workers_expose_and_the_docs_name() -> None:
    """Every gauge the merge adds up is a worker's gauge and is listed in docs/metrics.md."""
    families = parse(Worker().text())
    assert {name: families[name].type for name in SUMMED_GAUGES} == dict.fromkeys(
        SUMMED_GAUGES, "gauge"
    )
    section = DOC.read_text().split("## Several workers and replicas", 1)[1]
    assert [name for name in sorted(SUMMED_GAUGES) if f"`{name}`" not in section] == []


def test_cumulative_only_keeps_what_a_dead_worker_counted() -> None:
    """A dead worker leaves its counters and histograms, not its gauges or start times, and
    adding them to a successor's keeps the totals from going down."""
    dead, successor = Metrics(), Metrics()
    for metrics, n in ((dead, 3), (successor, 2)):
        for _ in range(n):
            metrics.request_started()
            metrics.observe_request("/v1/chat/completions", "POST", 200, 0.01)
    dead.request_started()  # in flight when it died: a gauge, gone with it
    left = cumulative_only(generate_latest(dead.registry).decode())
    assert "router_inflight_requests" not in left
    assert "_created" not in left
    merged = merge_expositions([left, generate_latest(successor.registry).decode()]).decode()
    requests = 'router_http_requests_total{method="POST",route="/v1/chat/completions",status="200"}'
    assert f"{requests} 5.0" in merged.splitlines()
    assert "router_inflight_requests 0.0" in merged.splitlines()
