"""The metrics listener of a running router exposes exactly the catalog in docs/metrics.md."""

from __future__ import annotations

import asyncio
import re
from dataclasses import dataclass
from pathlib import Path

from prometheus_client.metrics_core import Metric
from prometheus_client.parser import text_string_to_metric_families

from appliance.build import BUILD
from tests.integration import metrics_workload as workload
from tests.integration.router_harness import (
    BACKEND_SECRET,
    KEY,
    RouterUnderTest,
    chat,
    running_router,
)

DOC = Path(__file__).resolve().parents[2] / "docs" / "metrics.md"
_ROW = re.compile(r"^\|\s*`(router_\w+)`\s*\|\s*(counter|gauge|histogram)\s*\|([^|]*)\|")
# Families only an event this workload does not cause creates a series for.
_EVENT_ONLY = {
    "router_rate_limit_shadow_denials_total",
    "router_backend_ejections_total",
    "router_usage_publish_failures_total",
}
# The supervisor's own, exposed only with `[server] workers` > 1 (tests/e2e/test_workers.py).
_SUPERVISOR_ONLY = {"router_workers", "router_worker_restarts"}


@dataclass(frozen=True)
class Documented:
    name: str
    type: str
    labels: frozenset[str]


def documented() -> dict[str, Documented]:
    """The catalog rows of docs/metrics.md."""
    rows: dict[str, Documented] = {}
    for line in DOC.read_text().splitlines():
        if match := _ROW.match(line):
            name, kind, labels = match.groups()
            assert name not in rows, f"{name} is listed twice in {DOC.name}"
            found = frozenset(x.strip() for x in labels.split(",") if x.strip())
            rows[name] = Documented(name, kind, found)
    assert len(rows) > 30, f"the catalog table of {DOC.name} did not parse"
    return rows


def family_name(doc: Documented) -> str:
    # The text parser names a counter family without its `_total`.
    return doc.name.removesuffix("_total") if doc.type == "counter" else doc.name


async def scrape(router: RouterUnderTest) -> tuple[str, dict[str, Metric]]:
    async with router.session.get(router.metrics_url) as response:
        assert response.status == 200
        text = await response.text()
    families = {f.name: f for f in text_string_to_metric_families(text)}
    return text, families


def value(families: dict[str, Metric], name: str, sample: str, **labels: str) -> float:
    total = 0.0
    for s in families[name].samples:
        if s.name == sample and all(s.labels.get(k) == v for k, v in labels.items()):
            total += s.value
    return total


async def settled_scrape(router: RouterUnderTest) -> tuple[str, dict[str, Metric]]:
    """A scrape once every request has ended (the last one ends just after its last byte)."""
    for _ in range(100):
        text, families = await scrape(router)
        if value(families, "router_inflight_requests", "router_inflight_requests") == 0:
            return text, families
        await asyncio.sleep(0.02)
    raise AssertionError("router_inflight_requests never went back to 0")


async def test_every_documented_metric_is_exposed_with_its_type_and_labels() -> None:
    """docs/metrics.md and the scrape list the same families, types and label names."""
    async with running_router(mock_count=2, extra=workload.EXTRA, metrics_listener=True) as router:
        await workload.traffic(router)
        await workload.incidents(router)
        _, families = await settled_scrape(router)
    docs = documented()
    expected = {
        family_name(doc): doc for doc in docs.values() if family_name(doc) not in _SUPERVISOR_ONLY
    }
    # The text format shows each counter's and histogram's `_created` as a gauge of its own.
    exposed = {
        name
        for name in families
        if name.startswith("router_")
        and not (name.endswith("_created") and name.removesuffix("_created") in expected)
    }
    assert sorted(exposed - expected.keys()) == [], "exposed but not in docs/metrics.md"
    assert sorted(expected.keys() - exposed) == [], "in docs/metrics.md but not exposed"
    for name, doc in expected.items():
        family = families[name]
        assert family.type == doc.type, name
        samples = [s for s in family.samples if not s.name.endswith("_created")]
        if not samples:
            assert doc.name in _EVENT_ONLY, f"{doc.name} has no series after the workload"
            continue
        for sample in samples:
            assert set(sample.labels) - {"le"} == doc.labels, (doc.name, sample.labels)


