"""The listen addresses: free for `serve` to bind, or already held by a running router."""

from __future__ import annotations

import asyncio
import errno
import socket

import aiohttp
import msgspec

from appliance.doctor.report import CheckResult, describe, failed, passed, skipped
from appliance.settings import ADMIN_ON_PUBLIC, Settings, parse_listen

_HEALTHZ = "/v1/status/healthz"
_METRICS = "/metrics"
_METRIC_OF_OURS = b"router_http_requests_total"  # always registered by telemetry/metrics.py
_MAX_BODY = 1024 * 1024


class _Healthz(msgspec.Struct):
    status: str
    build: dict[str, str] = {}


async def check_listeners(settings: Settings, timeout_s: float) -> list[CheckResult]:
    """Rows listen, admin_listen and metrics_listen."""
    server = settings.server
    timeout = aiohttp.ClientTimeout(total=timeout_s)
    async with aiohttp.ClientSession(timeout=timeout) as session:
        rows = [_listener(session, "listen", server.listen)]
        if server.admin_listen == ADMIN_ON_PUBLIC:
            rows.append(_off("admin_listen", "public: the admin API is served on listen"))
        else:
            rows.append(_listener(session, "admin_listen", server.admin_listen))
        if server.metrics_listen:
            rows.append(_listener(session, "metrics_listen", server.metrics_listen))
        else:
            rows.append(_off("metrics_listen", 'off (server.metrics_listen = "")'))
        return list(await asyncio.gather(*rows))


async def _off(check: str, detail: str) -> CheckResult:
    return skipped(check, "-", detail)


async def _listener(session: aiohttp.ClientSession, check: str, address: str) -> CheckResult:
    host, port = parse_listen(address)  # validated with the config
    try:
        _try_bind(host, port)
    except OSError as exc:
        if exc.errno != errno.EADDRINUSE:
            return failed(check, address, f"cannot listen: {describe(exc)}", _bind_fix(exc, check))
    else:
        return passed(check, address, "free: serve can listen here")
    found = await _router_answer(session, check, _probe_url(host, port, check))
    if found is not None:
        return passed(check, address, f"in use by a running router ({found})")
    return failed(
        check,
        address,
        "in use by another program (it does not answer like a router)",
        f"stop what holds port {port} (ss -ltnp 'sport = :{port}') or change server.{check}",
    )


def _try_bind(host: str, port: int) -> None:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    # SO_REUSEADDR, as the servers set it: only a live listener makes this fail.
    with socket.create_server((host, port), family=family):
        pass


def _bind_fix(exc: OSError, check: str) -> str:
    if exc.errno == errno.EACCES:
        return f"use a port >= 1024 in server.{check}, or grant CAP_NET_BIND_SERVICE"
    if exc.errno == errno.EADDRNOTAVAIL:
        return f"no interface of this host has that address: fix server.{check}"
    return f"fix server.{check} (HOST:PORT of an address of this host)"


def _probe_url(host: str, port: int, check: str) -> str:
    # A wildcard listener answers on loopback.
    host = {"0.0.0.0": "127.0.0.1", "::": "::1", "": "127.0.0.1"}.get(host, host)  # noqa: S104
    netloc = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    return f"http://{netloc}{_METRICS if check == 'metrics_listen' else _HEALTHZ}"


async def _router_answer(session: aiohttp.ClientSession, check: str, url: str) -> str | None:
    """What the router there says about itself; None if it is not a router."""
    try:
        async with session.get(url, allow_redirects=False) as response:
            body = await response.content.read(_MAX_BODY)
            if response.status != 200:
                return None
    except (aiohttp.ClientError, TimeoutError):
        return None
    if check == "metrics_listen":
        return "its metrics answer" if _METRIC_OF_OURS in body else None
    try:
        health = msgspec.json.decode(body, type=_Healthz)
    except msgspec.DecodeError:
        return None
    if health.status != "healthy":
        return None
    return f"healthz answered, version {health.build.get('version', '?')}"
