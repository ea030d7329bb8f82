"""`doctor --url` rows from a running router's answers (pure: no router needed)."""

from __future__ import annotations

from appliance.doctor.live import admin_rows, buffer_row, readiness_rows
from appliance.usage.buffer_service import LiveBufferReport, PublishingReport
from routerctl.admin_client import BackendInfo, OverrideInfo


def backend(health: str = "healthy", override: OverrideInfo | None = None) -> BackendInfo:
    return BackendInfo("b1", ["m"], 1.0, 1.0, health, 0, 0, 12.5, 3, override)


def test_an_unhealthy_component_fails_with_its_reason_and_runbook() -> None:
    """readyz's detail is the row's detail; the fix points at the component's runbook."""
    body = {
        "status": "degraded",
        "components": {"redis": "unhealthy", "kafka": "healthy", "config_service": "disabled"},
        "details": {"redis": "ConnectionError: refused"},
    }
    rows = {r.target: r for r in readiness_rows(503, body)}
    assert (rows["redis"].status, rows["redis"].detail) == ("fail", "ConnectionError: refused")
    assert rows["redis"].fix == "see docs/runbooks.md#redis-connectivity"
    assert (rows["kafka"].status, rows["config_service"].status) == ("pass", "skip")


def test_a_draining_router_is_a_warning() -> None:
    """Shutting down is said as such, not as a failed component."""
    body = {"status": "degraded", "components": {}, "shutting_down": True}
    assert [(r.target, r.status) for r in readiness_rows(503, body)] == [("shutdown", "warn")]


def test_backends_ejected_fail_overridden_warn() -> None:
    """An ejected backend fails; one under an override warns with who and why."""
    degrade = OverrideInfo("ov", "degrade", "b1", None, 0.5, "INC-1", "oncall", 0.0, None)
    statuses = [
        r.status for r in admin_rows([backend(), backend("ejected"), backend(override=degrade)])
    ]
    assert statuses == ["pass", "fail", "warn"]
    assert "INC-1" in admin_rows([backend(override=degrade)])[0].detail


def test_the_outbox_fails_while_publishing_fails_and_warns_when_old() -> None:
    """Failed publishes fail the row with the last error; a 10-minute-old record warns."""

    def report(failures: int, age: float | None) -> LiveBufferReport:
        publishing = PublishingReport(failures, "KafkaError: down" if failures else None, None)
        return LiveBufferReport(
            path="/s/outbox.sqlite", records=5, bytes=500, oldest_created_at=None,
            oldest_age_s=age, topics={}, sinks={}, publishing=publishing,
        )  # fmt: skip

    assert buffer_row(report(3, 20.0)).status == "fail"
    assert "KafkaError: down" in buffer_row(report(3, 20.0)).detail
    assert buffer_row(report(0, 600.0)).status == "warn"
    assert buffer_row(report(0, None)).status == "pass"
