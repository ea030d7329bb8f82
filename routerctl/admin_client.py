"""A small synchronous client of the router's admin API, for the admin commands of the CLI.

Every failure becomes one `AdminError` whose message is one readable line for the operator:
what went wrong and, where there is one, what to do about it.
"""

from __future__ import annotations

import http.client
import os
import socket
import urllib.error
import urllib.parse
import urllib.request
from typing import Any, TypeVar

import msgspec

from appliance.http.admin_shapes import (
    AuditEvents,
    AuditEventView,
    BackendList,
    BackendState,
    OverrideList,
    OverrideView,
    Restored,
)
from appliance.usage.buffer_service import LiveBufferReport, ReplayResult

DEFAULT_URL = "http://127.0.0.1:8081"  # [server] admin_listen's default
URL_ENV = "ROUTERCTL_URL"
TOKEN_ENV = "ROUTERCTL_TOKEN"  # noqa: S105 - the variable's name, not a token
DEFAULT_TIMEOUT_S = 5.0
_MAX_MESSAGE = 300

T = TypeVar("T")


class AdminError(Exception):
    """Anything that kept an admin call from succeeding; `str()` is one line."""


# The CLI's names for the answers: the Structs the router's routes encode them with.
OverrideInfo = OverrideView
BackendInfo = BackendState
AuditInfo = AuditEventView


class _ErrorDetail(msgspec.Struct, frozen=True):
    message: str = ""
    code: str | None = None


class _ErrorBody(msgspec.Struct, frozen=True):
    error: _ErrorDetail


class AdminClient:
    def __init__(self, url: str, token: str | None, timeout_s: float = DEFAULT_TIMEOUT_S) -> None:
        parsed = urllib.parse.urlsplit(url)
        if parsed.scheme not in ("http", "https") or not parsed.netloc:
            raise AdminError(f"invalid router URL {url!r}: expected http://HOST:PORT")
        self.url = url.rstrip("/")
        self._token = token
        self._timeout_s = timeout_s
        # No proxies: an http_proxy meant for the internet must not see admin tokens.
        self._opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))

    @classmethod
    def from_env(cls, url: str | None = None, timeout_s: float = DEFAULT_TIMEOUT_S) -> AdminClient:
        """`url`, else $ROUTERCTL_URL, else the default; the token from $ROUTERCTL_TOKEN."""
        token = os.environ.get(TOKEN_ENV)
        return cls(url or os.environ.get(URL_ENV) or DEFAULT_URL, token, timeout_s)

    @property
    def has_token(self) -> bool:
        return bool(self._token)

    def status(self, path: str) -> tuple[int, dict[str, Any]]:
        """A status route's HTTP status and JSON body (readyz answers 503 with a body)."""
        req = urllib.request.Request(self.url + path, method="GET")  # noqa: S310 - scheme checked in __init__
        req.add_header("accept", "application/json")
        status, raw = self._exchange(req)
        try:
            body = msgspec.json.decode(raw, type=dict[str, Any])
        except (msgspec.DecodeError, msgspec.ValidationError):
            raise AdminError(f"{self.url}{path} answered HTTP {status} without JSON") from None
        return status, body

    def backends(self) -> list[BackendInfo]:
        return self._call("GET", "/v1/admin/backends", None, BackendList).data

    def degrade(
        self, backend_id: str, factor: float, reason: str, ttl_s: float | None
    ) -> OverrideInfo:
        body = {"factor": factor, "reason": reason, "ttl_s": ttl_s}
        return self._call("POST", _backend_path(backend_id, "degrade"), body, OverrideInfo)

    def drain(self, backend_id: str, reason: str, ttl_s: float | None) -> OverrideInfo:
        body = {"reason": reason, "ttl_s": ttl_s}
        return self._call("POST", _backend_path(backend_id, "drain"), body, OverrideInfo)

    def restore(self, backend_id: str, reason: str) -> list[OverrideInfo]:
        path = _backend_path(backend_id, "restore")
        return self._call("POST", path, {"reason": reason}, Restored).removed

    def overrides(self) -> list[OverrideInfo]:
        return self._call("GET", "/v1/admin/overrides", None, OverrideList).data

    def pin(self, model: str, backend_id: str, reason: str, ttl_s: float | None) -> OverrideInfo:
        body: dict[str, object] = {"kind": "pin", "model": model, "backend": backend_id}
        body.update(reason=reason, ttl_s=ttl_s)
        return self._call("POST", "/v1/admin/overrides", body, OverrideInfo)

    def clear(self, override_id: str, reason: str) -> OverrideInfo:
        path = f"/v1/admin/overrides/{_segment(override_id)}"
        return self._call("DELETE", path, {"reason": reason}, OverrideInfo)

    def audit(
        self,
        *,
        request_id: str | None = None,
        org: str | None = None,
        kind: str | None = None,
        since: float | str | None = None,
        until: float | str | None = None,
        limit: int = 100,
    ) -> list[AuditInfo]:
        """Audit events matching every given filter, newest first; times are unix seconds or ISO."""
        params = {
            "request_id": request_id,
            "org": org,
            "kind": kind,
            "since": _when(since),
            "until": _when(until),
            "limit": str(limit),
        }
        query = urllib.parse.urlencode({k: v for k, v in params.items() if v is not None})
        return self._call("GET", f"/v1/admin/audit?{query}", None, AuditEvents).data

    def buffer(self) -> LiveBufferReport:
        return self._call("GET", "/v1/admin/buffer", None, LiveBufferReport)

    def buffer_replay(self, limit: int | None, dry_run: bool) -> ReplayResult:
        body = {"limit": limit, "dry_run": dry_run}
        return self._call("POST", "/v1/admin/buffer/replay", body, ReplayResult)

    def _call(self, method: str, path: str, body: object, shape: type[T]) -> T:
        if not self._token:
            raise AdminError(
                f"{TOKEN_ENV} is not set: export an admin token of the router "
                "(mint one with `routerctl keys create-admin`)"
            )
        data = None if body is None else msgspec.json.encode(body)
        req = urllib.request.Request(self.url + path, data=data, method=method)  # noqa: S310 - scheme checked in __init__
        req.add_header("authorization", f"Bearer {self._token}")
        req.add_header("accept", "application/json")
        if data is not None:
            req.add_header("content-type", "application/json")
        raw = self._send(req)
        try:
            return msgspec.json.decode(raw, type=shape)
        except (msgspec.DecodeError, msgspec.ValidationError) as exc:
            raise AdminError(
                f"unexpected answer from {self.url}{path} ({exc}); is this a routerctl router?"
            ) from None

    def _send(self, req: urllib.request.Request) -> bytes:
        status, payload = self._exchange(req)
        if status >= 400:
            raise AdminError(http_error_message(self.url, status, payload))
        return payload

    def _exchange(self, req: urllib.request.Request) -> tuple[int, bytes]:
        """The HTTP status and body of any answer; AdminError when there is no answer."""
        try:
            with self._opener.open(req, timeout=self._timeout_s) as response:
                return int(response.status), bytes(response.read())
        except urllib.error.HTTPError as exc:
            with exc:
                return exc.code, exc.read()
        except urllib.error.URLError as exc:
            message = connection_error_message(self.url, exc.reason, self._timeout_s)
            raise AdminError(message) from None
        except (OSError, http.client.HTTPException) as exc:
            raise AdminError(connection_error_message(self.url, exc, self._timeout_s)) from None


