"""`routerctl doctor --url`: ask a running router how it is, through status and admin API."""

from __future__ import annotations

from appliance.doctor.live import (
    admin_error_row,
    admin_rows,
    buffer_row,
    health_row,
    no_token_row,
    readiness_rows,
    unreachable_row,
)
from appliance.doctor.report import CheckResult
from routerctl.admin_client import AdminClient, AdminError


def check_running(url: str, timeout_s: float) -> list[CheckResult]:
    """Liveness, each readiness component, then with an admin token each backend and the
    outbox; stops at the first row if the router does not answer."""
    try:
        client = AdminClient.from_env(url, timeout_s)
        _, health = client.status("/v1/status/healthz")
    except AdminError as exc:
        return [unreachable_row(url, str(exc))]
    rows = [health_row(client.url, health)]
    try:
        rows += readiness_rows(*client.status("/v1/status/readyz"))
    except AdminError as exc:
        rows.append(unreachable_row(client.url, str(exc)))
    if not client.has_token:
        return [*rows, no_token_row()]
    try:
        rows += admin_rows(client.backends())
        rows.append(buffer_row(client.buffer()))
    except AdminError as exc:
        rows.append(admin_error_row(str(exc)))
    return rows
