"""`MockBackend`: the OpenAI-compatible fake model server, embeddable in any asyncio loop.

`routerctl mock-backend` runs one on its own loop; `routerctl serve --demo` and the tests start
several next to the router on the router's loop, hence start()/stop() rather than run_app().
"""

from __future__ import annotations

import asyncio
import secrets
import time
from collections.abc import Awaitable, Callable, Iterable
from types import TracebackType
from typing import Final, Self

import msgspec
from aiohttp import web

from appliance.mock import shapes
from appliance.mock.errors import MockError
from appliance.mock.handlers import (
    BAD_JSON,
    REQUEST_BODY,
    Inference,
    error_response,
    json_response,
)
from appliance.mock.state import MockConfig, MockState

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
MAX_BODY_BYTES: Final = 16 * 1024 * 1024  # large embedding batches are legitimate load
LOG_BODY_BYTES: Final = 256 * 1024  # 50 logged 16 MiB bodies would be 800 MiB of RAM
_UNMATCHED: Final = "<unmatched>"


def _headers(request: web.Request) -> dict[str, str]:
    """Headers as received (original case); repeated names are joined like HTTP allows."""
    found: dict[str, str] = {}
    for name, value in request.headers.items():
        found[name] = f"{found[name]}, {value}" if name in found else value
    return found


def _route_name(request: web.Request) -> str:
    """The route template, so stats stay bounded however many odd paths a scanner tries."""
    resource = request.match_info.route.resource
    return resource.canonical if resource is not None else _UNMATCHED


