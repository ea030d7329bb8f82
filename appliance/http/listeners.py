"""Which listener a request came in on, and whether that listener serves its route.

With `[server] admin_listen` set to an address, one server holds two listeners: the admin
one serves the admin routes, status and the OpenAPI document; the public one serves the
rest. A request is told apart by the port of `scope["server"]`, the local address of its
connection (a wildcard bind reports the address the client reached, so the host cannot be
compared; `settings` makes the admin port one of its own).
"""

from __future__ import annotations

from collections.abc import MutableMapping
from typing import Any
from urllib.parse import urlsplit

from appliance.errors import NotFound
from appliance.settings import ADMIN_ON_PUBLIC, ServerSettings, parse_listen

ADMIN_PREFIX = "/v1/admin/"
# What the admin listener serves: probes, `routerctl doctor --url` and the admin CLI need
# only these, so one URL does for all of them.
ADMIN_LISTENER_SERVES = (ADMIN_PREFIX, "/v1/status/", "/v1/openapi.json")


class ListenerSplit:
    """Refuses, with a 404, the routes the listener a request came in on does not serve."""

    __slots__ = ("_admin_port",)

    def __init__(self, admin_port: int) -> None:
        self._admin_port = admin_port

    def refusal(self, scope: MutableMapping[str, Any]) -> NotFound | None:
        """The error to answer with, or None when this listener serves the route."""
        path: str = scope["path"]
        server = scope.get("server")  # absent under test clients: the public listener
        on_admin = server is not None and server[1] == self._admin_port
        # The usual request, an API path on the public listener, ends here.
        if not on_admin and path.startswith("/v1/") and not path.startswith(ADMIN_PREFIX):
            return None
        if not path.startswith("/"):  # absolute form: the path part is what gets routed
            path = urlsplit(path).path
        if on_admin:
            if path.startswith(ADMIN_LISTENER_SERVES):
                return None
            return NotFound(
                f"{scope['method']} {_shown(path)} is not served on the admin listener; "
                "it serves /v1/admin/, /v1/status/ and /v1/openapi.json."
            )
        if path.startswith(ADMIN_PREFIX):
            return NotFound(
                f"{scope['method']} {_shown(path)} is served on the admin listener, not here."
            )
        return None


def listener_split(server: ServerSettings) -> ListenerSplit | None:
    """The split for these settings; None when the public listener serves every route."""
    if server.admin_listen == ADMIN_ON_PUBLIC:
        return None
    return ListenerSplit(parse_listen(server.admin_listen)[1])


def _shown(path: str) -> str:
    return path if len(path) <= 200 else path[:200] + "…"
