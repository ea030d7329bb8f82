"""The aiohttp backend client: one pooled session, timeouts, errors translated at the edge.

No aiohttp exception leaves this module: callers see `RouterError` subclasses only.
"""

from __future__ import annotations

import asyncio
import io
from collections.abc import Mapping

import aiohttp

from appliance.errors import (
    UpstreamConnectError,
    UpstreamError,
    UpstreamStreamBroken,
    UpstreamTimeout,
)
from appliance.settings import Backend
from appliance.settings.loader import BackendCredentials
from appliance.upstream.endpoints import endpoint
from appliance.upstream.idle_watch import IdleWatch

# Connections kept per backend between requests; bursts beyond it open new ones.
_POOL_LIMIT = 1024
_KEEPALIVE_S = 30.0
# aiohttp sends bytes bodies in one write; above this it wants a stream so the loop is not held.
_LARGE_BODY = 1024 * 1024


class AiohttpResponse:
    """An `UpstreamResponse` over aiohttp's."""

    __slots__ = ("_response", "_watch", "backend_id", "content_type", "status")

    def __init__(
        self, backend_id: str, response: aiohttp.ClientResponse, idle_timeout_s: float = 60.0
    ) -> None:
        self.backend_id = backend_id
        self._response = response
        self.status = response.status
        self.content_type = response.headers.get("content-type", "application/json")
        self._watch = IdleWatch(idle_timeout_s, response.content.set_exception)

    @property
    def is_event_stream(self) -> bool:
        return self.content_type.startswith("text/event-stream")

    def header(self, name: str) -> str | None:
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
        self._watch.waiting()
        try:
            chunk = await self._response.content.readany()
        except TimeoutError:
            raise UpstreamTimeout() from None
        except aiohttp.ClientError:
            raise UpstreamStreamBroken() from None
        finally:
            self._watch.answered()
        if not chunk:
            self._watch.stop()
            self._response.release()
        return chunk

    def close(self) -> None:
        self._watch.stop()
        self._response.close()


class AiohttpBackendClient:
    """A `BackendClient` over one pooled aiohttp session (`[server] upstream_client =
    "aiohttp"`)."""

    def __init__(
        self, backends: tuple[Backend, ...], credentials: Mapping[str, BackendCredentials]
    ) -> None:
        self._endpoints = {b.id: endpoint(b, credentials[b.id]) for b in backends}
        self._session: aiohttp.ClientSession | None = None

    def update(
        self, backends: tuple[Backend, ...], credentials: Mapping[str, BackendCredentials]
    ) -> None:
        self._endpoints.update({b.id: endpoint(b, credentials[b.id]) for b in backends})

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
        if self._session is None:
            return False
        target = self._endpoints[backend_id]
        try:
            async with self._session.get(
                target.health_url,
                headers=target.probe_headers,
                timeout=aiohttp.ClientTimeout(total=timeout_s),
                allow_redirects=False,
            ) as response:
                return 200 <= response.status < 300
        except (aiohttp.ClientError, TimeoutError):
            return False

    def address(self, backend_id: str) -> tuple[str, int]:
        return self._endpoints[backend_id].address

    async def post(
        self,
        backend_id: str,
        path: str,
        body: bytes,
        request_id: str,
        trace_headers: Mapping[str, str] | None = None,
    ) -> AiohttpResponse:
        # trace_headers (W3C traceparent, tracestate) carry the trace to the backend.
        if self._session is None:
            raise UpstreamError("The backend client is not open.")
        target = self._endpoints[backend_id]
        headers = {**target.headers, "x-request-id": request_id}
        if trace_headers is not None:
            headers.update(trace_headers)
        url = f"{target.base_url}/{path}"
        try:
            async with asyncio.timeout(target.backend.ttfb_timeout_s):
                response = await self._session.post(
                    url,
                    data=io.BytesIO(body) if len(body) >= _LARGE_BODY else body,
                    headers=headers,
                    timeout=_timeout(target.backend),
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
        return AiohttpResponse(backend_id, response, target.backend.stream_idle_timeout_s)


def _timeout(backend: Backend) -> aiohttp.ClientTimeout:
    return aiohttp.ClientTimeout(
        total=backend.total_timeout_s, sock_connect=backend.connect_timeout_s
    )
