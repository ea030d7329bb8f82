"""The Grafana dashboard and the alert rules work on a real Prometheus scraping a real router.

Prometheus comes from the Debian package `prometheus` (prometheus and promtool). The router
runs a bounded workload with a failover, an override, rate-limit and budget denials, so every
panel has something to show; then every panel query must return series and every alert rule
must evaluate without error.
"""

from __future__ import annotations

import asyncio
import json
import re
import subprocess
import time
import urllib.error
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import aiohttp

from tests import tools
from tests.integration import metrics_workload as workload
from tests.integration.router_harness import RouterUnderTest, running_router
from tests.services import _HTTP, ServiceProcess

ROOT = Path(__file__).resolve().parents[2]
DASHBOARD = ROOT / "packaging" / "grafana" / "routerctl-dashboard.json"
ALERTS = ROOT / "packaging" / "prometheus" / "alerts.yml"
SCRAPE_INTERVAL_S = 1
# Grafana's built-in variables, made concrete; the window covers the whole test.
GRAFANA_VARIABLES = {"$__rate_interval": "30s", "$__interval": "1s", "$__range": "5m"}
RUNBOOK = re.compile(r"^docs/runbooks\.md#[a-z0-9-]+$")
_WAIT_S = 30.0
# What on-call needs on the dashboard (issue 7): each must feed at least one panel.
REQUIRED_IN_PANELS = (
    "router_http_requests_total",  # request rate, errors by status
    "router_http_request_duration_seconds_bucket",  # p50/p95/p99
    "router_requests_total",  # errors by backend, routing decisions
    "router_backend_health_status",
    "router_usage_records_total",
    "router_usage_buffer_records",
    "router_usage_buffer_oldest_seconds",
    "router_rate_limit_denials_total",
    "router_budget_denials_total",
    "router_budget_limit_usd",  # remaining budget
    "router_config_revision",
)
REQUIRED_ALERTS = (
    "RouterBackendDown",
    "RouterErrorRateHigh",
    "RouterLatencyP99High",
    "RouterUsageBufferGrowing",
    "RouterUsageBufferOld",
    "RouterKafkaUnreachable",
    "RouterRedisUnreachable",
    "RouterEtcdUnreachable",
    "RouterBudgetNearExhaustion",
)


def prometheus_binaries() -> tuple[Path, Path]:
    """prometheus and promtool on PATH (CI installs them; see tests/tools.py)."""
    return tools.debian_tool("prometheus", "prometheus"), tools.debian_tool(
        "promtool", "prometheus"
    )


class PrometheusServer(ServiceProcess):
    """Prometheus scraping one target every second, with the alert rules loaded."""

    name = "prometheus"

    def __init__(self, binary: Path, workdir: Path, target: str) -> None:
        super().__init__(binary, workdir)
        self.target = target

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def _command(self) -> list[str]:
        config = self.workdir / "prometheus.yml"
        self.workdir.mkdir(parents=True, exist_ok=True)
        config.write_text(
            f"global:\n  scrape_interval: {SCRAPE_INTERVAL_S}s\n"
            f"  evaluation_interval: {SCRAPE_INTERVAL_S}s\n"
            f"rule_files: [{json.dumps(str(ALERTS))}]\n"
            "scrape_configs:\n  - job_name: routerctl\n"
            f"    static_configs: [{{targets: [{json.dumps(self.target)}]}}]\n"
        )
        return [
            str(self.binary), f"--config.file={config}",
            f"--storage.tsdb.path={self.workdir / 'data'}",
            f"--web.listen-address={self.host}:{self.port}", "--log.level=warn",
        ]  # fmt: skip

    def _probe(self) -> bool:
        try:
            with _HTTP.open(f"{self.url}/-/ready", timeout=1) as response:
                return bool(response.status == 200)
        except (OSError, urllib.error.URLError):
            return False


def panel_queries(dashboard: dict[str, Any]) -> Iterator[tuple[str, str]]:
    """(panel title, expr) of every target of every panel, rows' nested panels included."""
    stack = list(dashboard["panels"])
    while stack:
        panel = stack.pop(0)
        stack.extend(panel.get("panels", []))
        if panel["type"] == "row":
            continue
        targets = panel.get("targets", [])
        assert targets, f"panel {panel['title']!r} has no query"
        for target in targets:
            yield panel["title"], target["expr"]


def concrete(expr: str, instance: str) -> str:
    """The query Grafana would send, with every variable replaced."""
    for name, value in {**GRAFANA_VARIABLES, "$instance": instance}.items():
        expr = expr.replace(name, value)
    assert "$" not in expr, f"unhandled variable in {expr}"
    return expr


async def api(session: aiohttp.ClientSession, url: str, **params: str) -> Any:
    async with session.get(url, params=params) as response:
        body = await response.json()
    if body.get("status") != "success":
        raise AssertionError(f"{params}: {body.get('errorType')}: {body.get('error')}")
    return body["data"]


