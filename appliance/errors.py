"""The error catalog: one class per error a client can see, rendered in one place.

Handlers and adapters raise these; `http.errors` turns them into OpenAI's error JSON.
Status codes are the ones OpenAI's SDKs map to exception classes, so clients retry
exactly what is worth retrying (`retriable`).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import ClassVar

import msgspec


class RouterError(Exception):
    """Base of every error the router answers with."""

    status: ClassVar[int] = 500
    type: ClassVar[str] = "server_error"
    code: ClassVar[str] = "internal_error"
    retriable: ClassVar[bool] = False
    default_message: ClassVar[str] = "The router failed to handle the request."

    def __init__(
        self,
        message: str | None = None,
        *,
        param: str | None = None,
        retry_after_s: float | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        self.message = message or self.default_message
        self.param = param
        self.retry_after_s = retry_after_s
        self.extra_headers = dict(headers or {})
        super().__init__(self.message)

    def body(self) -> bytes:
        """OpenAI's error shape: {"error": {"message", "type", "param", "code"}}."""
        return encode_error(self.message, self.type, self.code, self.param)

    def headers(self) -> dict[str, str]:
        headers = dict(self.extra_headers)
        if self.retry_after_s is not None:
            # Whole seconds, rounded up: a client retrying early is denied again.
            headers["retry-after"] = str(max(1, math.ceil(self.retry_after_s)))
        return headers


class ErrorDetail(msgspec.Struct, frozen=True):
    message: str
    type: str
    param: str | None
    code: str | None  # always set by the router; a backend's relayed error may have none


class ErrorEnvelope(msgspec.Struct, frozen=True):
    """OpenAI's error shape, the body of every error answer (and the OpenAPI document's)."""

    error: ErrorDetail


def encode_error(message: str, type_: str, code: str, param: str | None = None) -> bytes:
    return msgspec.json.encode(ErrorEnvelope(ErrorDetail(message, type_, param, code)))


class InvalidRequest(RouterError):
    status = 400
    type = "invalid_request_error"
    code = "invalid_request"
    default_message = "The request is not valid."


class InvalidJson(InvalidRequest):
    code = "invalid_json"
    default_message = "The request body is not valid JSON."


class RequestExceedsLimit(InvalidRequest):
    """A request larger than a whole minute of its tokens-per-minute limit: it could never
    be admitted, so it is refused outright (400, not a retriable 429) and reserves nothing."""

    code = "request_exceeds_limit"
    default_message = "The request needs more tokens than its tokens-per-minute limit allows."


class InvalidApiKey(RouterError):
    status = 401
    type = "invalid_request_error"
    code = "invalid_api_key"
    default_message = "Missing or unknown API key. Send it as 'Authorization: Bearer <key>'."


class RevokedApiKey(InvalidApiKey):
    """A disabled key: answered exactly as an unknown one, but the router's own access log
    names the key and org (never sent to the client), so operators see a revoked key in use."""

    def __init__(self, key_id: str, org_id: str) -> None:
        super().__init__("Incorrect API key provided.")
        self.key_id, self.org_id = key_id, org_id


class OrgDisabled(RouterError):
    status = 403
    type = "invalid_request_error"
    code = "organization_disabled"
    default_message = "The organization of this API key is disabled."


class InvalidAdminToken(RouterError):
    status = 401
    type = "invalid_request_error"
    code = "invalid_admin_token"
    default_message = "Missing or unknown admin token. Send it as 'Authorization: Bearer <token>'."


class InsufficientRole(RouterError):
    status = 403
    type = "invalid_request_error"
    code = "insufficient_role"
    default_message = "This admin token's role may not do this; it needs the operator role."


class NotFound(RouterError):
    status = 404
    type = "invalid_request_error"
    code = "not_found"
    default_message = "No such route."


class ModelNotFound(RouterError):
    status = 404
    type = "invalid_request_error"
    code = "model_not_found"
    default_message = "The model does not exist or you do not have access to it."


class BackendNotFound(RouterError):
    status = 404
    type = "invalid_request_error"
    code = "backend_not_found"
    default_message = "No backend has this id."


class OverrideNotFound(RouterError):
    status = 404
    type = "invalid_request_error"
    code = "override_not_found"
    default_message = "No override in force has this id."


class UsageRecordNotFound(RouterError):
    """Also for another org's record: ids cannot be probed."""

    status = 404
    type = "invalid_request_error"
    code = "usage_record_not_found"
    default_message = "No usage record with this id for your organization."


class MethodNotAllowed(RouterError):
    status = 405
    type = "invalid_request_error"
    code = "method_not_allowed"
    default_message = "This method is not allowed on this route."


class RequestTimeout(RouterError):
    status = 408
    type = "invalid_request_error"
    code = "request_timeout"
    default_message = "The request body arrived too slowly."


