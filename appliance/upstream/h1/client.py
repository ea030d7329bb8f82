"""The built-in backend client: HTTP/1.1 on llhttp over pooled keep-alive connections.

Each backend's request head is mostly fixed: it is rendered once per endpoint and a request
adds its path, id, trace headers and length. Errors are `RouterError`s from the start:
connect failures and connect timeouts are UpstreamConnectError, no head within
`ttfb_timeout_s` or no end within `total_timeout_s` UpstreamTimeout, a cut body
UpstreamStreamBroken, silence mid-stream UpstreamStreamIdleTimeout.
"""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import Mapping

from appliance.errors import RouterError, UpstreamError
from appliance.settings import Backend
from appliance.settings.loader import BackendCredentials
from appliance.upstream.endpoints import Endpoint, endpoint
from appliance.upstream.h1.connection import BackendConnection
from appliance.upstream.h1.pool import Pool
from appliance.upstream.idle_watch import IdleWatch

_FORBIDDEN = frozenset("\r\n\0")


class H1Response:
    """An `UpstreamResponse` read straight off its connection."""

    __slots__ = ("_conn", "_pool", "_released", "_watch", "backend_id", "content_type", "status")

    def __init__(self, backend_id: str, conn: BackendConnection, pool: Pool, idle_s: float) -> None:
        self.backend_id = backend_id
        self._conn, self._pool = conn, pool
        self._released = False  # the connection went back: it may be serving someone else
        self.status = conn.status
        self.content_type = conn.headers.get("content-type", "application/json")
        self._watch = IdleWatch(idle_s, conn.fail)

    @property
    def is_event_stream(self) -> bool:
        return self.content_type.startswith("text/event-stream")

    def header(self, name: str) -> str | None:
        return self._conn.headers.get(name.lower())

    async def read(self) -> bytes:
        if self._released:  # read to its end already; the connection is someone else's
            return b""
        conn, parts = self._conn, []
        try:
            while chunk := await conn.chunk():
                parts.append(chunk)
        except BaseException:
            self.close()
            raise
        self._release()
        return parts[0] if len(parts) == 1 else b"".join(parts)

    async def next_chunk(self) -> bytes:
        if self._released:
            return b""
        self._watch.waiting()
        try:
            chunk = await self._conn.chunk()
        except BaseException:
            self.close()
            raise
        finally:
            self._watch.answered()
        if not chunk:
            self._watch.stop()
            self._release()
        return chunk

    def close(self) -> None:
        self._watch.stop()
        if not self._released:
            if not self._conn.finished():
                self._conn.abort()
            self._release()

    def _release(self) -> None:
        if not self._released:
            self._released = True
            self._pool.release(self._conn)


class _Target:
    """An endpoint with its requests rendered once: the probe whole, a POST up to its
    per-request lines (its request line once per path)."""

    __slots__ = ("_request_lines", "endpoint", "fixed", "invalid", "pool", "probe")

    def __init__(self, target: Endpoint, pool: Pool) -> None:
        self.endpoint, self.pool = target, pool
        self.invalid = not _FORBIDDEN.isdisjoint("".join(target.headers.values()))
        self.fixed = b"" if self.invalid else _header_block(target, target.headers)
        probe = f"GET {target.health_path} HTTP/1.1\r\n".encode("latin-1", "replace")
        self.probe = probe + _header_block(target, target.probe_headers) + b"\r\n"
        self._request_lines: dict[str, bytes] = {}

    def request_line(self, path: str) -> bytes:
        line = self._request_lines.get(path)
        if line is None:
            text = f"POST {self.endpoint.base_path}/{path} HTTP/1.1\r\n"
            line = self._request_lines[path] = text.encode("latin-1", "replace")
        return line


def _header_block(target: Endpoint, headers: Mapping[str, str]) -> bytes:
    # A host header in the backend's config names the server, as it would to aiohttp.
    lines = [] if "host" in headers else [f"host: {target.host_header}\r\n"]
    lines += (f"{name}: {value}\r\n" for name, value in headers.items())
    return "".join(lines).encode("latin-1", "replace")


