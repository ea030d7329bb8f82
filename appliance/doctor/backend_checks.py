"""Backends: each answers its health path and lists the models the router sends it.

The same URLs and headers the router uses (appliance/upstream/client.py): the health path at
the server's root, `GET {url}/models` under the API prefix, with the backend's credentials.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Mapping
from urllib.parse import urlsplit

import aiohttp
import msgspec

from appliance.doctor.report import CheckResult, count, describe, failed, passed, warned
from appliance.settings import Backend, Settings
from appliance.settings.loader import BackendCredentials

_MAX_MODELS_BYTES = 4 * 1024 * 1024  # a model list is small; never read a runaway body


class _Model(msgspec.Struct):
    id: str


class _ModelList(msgspec.Struct):
    data: list[_Model]


class _Failure(Exception):
    """A backend check that failed, with the row's detail and fix."""

    def __init__(self, detail: str, fix: str) -> None:
        super().__init__(detail)
        self.detail = detail
        self.fix = fix


async def check_backends(
    settings: Settings, credentials: Mapping[str, BackendCredentials], timeout_s: float
) -> list[CheckResult]:
    """One `backend` row per configured backend, checked concurrently."""
    if not settings.backends:
        return []
    async with aiohttp.ClientSession() as session:
        return list(
            await asyncio.gather(
                *(
                    _check_one(
                        session,
                        backend,
                        credentials.get(backend.id, BackendCredentials()),
                        _routed_models(settings, backend.id),
                        timeout_s,
                    )
                    for backend in settings.backends
                )
            )
        )


def _connect_problem(exc: aiohttp.ClientError) -> str:
    if isinstance(exc, aiohttp.ClientConnectorError):
        code = exc.os_error.errno
        reason = os.strerror(code) if code is not None and code > 0 else str(exc.os_error)
        return f"cannot connect: {reason}"
    return describe(exc)


def _routed_models(settings: Settings, backend_id: str) -> set[str]:
    """The upstream model names the router may send to this backend."""
    return {
        route.upstream_model or model.name
        for model in settings.models
        for route in model.backends
        if route.backend == backend_id
    }


async def _check_one(
    session: aiohttp.ClientSession,
    backend: Backend,
    credentials: BackendCredentials,
    wanted: set[str],
    timeout_s: float,
) -> CheckResult:
    parts = urlsplit(backend.url)
    origin = f"{parts.scheme}://{parts.netloc}"
    headers = {**{k.lower(): v for k, v in backend.headers.items()}, **credentials.headers}
    limits = aiohttp.ClientTimeout(
        total=timeout_s, sock_connect=min(timeout_s, backend.connect_timeout_s)
    )
    where = f"{parts.hostname}:{parts.port or (443 if parts.scheme == 'https' else 80)}"
    shown = f"{parts.scheme}://{where}{parts.path}"  # without any user:password@
    try:
        async with asyncio.timeout(timeout_s):  # both calls together
            health = await _health(session, origin + backend.health_path, headers, limits)
            listed = await _models(session, backend, headers, limits)
    except _Failure as exc:
        return failed("backend", backend.id, exc.detail, exc.fix)
    except TimeoutError:
        return failed(
            "backend",
            backend.id,
            f"{where}: no answer within {timeout_s:g} s",
            f"the backend {backend.id} hangs: check its process and load",
        )
    except aiohttp.ClientError as exc:
        return failed(
            "backend",
            backend.id,
            f"{where}: {_connect_problem(exc)}",
            f"start the backend {backend.id} or fix backends.url ({shown})",
        )
    if listed is None:
        return warned(
            "backend",
            backend.id,
            f"{health}; it has no GET /models (the router does not need it)",
            "nothing to do, unless it should be an OpenAI-compatible server",
        )
    missing = sorted(wanted - listed)
    if missing:
        return warned(
            "backend",
            backend.id,
            f"{health}; /models does not list {', '.join(missing)}",
            "set [[models]] backends.upstream_model to a name the backend lists",
        )
    return passed("backend", backend.id, f"{health}; /models lists {count(len(listed), 'model')}")


async def _health(
    session: aiohttp.ClientSession,
    url: str,
    headers: Mapping[str, str],
    limits: aiohttp.ClientTimeout,
) -> str:
    async with session.get(url, headers=headers, timeout=limits, allow_redirects=False) as r:
        path = urlsplit(url).path
        if not 200 <= r.status < 300:
            raise _Failure(
                f"health {path} answered {r.status}",
                "see the backend's logs; or set backends.health_path to its health endpoint",
            )
        return f"health {path} {r.status}"


async def _models(
    session: aiohttp.ClientSession,
    backend: Backend,
    headers: Mapping[str, str],
    limits: aiohttp.ClientTimeout,
) -> set[str] | None:
    """The model ids the backend lists; None if it has no /models at all."""
    url = backend.url.rstrip("/") + "/models"
    async with session.get(url, headers=headers, timeout=limits, allow_redirects=False) as r:
        if r.status in (401, 403):
            credential = backend.api_key_env or "its credentials"
            raise _Failure(
                f"GET /models answered {r.status}: the backend refuses our credentials",
                f"check {credential} (backends.api_key_env / secret_headers)",
            )
        if r.status in (404, 405):
            return None
        if not 200 <= r.status < 300:
            raise _Failure(f"GET /models answered {r.status}", "see the backend's logs")
        body = await r.content.read(_MAX_MODELS_BYTES)
    try:
        return {m.id for m in msgspec.json.decode(body, type=_ModelList).data}
    except msgspec.DecodeError:
        raise _Failure(
            "GET /models did not answer an OpenAI model list",
            "check backends.url: it must include the API prefix, e.g. /v1",
        ) from None
