"""What the forwarder needs from a backend client, whichever one carries the bytes."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Protocol

from appliance.settings import Backend
from appliance.settings.loader import BackendCredentials


class UpstreamResponse(Protocol):
    """A backend's answer whose body is read once, either whole or chunk by chunk."""

    backend_id: str
    status: int
    content_type: str

    @property
    def is_event_stream(self) -> bool: ...

    def header(self, name: str) -> str | None:
        """A response header (read on error paths only: redirects, 429s)."""
        ...

    async def read(self) -> bytes:
        """The whole body; raises UpstreamTimeout or UpstreamStreamBroken."""
        ...

    async def next_chunk(self) -> bytes:
        """The next body bytes as they arrive, b"" at the end; raises
        UpstreamStreamIdleTimeout after the backend's stream_idle_timeout_s without any.
        Stopping early needs `close()`."""
        ...

    def close(self) -> None:
        """Drop the connection: closing (not releasing) tells the backend to stop generating."""
        ...


class BackendClient(Protocol):
    def update(
        self, backends: tuple[Backend, ...], credentials: Mapping[str, BackendCredentials]
    ) -> None:
        """Follow a config change; endpoints of removed backends stay (a request that
        picked one before the change still reaches it)."""
        ...

    async def open(self) -> None: ...

    async def close(self) -> None: ...

    async def probe(self, backend_id: str, timeout_s: float) -> bool:
        """GET the backend's health path; True on any 2xx within the timeout."""
        ...

    def address(self, backend_id: str) -> tuple[str, int]:
        """The backend's host and port."""
        ...

    async def post(
        self,
        backend_id: str,
        path: str,
        body: bytes,
        request_id: str,
        trace_headers: Mapping[str, str] | None = None,
    ) -> UpstreamResponse:
        """POST `body` to `{backend.url}/{path}`; returns once response headers arrive."""
        ...
