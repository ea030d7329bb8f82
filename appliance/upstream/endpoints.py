"""A configured backend as both clients need it: URLs, fixed headers, host and port."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from urllib.parse import quote, urlsplit

from appliance.settings import Backend
from appliance.settings.loader import BackendCredentials

# RFC 3986 pchar, '/' and '%' (a path already percent-encoded stays as it is, as in aiohttp).
_PATH_SAFE = "/%:@!$&'()*+,;=-._~"


@dataclass(frozen=True, slots=True)
class Endpoint:
    backend: Backend
    base_url: str
    base_path: str  # the URL's path without its trailing "/": requests go to base_path/path
    health_url: str
    health_path: str
    headers: Mapping[str, str]  # every POST's, secrets included
    probe_headers: Mapping[str, str]
    tls: bool
    host: str
    port: int
    host_header: str  # host[:port] as the URL has it

    @property
    def address(self) -> tuple[str, int]:
        """Host and port, as tracing names the server."""
        return self.host, self.port


def endpoint(backend: Backend, credentials: BackendCredentials) -> Endpoint:
    fixed = {
        **{k.lower(): v for k, v in backend.headers.items()},
        **credentials.headers,
    }
    url = urlsplit(backend.url)
    tls = url.scheme == "https"
    default_port = 443 if tls else 80
    return Endpoint(
        backend=backend,
        base_url=backend.url.rstrip("/"),
        base_path=quote(url.path.rstrip("/"), safe=_PATH_SAFE),
        health_url=_origin(backend.url) + backend.health_path,
        health_path=quote(backend.health_path, safe=_PATH_SAFE),
        headers={"content-type": "application/json", "accept-encoding": "identity", **fixed},
        probe_headers=fixed,
        tls=tls,
        host=url.hostname or "",
        port=url.port or default_port,
        host_header=url.netloc.rpartition("@")[2],
    )


def _origin(url: str) -> str:
    """scheme://host:port of a URL: health paths live at the server's root, not under /v1."""
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}"
