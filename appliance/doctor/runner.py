"""Run every doctor check concurrently, each bounded in time, and list the rows in order."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

from appliance.doctor.backend_checks import check_backends
from appliance.doctor.etcd_check import check_etcd
from appliance.doctor.kafka_check import check_kafka
from appliance.doctor.listener_checks import check_listeners
from appliance.doctor.redis_checks import check_redis
from appliance.doctor.report import CheckResult, failed
from appliance.doctor.state_checks import check_state
from appliance.doctor.target import DoctorTarget, check_config

# Each check bounds its own waits by timeout_s; this margin covers closing its clients.
_GRACE_S = 1.0

Check = Callable[[], Awaitable[list[CheckResult]]]


async def run_doctor(target: DoctorTarget, timeout_s: float) -> list[CheckResult]:
    """Every check's rows: config first, then dependencies, backends, state dir, listeners."""
    s = target.settings
    groups: list[tuple[str, Check]] = [
        ("redis", lambda: check_redis(s, timeout_s)),
        ("kafka", lambda: check_kafka(s, target.config.kafka_password, timeout_s)),
        ("etcd", lambda: check_etcd(s, timeout_s)),
        ("backend", lambda: check_backends(s, target.config.credentials, timeout_s)),
        ("state_dir", lambda: check_state(s, timeout_s)),
        ("listen", lambda: check_listeners(s, timeout_s)),
    ]
    found = await asyncio.gather(*(_bounded(name, check, timeout_s) for name, check in groups))
    return [check_config(target), *(row for rows in found for row in rows)]


async def _bounded(name: str, check: Check, timeout_s: float) -> list[CheckResult]:
    """The check's rows, or one failed row if it overran (a client that would not close)."""
    try:
        async with asyncio.timeout(timeout_s + _GRACE_S):
            return await check()
    except TimeoutError:
        return [
            failed(
                name,
                "-",
                f"the check did not finish within {timeout_s + _GRACE_S:g} s",
                "rerun with a larger --timeout; if it persists, report it with the config",
            )
        ]
