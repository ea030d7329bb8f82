"""Limiter metrics (implements LimitObserver)."""

from __future__ import annotations

from collections.abc import Callable, Iterator

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from appliance.settings import Settings

_DECISION_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1)


class LimitMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self._denials = Counter(
            "router_rate_limit_denials_total",
            "Requests refused by a rate or concurrency limit.",
            ["org", "scope", "limit"],
            registry=registry,
        )
        self._shadow = Counter(
            "router_rate_limit_shadow_denials_total",
            "Requests a shadow limit would have refused (not enforced).",
            ["org", "scope", "limit"],
            registry=registry,
        )
        self._budget = Counter(
            "router_budget_denials_total",
            "Requests refused because the org's monthly budget is spent (shadow: would be).",
            ["org", "shadow"],
            registry=registry,
        )
        self._spent = Gauge(
            "router_budget_spent_usd",
            "The org's spend this calendar month as last recorded by this router.",
            ["org"],
            registry=registry,
        )
        self._degraded = Gauge(
            "router_limiter_degraded",
            "1 while the shared limit store is unreachable and the failure mode applies.",
            registry=registry,
        )
        self._errors = Counter(
            "router_limiter_backend_errors_total",
            "Failed calls to the shared limit store (Redis) or the budget service.",
            registry=registry,
        )
        self._latency = Histogram(
            "router_limiter_decision_seconds",
            "Time to admit a request against its limits.",
            buckets=_DECISION_BUCKETS,
            registry=registry,
        )

    def denied(self, org: str, scope: str, limit: str, shadow: bool) -> None:
        (self._shadow if shadow else self._denials).labels(org, scope, limit).inc()

    def budget_denied(self, org: str, shadow: bool) -> None:
        self._budget.labels(org, "true" if shadow else "false").inc()

    def spent(self, org: str, total_usd: float) -> None:
        self._spent.labels(org).set(total_usd)

    def degraded(self, on: bool) -> None:
        self._degraded.set(1 if on else 0)

    def backend_error(self) -> None:
        self._errors.inc()

    def decision(self, seconds: float) -> None:
        self._latency.observe(seconds)


class BudgetLimits(Collector):
    """`router_budget_limit_usd{org}` read from the live settings at scrape, so a reload shows."""

    def __init__(self, settings: Callable[[], Settings]) -> None:
        self._settings = settings

    def collect(self) -> Iterator[GaugeMetricFamily]:
        family = GaugeMetricFamily(
            "router_budget_limit_usd",
            "The org's configured monthly budget (orgs with a budget only).",
            labels=["org"],
        )
        for org in self._settings().orgs:
            if org.monthly_budget_usd > 0:
                family.add_metric([org.id], org.monthly_budget_usd)
        yield family