class MockBackend:
    """One mock server; construct it, `await start(host, port)`, `await stop()`."""

    def __init__(
        self,
        *,
        models: Iterable[str] = ("demo",),
        latency_ms: float = 0.0,
        fail_rate: float = 0.0,
        tokens_per_s: float = 0.0,
        require_key: str | None = None,
        seed: int = 0,
        name: str = "mock",
        shutdown_timeout: float = 1.0,
    ) -> None:
        """Invalid values raise ValueError or TypeError (the CLI prints one line for them)."""
        config = MockConfig(latency_ms=latency_ms, fail_rate=fail_rate, tokens_per_s=tokens_per_s)
        self._state = MockState(
            models=tuple(models), config=config, require_key=require_key, seed=seed, name=name
        )
        self._expected_auth = f"Bearer {require_key}" if require_key is not None else None
        self._shutdown_timeout = shutdown_timeout
        self._runner: web.AppRunner | None = None
        self._host = ""
        self._port = 0
        # Requests being handled, so stop() can cancel hangs and slow streams at once.
        self._inflight: set[asyncio.Task[object]] = set()

    # -- public surface -------------------------------------------------------------------

    @property
    def running(self) -> bool:
        """True between start() and stop()."""
        return self._runner is not None

    @property
    def port(self) -> int:
        """The bound port (0 before start())."""
        return self._port

    @property
    def url(self) -> str:
        """The OpenAI base URL, e.g. `http://127.0.0.1:8001/v1`."""
        if not self.running:
            raise RuntimeError("MockBackend is not started")
        host = f"[{self._host}]" if ":" in self._host else self._host
        return f"http://{host}:{self._port}/v1"

    @property
    def models(self) -> tuple[str, ...]:
        """The names /v1/models lists."""
        return self._state.models

    @property
    def config(self) -> MockConfig:
        """The live behaviour (immutable snapshot; change it with `configure`)."""
        return self._state.config

    def configure(self, **changes: float | str) -> MockConfig:
        """Change latency_ms / fail_rate / tokens_per_s / fail_status / directives live, like
        POST /_mock/config."""
        try:
            self._state.config = self._state.config.patched(changes)
        except MockError as exc:
            raise ValueError(exc.message) from None
        return self._state.config

    def stats(self) -> dict[str, object]:
        """The /_mock/stats document."""
        return self._state.stats.as_dict()

    def requests(self) -> list[dict[str, object]]:
        """The /_mock/requests log, oldest first."""
        return list(self._state.log)

    def reset(self) -> None:
        """Zero counters, clear the request log, restart the fail_rate sequence."""
        self._state.reset()

    async def start(self, host: str = "127.0.0.1", port: int = 0) -> int:
        """Listen on host:port (0 picks a free port) and return the bound port."""
        if self._runner is not None:
            raise RuntimeError("MockBackend is already started")
        runner = web.AppRunner(
            self._build_app(),
            handle_signals=False,  # the embedding program owns the signals
            access_log=None,  # per-request logging would dominate load-test profiles
            handler_cancellation=True,  # a vanished client cancels its stream or hang
            shutdown_timeout=self._shutdown_timeout,
        )
        await runner.setup()
        try:
            site = web.TCPSite(runner, host, port)
            await site.start()
        except BaseException:
            await runner.cleanup()
            raise
        self._runner, self._host = runner, host
        self._port = int(runner.addresses[0][1])
        return self._port

    async def stop(self) -> None:
        """Stop listening, cancel in-flight requests, close connections. Idempotent."""
        runner, self._runner = self._runner, None
        if runner is None:
            return
        for task in list(self._inflight):
            task.cancel()
        await runner.cleanup()

    async def __aenter__(self) -> Self:
        if self._runner is None:
            await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()

    # -- the aiohttp application ----------------------------------------------------------

    def _build_app(self) -> web.Application:
        inference = Inference(self._state)
        app = web.Application(client_max_size=MAX_BODY_BYTES, middlewares=[self._middleware])
        app.router.add_post("/v1/chat/completions", inference.chat)
        app.router.add_post("/v1/completions", inference.completions)
        app.router.add_post("/v1/embeddings", inference.embeddings)
        app.router.add_post("/v1/responses", inference.responses)
        app.router.add_get("/v1/models", self._models)
        app.router.add_get("/v1/models/{model}", self._model)
        app.router.add_get("/health", self._health)
        app.router.add_get("/_mock/stats", self._stats)
        app.router.add_get("/_mock/requests", self._requests)
        app.router.add_get("/_mock/config", self._get_config)
        app.router.add_post("/_mock/config", self._set_config)
        app.router.add_post("/_mock/reset", self._reset)
        app.on_response_prepare.append(self._tag)
        return app

    async def _tag(self, _request: web.Request, response: web.StreamResponse) -> None:
        # Tells which of several mocks (e.g. the two of `serve --demo`) answered.
        response.headers["x-mock-backend"] = self._state.name

    @web.middleware
    async def _middleware(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        if request.path.startswith("/_mock/"):
            return await self._answer(request, handler)  # operator calls are not "traffic"
        task: asyncio.Task[object] | None = asyncio.current_task()
        if task is not None:
            self._inflight.add(task)
        try:
            await self._record(request)
        except web.HTTPRequestEntityTooLarge:
            too_big = MockError(413, f"Request body too large (limit {MAX_BODY_BYTES} bytes).")
            response: web.StreamResponse = error_response(too_big)
        else:
            response = await self._answer(request, handler)
        finally:
            if task is not None:
                self._inflight.discard(task)
        self._state.stats.by_status[str(response.status)] += 1
        return response

    async def _record(self, request: web.Request) -> None:
        """Count the request, decode its JSON once, and log it (health probes excepted)."""
        stats = self._state.stats
        stats.requests += 1
        stats.by_path[_route_name(request)] += 1
        raw = await request.read() if request.body_exists else b""
        body: object = None
        if raw:
            try:
                body = msgspec.json.decode(raw)
            except msgspec.DecodeError:
                body = BAD_JSON
        REQUEST_BODY.set(body if raw else BAD_JSON)
        if request.path == "/health":
            return  # router probes would push the interesting requests out of the log
        entry: dict[str, object] = {
            "time": time.time(),
            "method": request.method,
            "path": request.path,
            "query": request.query_string,
            "headers": _headers(request),
            "body": None if body is BAD_JSON or len(raw) > LOG_BODY_BYTES else body,
            "body_bytes": len(raw),
        }
        self._state.log.append(entry)

    async def _answer(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        expected = self._expected_auth
        if expected is not None and request.path.startswith("/v1/"):
            given = request.headers.get("Authorization", "")
            if not secrets.compare_digest(given.encode(), expected.encode()):
                return error_response(MockError(401, "Incorrect API key provided."))
        try:
            return await handler(request)
        except web.HTTPException as exc:  # unknown path / wrong method, in OpenAI's shape
            return error_response(MockError(exc.status, f"{exc.reason}: {request.path}"))

    async def _health(self, _request: web.Request) -> web.Response:
        return json_response({"status": "ok"})

    async def _models(self, _request: web.Request) -> web.Response:
        return json_response(shapes.models(self._state.models, 0))

    async def _model(self, request: web.Request) -> web.Response:
        name = request.match_info["model"]
        if name not in self._state.models:
            missing = MockError(404, f"The model '{name}' does not exist", param="model")
            return error_response(missing)
        return json_response(shapes.model_entry(name, 0))

    async def _stats(self, _request: web.Request) -> web.Response:
        return json_response(self._state.stats.as_dict())

    async def _requests(self, _request: web.Request) -> web.Response:
        return json_response({"requests": list(self._state.log)})

    async def _get_config(self, _request: web.Request) -> web.Response:
        return json_response(self._state.config.as_dict())

    async def _set_config(self, request: web.Request) -> web.Response:
        try:
            patch = msgspec.json.decode(await request.read())
        except msgspec.DecodeError:
            return error_response(MockError(400, "config body must be JSON"))
        try:
            self._state.config = self._state.config.patched(patch)
        except MockError as exc:
            return error_response(exc)
        return json_response(self._state.config.as_dict())

    async def _reset(self, _request: web.Request) -> web.Response:
        self._state.reset()
        return json_response({"status": "reset"})
