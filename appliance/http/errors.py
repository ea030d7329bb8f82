"""The one place errors become HTTP responses, in OpenAI's shape."""

from __future__ import annotations

from quart import Quart, Response, request
from werkzeug.exceptions import HTTPException

from appliance.errors import (
    InternalError,
    MethodNotAllowed,
    NotFound,
    PayloadTooLarge,
    RouterError,
    StoreUnavailable,
)
from appliance.http.api_routes import OPERATIONS
from appliance.http.context import request_context
from appliance.sqlite_support import StoreError
from appliance.telemetry.logging import get_logger

_log = get_logger("routerctl.http")
_BY_STATUS: dict[int, type[RouterError]] = {
    404: NotFound,
    413: PayloadTooLarge,
    405: MethodNotAllowed,
}


def render(error: RouterError) -> Response:
    request_context(request.scope).outcome = error.code
    return Response(
        error.body(),
        status=error.status,
        headers=error.headers(),
        content_type="application/json",
    )


def install_error_handlers(app: Quart) -> None:
    @app.errorhandler(RouterError)
    async def _router_error(error: RouterError) -> Response:
        return render(error)

    @app.errorhandler(StoreError)
    async def _store_error(error: StoreError) -> Response:
        return render(catalog_error(error, request_context(request.scope).request_id))

    @app.errorhandler(HTTPException)
    async def _http_error(error: HTTPException) -> Response:
        if error.code == 404:
            return render(NotFound(_not_served(request.method, request.path)))
        cls = _BY_STATUS.get(error.code or 500, InternalError)
        return render(cls())

    @app.errorhandler(Exception)
    async def _unexpected(error: Exception) -> Response:
        return render(catalog_error(error, request_context(request.scope).request_id))


# The public routes an org key may call, as the OpenAPI document lists them.
SERVED = ", ".join(f"{op.method.upper()} {op.path}" for op in OPERATIONS if op.auth == "api_key")


def _not_served(method: str, path: str) -> str:
    """The 404 message: the request's own method and path (bounded), and what is served."""
    shown = path if len(path) <= 200 else path[:200] + "…"
    if path.startswith("/v1/") and not path.startswith(("/v1/admin/", "/v1/status/")):
        return f"This router does not serve {method} {shown}. It serves {SERVED}."
    return f"No such route: {method} {shown}."


def catalog_error(error: Exception, request_id: str) -> RouterError:
    """The catalog error a client sees for `error`; failures not in the catalog are logged."""
    if isinstance(error, RouterError):
        return error
    if isinstance(error, StoreError):
        # A state store (SQLite file, overrides in etcd) failed: retriable, said without detail.
        _log.error("store_unavailable", request_id=request_id, error=str(error))
        return StoreUnavailable()
    # The client gets a generic message: exception text may carry internals or secrets.
    _log.error(
        "unhandled_error", request_id=request_id, error_type=type(error).__name__, exc_info=error
    )
    return InternalError()