async def test_labels_stay_bounded_whatever_clients_send() -> None:
    """Unknown models, stray paths, request ids and keys never become label values."""
    async with running_router(mock_count=2, extra=workload.EXTRA, metrics_listener=True) as router:
        await workload.traffic(router)
        await workload.incidents(router)
        text, families = await settled_scrape(router)
    for secret in (
        workload.UNKNOWN_MODEL,
        workload.STRAY_PATH,
        workload.CLIENT_REQUEST_ID,
        KEY,
        workload.LIMITED_KEY,
        BACKEND_SECRET,
        "k-acme",
    ):
        assert secret not in text
    routes = {s.labels["route"] for s in families["router_http_requests"].samples}
    assert "other" in routes  # the stray path
    assert routes <= {"other", "/v1/chat/completions", "/v1/embeddings", "/v1/status/healthz"}
    models = {s.labels["model"] for s in families["router_time_to_first_token_seconds"].samples}
    assert models == {"chat"}


async def test_request_metrics_count_what_happened() -> None:
    """Build info, config source, in-flight, failover, override and denials read as expected."""
    async with running_router(mock_count=2, extra=workload.EXTRA, metrics_listener=True) as router:
        await workload.traffic(router, rounds=2)
        await workload.incidents(router)
        _, f = await settled_scrape(router)
    info = f["router_build_info"].samples
    assert [(s.labels, s.value) for s in info] == [
        ({"version": BUILD.version, "commit": BUILD.commit}, 1.0)
    ]
    source = {s.labels["source"]: s.value for s in f["router_config_source"].samples}
    assert source == {"file": 1.0, "etcd": 0.0, "cache": 0.0}
    assert value(f, "router_config_revision", "router_config_revision") == 0
    applies = "router_config_applies_total"
    assert value(f, "router_config_applies", applies, result="applied") == 1
    assert value(f, "router_config_applies", applies, result="rejected") == 0
    last_apply = "router_config_last_apply_timestamp_seconds"
    assert value(f, last_apply, last_apply) > 0
    ttft = "router_time_to_first_token_seconds"
    assert value(f, ttft, f"{ttft}_count", model="chat") == 4  # 2 streams x 2 rounds
    attempts = "router_requests_total"
    assert value(f, "router_requests", attempts, decision_type="FAILOVER") == 1
    assert value(f, "router_requests", attempts, decision_type="OVERRIDE") == 1
    assert value(f, "router_failover", "router_failover_total", reason="upstream_error") == 1
    denials = "router_rate_limit_denials_total"
    assert value(f, "router_rate_limit_denials", denials, org="lim", limit="rpm") == 1
    budget = "router_budget_denials_total"
    assert value(f, "router_budget_denials", budget, org="thrifty", shadow="false") == 1
    assert value(f, "router_budget_limit_usd", "router_budget_limit_usd", org="thrifty") == 0.0001
    assert value(f, "router_budget_spent_usd", "router_budget_spent_usd", org="thrifty") > 0.0001


async def test_overhead_excludes_backend_time() -> None:
    """A backend that waits 200 ms adds it to the request, not to the router's overhead."""
    async with running_router(metrics_listener=True) as router:
        status, _ = await workload.post(router, chat("[mock:latency_ms=200]", max_tokens=2))
        assert status == 200
        status, _ = await workload.post(router, chat("[mock:latency_ms=200]", stream=True))
        assert status == 200
        _, f = await settled_scrape(router)
    duration = "router_http_request_duration_seconds"
    total = value(f, duration, f"{duration}_sum", route="/v1/chat/completions")
    overhead = value(f, "router_overhead_seconds", "router_overhead_seconds_sum")
    ttft = value(f, "router_time_to_first_token_seconds", "router_time_to_first_token_seconds_sum")
    assert value(f, "router_overhead_seconds", "router_overhead_seconds_count") == 2
    assert ttft >= 0.2  # the stream's first chunk came after the backend's wait
    assert total >= 0.4  # both requests include their backend's wait
    # Each request's overhead is its router time minus at least the 200 ms it waited.
    assert overhead <= total - 0.4
