"""Every route the router serves, as its OpenAPI document describes it: one entry a route.

A route added to the app without an entry here fails tests/unit/test_openapi.py, and so
does an entry without a route. The shapes are the Structs the routes themselves answer with.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

from appliance.audit.events import KINDS
from appliance.http.admin import ClearBody, DegradeBody, DrainBody, PinBody, RestoreBody
from appliance.http.admin_shapes import (
    AuditEvents,
    BackendList,
    OverrideList,
    OverrideView,
    Restored,
)
from appliance.http.buffer_admin import ReplayBody
from appliance.http.config_admin import Reloaded
from appliance.http.lookup import MAX_LIMIT, REQUEST_ID
from appliance.http.openai_shapes import (
    ChatCompletion,
    ChatCompletionRequest,
    Completion,
    CompletionRequest,
    EmbeddingList,
    EmbeddingRequest,
    Model,
    ModelList,
    ResponseObject,
    ResponsesRequest,
)
from appliance.http.status import Liveness, Ready
from appliance.usage.buffer_service import LiveBufferReport, ReplayResult
from appliance.usage.record import UsageRecord

Auth = Literal["none", "api_key", "viewer", "operator"]


@dataclass(frozen=True, slots=True)
class Query:
    name: str
    schema: dict[str, Any]
    description: str


@dataclass(frozen=True, slots=True)
class Operation:
    """One (method, path): path parameters are the `{names}` in `path`, as the code names them."""

    method: Literal["get", "post", "delete"]
    path: str
    summary: str
    tag: str
    auth: Auth
    answer: Any  # the 200 JSON body's type
    body: Any = None  # the request body's type
    body_required: bool = True
    errors: tuple[int, ...] = ()  # beyond the ones `auth` and `body` bring
    streams: bool = False  # with "stream": true the 200 is server-sent events
    query: tuple[Query, ...] = ()
    also: tuple[int, ...] = ()  # other statuses answered with `answer` (readyz's 503)


_INFERENCE_ERRORS = (404, 408, 413, 429, 502, 503, 504)
_CHANGE_ERRORS = (404, 503)  # unknown id; the override store (SQLite, etcd) unavailable
_AUDIT_QUERY = (
    Query("request_id", {"type": "string", "pattern": f"^{REQUEST_ID.pattern}$"}, "x-request-id"),
    Query("org", {"type": "string", "minLength": 1, "maxLength": 256}, "organization id"),
    Query("kind", {"type": "string", "minLength": 1}, f"event kind: {', '.join(KINDS)}"),
    Query("since", {"type": "string", "minLength": 1}, "unix seconds or ISO-8601 with a zone"),
    Query("until", {"type": "string", "minLength": 1}, "unix seconds or ISO-8601 with a zone"),
    Query("limit", {"type": "integer", "minimum": 1, "maximum": MAX_LIMIT}, "events at most"),
)
_REASON_QUERY = Query(
    "reason",
    {"type": "string", "minLength": 1},
    "why, if the body does not say (one of the two must)",
)

OPERATIONS: tuple[Operation, ...] = (
    Operation(
        "post", "/v1/chat/completions", "Chat completion (relayed)", "inference", "api_key",
        ChatCompletion, ChatCompletionRequest, errors=_INFERENCE_ERRORS, streams=True,
    ),
    Operation(
        "post", "/v1/completions", "Text completion (relayed)", "inference", "api_key",
        Completion, CompletionRequest, errors=_INFERENCE_ERRORS, streams=True,
    ),
    Operation(
        "post", "/v1/embeddings", "Embeddings (relayed)", "inference", "api_key",
        EmbeddingList, EmbeddingRequest, errors=_INFERENCE_ERRORS,
    ),
    Operation(
        "post", "/v1/responses", "Response, the Responses API (relayed)", "inference", "api_key",
        ResponseObject, ResponsesRequest, errors=_INFERENCE_ERRORS, streams=True,
    ),
    Operation("get", "/v1/models", "Models this key may use", "models", "api_key", ModelList),
    Operation(
        "get", "/v1/models/{model_id}", "One model", "models", "api_key", Model, errors=(404,)
    ),
    Operation(
        "get", "/v1/usage/{request_id}", "This org's usage record of a request", "usage",
        "api_key", UsageRecord, errors=(404, 503),
    ),
    Operation("get", "/v1/status/healthz", "Liveness", "status", "none", Liveness),
    Operation(
        "get", "/v1/status/readyz", "Readiness (503: degraded)", "status", "none", Ready,
        also=(503,),
    ),
    Operation("get", "/v1/openapi.json", "This document", "status", "none", dict[str, Any]),
    Operation(
        "get", "/v1/admin/backends", "Backends and their live state", "admin", "viewer",
        BackendList,
    ),
    Operation(
        "post", "/v1/admin/backends/{backend_id}/degrade", "Degrade a backend's weight",
        "admin", "operator", OverrideView, DegradeBody, errors=_CHANGE_ERRORS,
    ),
    Operation(
        "post", "/v1/admin/backends/{backend_id}/drain", "Drain a backend", "admin",
        "operator", OverrideView, DrainBody, errors=_CHANGE_ERRORS,
    ),
    Operation(
        "post", "/v1/admin/backends/{backend_id}/restore", "Remove a backend's degrade or drain",
        "admin", "operator", Restored, RestoreBody, errors=_CHANGE_ERRORS,
    ),
    Operation("get", "/v1/admin/overrides", "Overrides in force", "admin", "viewer", OverrideList),
    Operation(
        "post", "/v1/admin/overrides", "Pin a model to a backend", "admin", "operator",
        OverrideView, PinBody, errors=_CHANGE_ERRORS,
    ),
    Operation(
        "delete", "/v1/admin/overrides/{override_id}", "Clear an override", "admin", "operator",
        OverrideView, ClearBody, body_required=False, errors=_CHANGE_ERRORS,
        query=(_REASON_QUERY,),
    ),
    Operation(
        "get", "/v1/admin/audit", "Audit events, newest first", "admin", "viewer", AuditEvents,
        errors=(400, 503), query=_AUDIT_QUERY,
    ),
    Operation(
        "get", "/v1/admin/buffer", "The usage outbox's backlog", "admin", "viewer",
        LiveBufferReport, errors=(503,),
    ),
    Operation(
        "post", "/v1/admin/buffer/replay", "Publish the outbox now", "admin", "operator",
        ReplayResult, ReplayBody, body_required=False, errors=(503,),
    ),
    Operation(
        "post", "/v1/admin/config/reload", "Re-read the config file", "admin", "operator",
        Reloaded, errors=(400, 503),
    ),
)  # fmt: skip
