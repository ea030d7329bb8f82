"""Prometheus text on its own listener, so scraping never competes with the public API."""

from __future__ import annotations

from aiohttp import web

from appliance.settings import parse_listen
from appliance.telemetry.metrics import Metrics


class MetricsListener:
    """`GET /metrics` on `server.metrics_listen` (aiohttp), for the life of an `async with`."""

    def __init__(self, listen: str, metrics: Metrics) -> None:
        self._host, self._port = parse_listen(listen)
        self._metrics = metrics
        self._runner: web.AppRunner | None = None

    async def __aenter__(self) -> MetricsListener:
        app = web.Application()
        app.router.add_get("/metrics", self._render)
        self._runner = web.AppRunner(app, access_log=None, handle_signals=False)
        await self._runner.setup()
        await web.TCPSite(self._runner, self._host, self._port).start()
        return self

    async def __aexit__(self, *_: object) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    async def _render(self, _: web.Request) -> web.Response:
        return web.Response(
            body=self._metrics.render(),
            headers={"content-type": "text/plain; version=0.0.4; charset=utf-8"},
        )
