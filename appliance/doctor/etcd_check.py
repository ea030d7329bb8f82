"""etcd (the config service): every endpoint answers status, knows a leader, and its revision.

The client is built from `[config_service]` exactly as the router builds its own
(`appliance.configsvc.connect`): same endpoints, user, password variable and TLS files.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Mapping

from appliance.configsvc.connect import EtcdSettingsError, etcd_client_from
from appliance.configsvc.etcd_client import EtcdAuthError, EtcdClient, EtcdError, EtcdStatus
from appliance.doctor.report import CheckResult, describe, failed, passed, skipped, warned
from appliance.settings import Settings

_MB = 1024 * 1024


async def check_etcd(
    settings: Settings, timeout_s: float, environ: Mapping[str, str] | None = None
) -> list[CheckResult]:
    """Rows `etcd`, one per endpoint; one skip row when `[config_service]` names none, one
    failed row when no client can be built (password variable unset, TLS file unreadable)."""
    try:
        client = etcd_client_from(
            settings, os.environ if environ is None else environ, timeout_s=timeout_s
        )
    except EtcdSettingsError as exc:
        return [
            failed(
                "etcd",
                "-",
                str(exc),
                "fix [config_service] (export the password variable where the router runs; "
                "make the TLS files readable)",
            )
        ]
    if client is None:
        return [skipped("etcd", "-", "not configured ([config_service] etcd_endpoints is empty)")]
    async with client:
        return await check_etcd_members(client, timeout_s)


async def check_etcd_members(client: EtcdClient, timeout_s: float) -> list[CheckResult]:
    """One row per endpoint: pass with version and revision, or why it cannot serve us.

    A member down while another answers with a leader is a warning (the cluster still has
    quorum); every member down, or no leader anywhere, is a failure.
    """
    answers = await asyncio.gather(*(_status(client, e, timeout_s) for e in client.endpoints))
    healthy = any(isinstance(a, EtcdStatus) and a.leader for a in answers)
    return [
        _row(endpoint, answer, cluster_ok=healthy)
        for endpoint, answer in zip(client.endpoints, answers, strict=True)
    ]


async def _status(
    client: EtcdClient, endpoint: str, timeout_s: float
) -> EtcdStatus | BaseException:
    try:
        async with asyncio.timeout(timeout_s):
            return await client.status(endpoint)
    except (EtcdError, TimeoutError) as exc:
        return exc


def _row(endpoint: str, answer: EtcdStatus | BaseException, *, cluster_ok: bool) -> CheckResult:
    if isinstance(answer, EtcdAuthError):
        return failed(
            "etcd",
            endpoint,
            f"refused our credentials: {describe(answer)}",
            "fix the config service's user, password or client certificate",
        )
    if isinstance(answer, BaseException):
        what = "no answer in time" if isinstance(answer, TimeoutError) else describe(answer)
        make = warned if cluster_ok else failed
        return make(
            "etcd",
            endpoint,
            what + ("; other members answer" if cluster_ok else "; routers run on their cache"),
            f"start etcd at {endpoint}, or fix the config service's endpoints",
        )
    detail = f"etcd {answer.version}, revision {answer.revision}, db {answer.db_size / _MB:,.1f} MB"
    if not answer.leader:
        return failed(
            "etcd",
            endpoint,
            f"{detail}; this member knows no leader (quorum lost?)",
            "bring back enough members for a majority (etcdctl endpoint status --cluster)",
        )
    return passed("etcd", endpoint, detail)