async def wait_for_scrape_after(
    session: aiohttp.ClientSession, prometheus: PrometheusServer, after: float
) -> None:
    """Until a scrape that started after unix time `after` succeeded."""
    deadline = time.monotonic() + _WAIT_S
    target: dict[str, Any] = {}
    while time.monotonic() < deadline:
        data = await api(session, f"{prometheus.url}/api/v1/targets")
        for target in data["activeTargets"]:  # empty until discovery has run
            if target["health"] == "up" and _unix(target["lastScrape"]) > after:
                return
        await asyncio.sleep(0.2)
    raise AssertionError(f"no successful scrape after {after}: {target}")


def _unix(rfc3339: str) -> float:
    # Prometheus gives nanoseconds; datetime parses at most microseconds.
    trimmed = re.sub(r"(\.\d{6})\d+", r"\1", rfc3339).replace("Z", "+00:00")
    return datetime.fromisoformat(trimmed).timestamp()


async def evaluated_rules(
    session: aiohttp.ClientSession, prometheus: PrometheusServer
) -> list[dict[str, Any]]:
    """Every alert rule once Prometheus has evaluated each at least once."""
    deadline = time.monotonic() + _WAIT_S
    rules: list[dict[str, Any]] = []
    while time.monotonic() < deadline:
        data = await api(session, f"{prometheus.url}/api/v1/rules")
        rules = [rule for group in data["groups"] for rule in group["rules"]]
        if rules and all(rule["health"] != "unknown" for rule in rules):
            return rules
        await asyncio.sleep(0.2)
    raise AssertionError(f"rules not evaluated within {_WAIT_S:.0f} s: {rules}")


async def load(router: RouterUnderTest) -> None:
    await workload.traffic(router, rounds=3)
    await workload.incidents(router)


def test_dashboard_is_well_formed_and_covers_what_on_call_needs() -> None:
    """Unique panel ids, every query on the chosen data source, the required panels present."""
    dashboard = json.loads(DASHBOARD.read_text())
    panels = [p for p in dashboard["panels"] if p["type"] != "row"]
    ids = [p["id"] for p in dashboard["panels"]]
    assert len(ids) == len(set(ids))
    variables = {v["name"] for v in dashboard["templating"]["list"]}
    assert variables == {"datasource", "instance"}
    for panel in panels:
        assert panel["gridPos"]["x"] + panel["gridPos"]["w"] <= 24, panel["title"]
        refs = [t["refId"] for t in panel["targets"]]
        assert len(refs) == len(set(refs)), panel["title"]
        for target in panel["targets"]:
            assert target["datasource"]["uid"] == "${datasource}", panel["title"]
            assert 'instance=~"$instance"' in target["expr"], panel["title"]
    exprs = " ".join(expr for _, expr in panel_queries(dashboard))
    assert [m for m in REQUIRED_IN_PANELS if m not in exprs] == []
    alerts = set(re.findall(r"- alert: (\w+)", ALERTS.read_text()))
    assert [a for a in REQUIRED_ALERTS if a not in alerts] == []


def test_alert_rules_pass_promtool() -> None:
    """promtool accepts packaging/prometheus/alerts.yml."""
    _, promtool = prometheus_binaries()
    result = subprocess.run(
        [str(promtool), "check", "rules", str(ALERTS)],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    assert re.search(r"SUCCESS: \d+ rules found", result.stdout)


async def test_every_panel_query_returns_series_and_every_alert_evaluates(
    tmp_path: Path,
) -> None:
    """A real Prometheus scraping a loaded router answers every panel and evaluates every rule."""
    binary, _ = prometheus_binaries()
    dashboard = json.loads(DASHBOARD.read_text())
    queries = list(panel_queries(dashboard))
    async with running_router(mock_count=2, extra=workload.EXTRA, metrics_listener=True) as router:
        target = router.metrics_url.removeprefix("http://").removesuffix("/metrics")
        prometheus = PrometheusServer(binary, tmp_path / "prometheus", target)
        try:
            await asyncio.to_thread(prometheus.start)
            session = router.session
            await wait_for_scrape_after(session, prometheus, 0.0)
            await load(router)
            # Three scrapes after the load: rates need two samples of each series.
            await wait_for_scrape_after(session, prometheus, time.time() + 2 * SCRAPE_INTERVAL_S)
            failures = []
            for title, expr in queries:
                try:
                    data = await api(
                        session, f"{prometheus.url}/api/v1/query", query=concrete(expr, target)
                    )
                except AssertionError as exc:
                    failures.append(f"{title}: {exc}")
                    continue
                if not data["result"]:
                    failures.append(f"{title}: no series for {expr}")
            assert failures == [], "\n".join(failures)
            rules = await evaluated_rules(session, prometheus)
            for rule in rules:
                assert rule["health"] == "ok", (rule["name"], rule.get("lastError"))
                assert RUNBOOK.match(rule["annotations"].get("runbook_url", "")), rule["name"]
                await api(session, f"{prometheus.url}/api/v1/query", query=rule["query"])
            assert len(rules) == ALERTS.read_text().count("- alert:")
        except BaseException:
            print(prometheus.log_tail())  # shown by pytest on failure
            raise
        finally:
            await asyncio.to_thread(prometheus.close)
