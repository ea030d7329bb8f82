"""Prometheus text on its own listener, so scraping never competes with the public API."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from aiohttp import web

from appliance.settings import parse_listen
from appliance.telemetry.metrics import Metrics

Render = Callable[[], Awaitable[bytes]]
_CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


class MetricsListener:
    """`GET /metrics` (aiohttp) for the life of an `async with`, on `listen` ("HOST:PORT"),
    or on the unix socket `unix_path` (a worker, scraped by its supervisor)."""

    def __init__(
        self, listen: str, source: Metrics | Render, *, unix_path: str | None = None
    ) -> None:
        self._listen = listen
        self._unix_path = unix_path
        self._render = _renderer(source) if isinstance(source, Metrics) else source
        self._runner: web.AppRunner | None = None

    async def __aenter__(self) -> MetricsListener:
        app = web.Application()
        app.router.add_get("/metrics", self._serve)
        self._runner = web.AppRunner(app, access_log=None, handle_signals=False)
        await self._runner.setup()
        site: web.BaseSite
        if self._unix_path is not None:
            site = web.UnixSite(self._runner, self._unix_path)
        else:
            host, port = parse_listen(self._listen)
            site = web.TCPSite(self._runner, host, port)
        await site.start()
        return self

    async def __aexit__(self, *_: object) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    async def _serve(self, _: web.Request) -> web.Response:
        return web.Response(body=await self._render(), headers={"content-type": _CONTENT_TYPE})


def _renderer(metrics: Metrics) -> Render:
    async def render() -> bytes:
        return metrics.render()

    return render