class H1BackendClient:
    """A `BackendClient` on the built-in HTTP/1.1 client (`[server] upstream_client`)."""

    def __init__(
        self, backends: tuple[Backend, ...], credentials: Mapping[str, BackendCredentials]
    ) -> None:
        self._endpoints = {b.id: endpoint(b, credentials[b.id]) for b in backends}
        self._targets: dict[str, _Target] = {}
        self._pools: dict[tuple[str, int, bool], Pool] = {}
        self._tls: ssl.SSLContext | None = None
        self._open = False

    def update(
        self, backends: tuple[Backend, ...], credentials: Mapping[str, BackendCredentials]
    ) -> None:
        self._endpoints.update({b.id: endpoint(b, credentials[b.id]) for b in backends})
        self._targets.clear()

    async def open(self) -> None:
        self._open = True

    async def close(self) -> None:
        self._open = False
        for pool in self._pools.values():
            pool.close()
        self._pools.clear()
        self._targets.clear()

    def address(self, backend_id: str) -> tuple[str, int]:
        return self._endpoints[backend_id].address

    async def probe(self, backend_id: str, timeout_s: float) -> bool:
        if not self._open:
            return False
        target = self._target(backend_id)
        if target.invalid:  # the health path is percent-encoded: only headers can break lines
            return False
        try:
            async with asyncio.timeout(timeout_s):
                response = await self._exchange(target, target.probe, timeout_s, timeout_s)
                await response.read()
        except (RouterError, TimeoutError):
            return False
        return 200 <= response.status < 300

    async def post(
        self,
        backend_id: str,
        path: str,
        body: bytes,
        request_id: str,
        trace_headers: Mapping[str, str] | None = None,
    ) -> H1Response:
        if not self._open:
            raise UpstreamError("The backend client is not open.")
        target = self._target(backend_id)
        extra = f"x-request-id: {request_id}\r\n"
        checked = request_id
        if trace_headers:
            extra += "".join(f"{n}: {v}\r\n" for n, v in trace_headers.items())
            checked += "".join(trace_headers.values())
        if target.invalid or not _FORBIDDEN.isdisjoint(checked):
            raise UpstreamError("A header for the backend holds a line break; not sent.")
        head = (
            target.request_line(path)
            + target.fixed
            + f"{extra}content-length: {len(body)}\r\n\r\n".encode("latin-1", "replace")
        )
        backend = target.endpoint.backend
        return await self._exchange(
            target, [head, body], backend.ttfb_timeout_s, backend.total_timeout_s
        )

    async def _exchange(
        self, target: _Target, request: bytes | list[bytes], head_s: float, total_s: float
    ) -> H1Response:
        """Send on a pooled connection; the response once its head is in. The head's
        deadline counts from now: waiting for a free connection and connecting use it up."""
        backend = target.endpoint.backend
        now = asyncio.get_running_loop().time()
        head_at = now + head_s
        conn = await target.pool.acquire(backend.connect_timeout_s, head_at)
        try:
            conn.start(request, head_at, now + total_s)
            assert conn.head is not None
            await conn.head
        except BaseException:
            conn.abort()
            target.pool.release(conn)
            raise
        return H1Response(backend.id, conn, target.pool, backend.stream_idle_timeout_s)

    def _target(self, backend_id: str) -> _Target:
        target = self._targets.get(backend_id)
        if target is None:
            found = self._endpoints[backend_id]
            key = (found.host, found.port, found.tls)
            pool = self._pools.get(key)
            if pool is None:
                pool = self._pools[key] = Pool(found.host, found.port, self._context(found.tls))
            target = self._targets[backend_id] = _Target(found, pool)
        return target

    def _context(self, tls: bool) -> ssl.SSLContext | None:
        if not tls:
            return None
        if self._tls is None:
            self._tls = ssl.create_default_context()  # the system's CAs, host names checked
        return self._tls
