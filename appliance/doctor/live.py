"""`routerctl doctor --url`: rows about a running router, from its status and admin answers.

Pure: the CLI fetches `/v1/status/healthz`, `/v1/status/readyz`, `/v1/admin/backends` and
`/v1/admin/buffer` and hands the decoded answers here.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Protocol

from appliance.doctor.report import CheckResult, failed, passed, skipped, warned
from appliance.usage.buffer_service import LiveBufferReport


class OverrideView(Protocol):
    @property
    def kind(self) -> str: ...
    @property
    def factor(self) -> float: ...
    @property
    def actor(self) -> str: ...
    @property
    def reason(self) -> str: ...


class BackendView(Protocol):
    """A backend as `GET /v1/admin/backends` shows it."""

    @property
    def id(self) -> str: ...
    @property
    def health(self) -> str: ...
    @property
    def weight(self) -> float: ...
    @property
    def inflight(self) -> int: ...
    @property
    def ejections(self) -> int: ...
    @property
    def ewma_latency_ms(self) -> float | None: ...
    @property
    def override(self) -> OverrideView | None: ...


# Where the runbook says what to do when a readiness component is unhealthy.
_RUNBOOK = {
    "redis": "docs/runbooks.md#redis-connectivity",
    "kafka": "docs/runbooks.md#kafka-connectivity-issues",
    "config_service": "docs/runbooks.md#config-service-connectivity",
    "backend_registry": "docs/runbooks.md#backend-degradation",
    "usage_buffer": "docs/runbooks.md#buffer-store-recovery",
}
_OLD_BUFFER_S = 300.0  # the RouterUsageBufferOld alert's threshold


def _see(component: str) -> str:
    """The fix of an unhealthy component: the runbook section for it."""
    return f"see {_RUNBOOK.get(component, 'docs/health.md')}"


def health_row(url: str, body: Mapping[str, Any]) -> CheckResult:
    build = body.get("build") or {}
    version = f"routerctl {build.get('version', '?')} (commit {build.get('commit', '?')})"
    return passed("router", url, f"{body.get('status', '?')}: {version}")


def unreachable_row(url: str, why: str) -> CheckResult:
    return failed("router", url, why, "start the router, or point --url at it")


def readiness_rows(status: int, body: Mapping[str, Any]) -> list[CheckResult]:
    """One row per readiness component, and one if the router is shutting down."""
    details: Mapping[str, str] = body.get("details") or {}
    rows = []
    for name, state in sorted((body.get("components") or {}).items()):
        if state == "healthy":
            rows.append(passed("ready", name, "healthy"))
        elif state == "disabled":
            rows.append(skipped("ready", name, "not configured"))
        else:
            why = details.get(name, state)
            rows.append(failed("ready", name, why, _see(name)))
    if body.get("shutting_down"):
        rows.append(warned("ready", "shutdown", "draining after SIGTERM", "wait for it to exit"))
    elif status != 200 and not any(r.status == "fail" for r in rows):
        rows.append(failed("ready", "readyz", f"HTTP {status}", "see docs/health.md"))
    return rows


def admin_rows(backends: Sequence[BackendView]) -> list[CheckResult]:
    """One row per backend of `GET /v1/admin/backends`: its health and any override."""
    rows = []
    for b in backends:
        override = b.override
        latency = "-" if b.ewma_latency_ms is None else f"{b.ewma_latency_ms:g} ms"
        facts = f"{b.health}, weight {b.weight:g}, latency {latency}, {b.inflight} in flight"
        if b.health in ("ejected", "unhealthy"):
            why = f"{facts}, {b.ejections} ejections"
            rows.append(failed("backend", b.id, why, _see("backend_registry")))
        elif override is not None:
            said = f"{override.kind} x{override.factor:g} by {override.actor}: {override.reason}"
            fix = f"`routerctl backend restore {b.id}` once the incident is over"
            rows.append(warned("backend", b.id, f"{facts}; {said}", fix))
        else:
            rows.append(passed("backend", b.id, facts))
    return rows


def buffer_row(report: LiveBufferReport) -> CheckResult:
    """The outbox of `GET /v1/admin/buffer`: publishing, and how old its oldest record is."""
    publishing = report.publishing
    age = report.oldest_age_s
    facts = f"{report.records} records, {report.bytes} bytes" + (
        "" if age is None else f", oldest {age:.0f} s"
    )
    if publishing.consecutive_failures:
        why = (
            f"{facts}; {publishing.consecutive_failures} failed publishes: {publishing.last_error}"
        )
        return failed("outbox", report.path, why, _see("usage_buffer"))
    if age is not None and age > _OLD_BUFFER_S:
        return warned("outbox", report.path, facts, _see("usage_buffer"))
    return passed("outbox", report.path, facts)


def no_token_row() -> CheckResult:
    return warned(
        "admin",
        "ROUTERCTL_TOKEN",
        "not set: backends and the outbox were not checked",
        "export ROUTERCTL_TOKEN=<an admin token of this router>",
    )


def admin_error_row(message: str) -> CheckResult:
    return failed("admin", "ROUTERCTL_TOKEN", message, "export an admin token of this router")
