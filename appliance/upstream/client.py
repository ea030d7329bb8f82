"""The backend client: one pooled aiohttp session, timeouts, and errors translated at the edge.

No aiohttp exception leaves this module: callers see `RouterError` subclasses only.
"""

from __future__ import annotations

import asyncio
import io
from collections.abc import Mapping
from dataclasses import dataclass
from urllib.parse import urlsplit

import aiohttp

from appliance.errors import (
    UpstreamConnectError,
    UpstreamError,
    UpstreamStreamBroken,
    UpstreamStreamIdleTimeout,
    UpstreamTimeout,
)
from appliance.settings import Backend
from appliance.settings.loader import BackendCredentials

# Connections kept per backend between requests; bursts beyond it open new ones.
_POOL_LIMIT = 1024
_KEEPALIVE_S = 30.0
# aiohttp sends bytes bodies in one write; above this it wants a stream so the loop is not held.
_LARGE_BODY = 1024 * 1024


@dataclass(frozen=True, slots=True)
class _BackendEndpoint:
    backend: Backend
    base_url: str
    health_url: str
    headers: Mapping[str, str]
    probe_headers: Mapping[str, str]
    timeout: aiohttp.ClientTimeout
    address: tuple[str, int]  # host and port, as tracing names the server


class UpstreamResponse:
    """A backend's answer whose body is read once, either whole or chunk by chunk.

    Chunk by chunk, a watchdog ends the read when the backend stays silent for longer than
    `idle_timeout_s`. It is lazy: each wait notes the time, and one timer per idle period
    checks it, so a chunk costs a clock read, not a timer.
    """

    __slots__ = (
        "_idle_s",
        "_loop",
        "_response",
        "_since",
        "_timer",
        "_waiting",
        "backend_id",
        "content_type",
        "status",
    )

    def __init__(
        self, backend_id: str, response: aiohttp.ClientResponse, idle_timeout_s: float = 60.0
    ) -> None:
        self.backend_id = backend_id
        self._response = response
        self.status = response.status
        self.content_type = response.headers.get("content-type", "application/json")
        self._idle_s = idle_timeout_s
        self._loop = asyncio.get_running_loop()
        self._since = 0.0
        self._waiting = False
        self._timer: asyncio.TimerHandle | None = None

    @property
    def is_event_stream(self) -> bool:
        return self.content_type.startswith("text/event-stream")

    def header(self, name: str) -> str | None:
        """A response header (read on error paths only: redirects, 429s)."""
        return self._response.headers.get(name)

    async def read(self) -> bytes:
        try:
            return await self._response.read()
        except TimeoutError:
            raise UpstreamTimeout() from None
        except aiohttp.ClientError:
            raise UpstreamStreamBroken() from None
        finally:
            self._response.release()

    async def next_chunk(self) -> bytes:
        """The next body bytes as they arrive, b"" at the end; raises UpstreamStreamIdleTimeout
        after `idle_timeout_s` without any. Stopping early needs `close()`."""
        self._since = self._loop.time()
        if self._timer is None:
            self._timer = self._loop.call_at(self._since + self._idle_s, self._watch)
        self._waiting = True
        try:
            chunk = await self._response.content.readany()
        except TimeoutError:
            raise UpstreamTimeout() from None
        except aiohttp.ClientError:
            raise UpstreamStreamBroken() from None
        finally:
            self._waiting = False
        if not chunk:
            self._stop_watch()
            self._response.release()
        return chunk

    def close(self) -> None:
        """Drop the connection: closing (not releasing) tells the backend to stop generating."""
        self._stop_watch()
        self._response.close()

    def _watch(self) -> None:
        now = self._loop.time()
        # A millisecond of slack: a timer may fire a clock tick early.
        if self._waiting and now - self._since >= self._idle_s - 0.001:
            self._timer = None
            self._response.content.set_exception(
                UpstreamStreamIdleTimeout(
                    f"The backend's stream was silent for {self._idle_s:g} s "
                    "(its stream_idle_timeout_s)."
                )
            )
            return
        base = self._since if self._waiting else now
        self._timer = self._loop.call_at(base + self._idle_s, self._watch)

    def _stop_watch(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None


class BackendClient:
    """Sends request bodies to configured backends over one pooled session."""

    def __init__(
        self, backends: tuple[Backend, ...], credentials: Mapping[str, BackendCredentials]
    ) -> None:
        self._endpoints = {b.id: _endpoint(b, credentials[b.id]) for b in backends}
        self._session: aiohttp.ClientSession | None = None

    def update(
        self, backends: tuple[Backend, ...], credentials: Mapping[str, BackendCredentials]
    ) -> None:
        """Follow a config change. Endpoints of removed backends stay: a request that picked
        one before the change still reaches it (a later config may bring the id back)."""
        self._endpoints.update({b.id: _endpoint(b, credentials[b.id]) for b in backends})

    async def open(self) -> None:
        connector = aiohttp.TCPConnector(
            limit=_POOL_LIMIT,
            limit_per_host=0,
            keepalive_timeout=_KEEPALIVE_S,
            ttl_dns_cache=60,
        )
        # Timeouts are per request (per backend); the session has none of its own.
        self._session = aiohttp.ClientSession(
            connector=connector,
            timeout=aiohttp.ClientTimeout(total=None),
            auto_decompress=False,
            skip_auto_headers=("User-Agent",),
        )

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def probe(self, backend_id: str, timeout_s: float) -> bool:
        """GET the backend's health path; True on any 2xx within the timeout."""
        if self._session is None:
            return False
        endpoint = self._endpoints[backend_id]
        try:
            async with self._session.get(
                endpoint.health_url,
                headers=endpoint.probe_headers,
                timeout=aiohttp.ClientTimeout(total=timeout_s),
                allow_redirects=False,
            ) as response:
                return 200 <= response.status < 300
        except (aiohttp.ClientError, TimeoutError):
            return False

    def address(self, backend_id: str) -> tuple[str, int]:
        """The backend's host and port."""
        return self._endpoints[backend_id].address

    async def post(
        self,
        backend_id: str,
        path: str,
        body: bytes,
        request_id: str,
        trace_headers: Mapping[str, str] | None = None,
    ) -> UpstreamResponse:
        """POST `body` to `{backend.url}/{path}`; returns once response headers arrive.

        `trace_headers` (W3C `traceparent`, `tracestate`) carry the trace to the backend."""
        if self._session is None:
            raise UpstreamError("The backend client is not open.")
        endpoint = self._endpoints[backend_id]
        headers = {**endpoint.headers, "x-request-id": request_id}
        if trace_headers is not None:
            headers.update(trace_headers)
        url = f"{endpoint.base_url}/{path}"
        try:
            async with asyncio.timeout(endpoint.backend.ttfb_timeout_s):
                response = await self._session.post(
                    url,
                    data=io.BytesIO(body) if len(body) >= _LARGE_BODY else body,
                    headers=headers,
                    timeout=endpoint.timeout,
                    allow_redirects=False,
                )
        except aiohttp.ClientConnectorError:
            raise UpstreamConnectError() from None
        except aiohttp.ConnectionTimeoutError:
            raise UpstreamConnectError("Connecting to a backend timed out.") from None
        except TimeoutError:
            raise UpstreamTimeout() from None
        except aiohttp.ClientError:
            raise UpstreamError("The backend closed the connection without answering.") from None
        return UpstreamResponse(backend_id, response, endpoint.backend.stream_idle_timeout_s)


def _endpoint(backend: Backend, credentials: BackendCredentials) -> _BackendEndpoint:
    fixed = {
        **{k.lower(): v for k, v in backend.headers.items()},
        **credentials.headers,
    }
    url = urlsplit(backend.url)
    default_port = 443 if url.scheme == "https" else 80
    return _BackendEndpoint(
        backend=backend,
        base_url=backend.url.rstrip("/"),
        health_url=_origin(backend.url) + backend.health_path,
        headers={"content-type": "application/json", "accept-encoding": "identity", **fixed},
        probe_headers=fixed,
        timeout=aiohttp.ClientTimeout(
            total=backend.total_timeout_s, sock_connect=backend.connect_timeout_s
        ),
        address=(url.hostname or "", url.port or default_port),
    )


def _origin(url: str) -> str:
    """scheme://host:port of a URL: health paths live at the server's root, not under /v1."""
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}"