def http_error_message(url: str, status: int, body: bytes) -> str:
    """One line for an HTTP error answer, using the router's own message where it sent one."""
    try:
        detail = msgspec.json.decode(body, type=_ErrorBody).error
    except (msgspec.DecodeError, msgspec.ValidationError):
        detail = _ErrorDetail()
    message = _one_line(detail.message) or f"HTTP {status} without an error message"
    if status == 401:
        return f"admin token rejected: {message} Set {TOKEN_ENV} to an admin token of this router."
    if status == 403:
        return f"permission denied: {message}"
    if status == 404 and detail.code in (None, "not_found"):
        return f"{message} Is {url} a routerctl router with the admin API?"
    if status == 404:
        return message
    code = f" {detail.code}" if detail.code else ""
    return f"router answered HTTP {status}{code}: {message}"


def connection_error_message(url: str, reason: object, timeout_s: float | None = None) -> str:
    """One line for a request that got no HTTP answer at all."""
    if isinstance(reason, TimeoutError):
        within = f" within {timeout_s:g} s" if timeout_s is not None else " in time"
        return f"router at {url} did not answer{within}"
    if isinstance(reason, ConnectionRefusedError):
        return f"cannot reach router at {url}: connection refused"
    if isinstance(reason, socket.gaierror):
        return f"cannot reach router at {url}: unknown host"
    if isinstance(reason, OSError) and reason.strerror:
        return f"cannot reach router at {url}: {reason.strerror.lower()}"
    return f"cannot reach router at {url}: {_one_line(str(reason)) or type(reason).__name__}"


def _backend_path(backend_id: str, action: str) -> str:
    return f"/v1/admin/backends/{_segment(backend_id)}/{action}"


def _when(value: float | str | None) -> str | None:
    """A time for the query string: floats in plain decimals (the API takes no exponent)."""
    if value is None or isinstance(value, str):
        return value
    return f"{value:.6f}".rstrip("0").rstrip(".")


def _segment(value: str) -> str:
    return urllib.parse.quote(value, safe="")


def _one_line(text: str) -> str:
    flat = " ".join(text.split())
    return flat if len(flat) <= _MAX_MESSAGE else flat[: _MAX_MESSAGE - 1] + "…"