class PayloadTooLarge(RouterError):
    status = 413
    type = "invalid_request_error"
    code = "request_too_large"
    default_message = "The request body is larger than the router accepts."


class HeadersTooLarge(RouterError):
    status = 431
    type = "invalid_request_error"
    code = "headers_too_large"
    default_message = "The request headers are larger than the router accepts."


class RateLimitExceeded(RouterError):
    status = 429
    type = "requests"
    code = "rate_limit_exceeded"
    retriable = True
    default_message = "Rate limit reached; retry after the time in Retry-After."


class ConcurrencyLimitExceeded(RouterError):
    status = 429
    type = "requests"
    code = "concurrency_limit_exceeded"
    retriable = True
    default_message = "Too many requests in flight; retry when one finishes."


class BudgetExceeded(RouterError):
    """Not retriable: SDKs must not retry a spent budget forever (OpenAI's insufficient_quota)."""

    status = 429
    type = "insufficient_quota"
    code = "budget_exceeded"
    default_message = "The organization's monthly budget is spent."


class InternalError(RouterError):
    """Anything unexpected: the message never carries the exception's text."""

    retriable = True


class UpstreamError(RouterError):
    status = 502
    type = "server_error"
    code = "upstream_error"
    retriable = True
    default_message = "The backend answered with an error."


class UpstreamConnectError(UpstreamError):
    code = "upstream_connect_error"
    default_message = "Could not connect to a backend for this model."


class UpstreamStreamBroken(UpstreamError):
    code = "upstream_stream_broken"
    default_message = "The backend stopped in the middle of the response."


class UpstreamInvalidResponse(UpstreamError):
    code = "upstream_invalid_response"
    default_message = "The backend's answer is not valid JSON."


class UpstreamRedirect(UpstreamError):
    """Redirects are never followed: a backend URL that redirects is misconfigured."""

    code = "upstream_redirect"
    default_message = "The backend answered with a redirect, which the router does not follow."


class UpstreamRateLimited(RouterError):
    """A backend's own 429, told apart from the router's limits (rate_limit_exceeded)."""

    status = 429
    type = "requests"
    code = "upstream_rate_limited"
    retriable = True
    default_message = "The backend is rate limiting; retry after the time in Retry-After."
    rest_s: float | None = None  # the backend's own Retry-After, when it sent one


class BackendsSaturated(RouterError):
    status = 503
    type = "server_error"
    code = "backends_saturated"
    retriable = True
    default_message = "Every backend for this model is at its concurrency limit; retry shortly."


class NoBackendAvailable(RouterError):
    status = 503
    type = "server_error"
    code = "no_backend_available"
    retriable = True
    default_message = "Every backend for this model is drained or has already failed this request."


class UsageBufferFull(RouterError):
    status = 503
    type = "server_error"
    code = "usage_buffer_full"
    retriable = True
    default_message = (
        "The usage buffer is full; the router accepts no new requests until it drains."
    )


class LimiterUnavailable(RouterError):
    status = 503
    type = "server_error"
    code = "limiter_unavailable"
    retriable = True
    default_message = "Rate limits cannot be checked right now; retry shortly."


class UpstreamTimeout(RouterError):
    status = 504
    type = "server_error"
    code = "upstream_timeout"
    retriable = True
    default_message = "The backend did not answer in time."


class UpstreamStreamIdleTimeout(UpstreamTimeout):
    code = "upstream_stream_idle_timeout"
    default_message = "The backend's stream went silent for longer than its idle timeout."


def catalog() -> list[type[RouterError]]:
    """Every concrete error class, for docs and tests (found from the subclasses, not by hand)."""
    found: list[type[RouterError]] = []
    pending = [(RouterError, sub) for sub in RouterError.__subclasses__()]
    while pending:
        parent, cls = pending.pop()
        if cls.code != parent.code:  # not a variant answered exactly as its parent
            found.append(cls)
        pending.extend((cls, sub) for sub in cls.__subclasses__())
    return sorted(found, key=lambda c: (c.status, c.code))


class UsageSinkUnavailable(RouterError):
    status = 503
    type = "server_error"
    code = "usage_sink_unavailable"
    retriable = True
    default_message = "The usage sink did not acknowledge; the records stay in the outbox."


class ConfigInvalid(RouterError):
    status = 400
    type = "invalid_request_error"
    code = "config_invalid"
    default_message = "The config file is invalid; the running config is unchanged."


class StoreUnavailable(RouterError):
    status = 503
    type = "server_error"
    code = "store_unavailable"
    retriable = True
    default_message = (
        "A store the router needs for this (its state files, or etcd for shared overrides) "
        "is unavailable; nothing was changed. Try again shortly."
    )
