"""Public OpenAI-compatible routes: authenticate, check, pick a backend, forward, relay.

`InferenceHandler` does the work; `fast_path` serves it over plain ASGI, in front of Quart.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass

import msgspec
from quart import Blueprint, Response, request

from appliance.auth.keyring import Principal
from appliance.errors import ModelNotFound, RevokedApiKey, UsageBufferFull
from appliance.http.context import RequestContext, request_context
from appliance.http.openai_shapes import Model, ModelList
from appliance.limits.limiter import Limiter, Permit
from appliance.limits.policy import estimate_tokens
from appliance.routing.engine import Decision
from appliance.runtime import Runtime
from appliance.upstream.forwarder import Forwarder, RequestHooks
from appliance.upstream.payload import Endpoint, parse_request, prompt_fields
from appliance.upstream.usage import Usage

_JSON = "application/json"
# Streams must not be buffered by the router or by proxies in front of it.
_STREAM_HEADERS = {"cache-control": "no-cache", "x-accel-buffering": "no"}


@dataclass(frozen=True, slots=True)
class Answer:
    """What to send the client: a whole `body` or a `stream`, with headers beyond the type."""

    status: int
    content_type: str
    headers: dict[str, str]
    body: bytes = b""
    stream: AsyncIterator[bytes] | None = None


class InferenceHandler:
    """The inference routes' work, whatever serves them (the ASGI fast path or Quart)."""

    def __init__(
        self,
        get_runtime: Callable[[], Runtime],
        forwarder: Forwarder,
        limiter: Limiter,
        usage_admit: Callable[[], bool],
    ) -> None:
        self._get_runtime = get_runtime
        self._forwarder = forwarder
        self._limiter = limiter
        self._usage_admit = usage_admit

    async def answer(
        self, endpoint: Endpoint, context: RequestContext, authorization: str | None
    ) -> Answer:
        """Authenticate, check, pick a backend, forward; RouterErrors say why not."""
        runtime = self._get_runtime()
        if not self._usage_admit():
            raise UsageBufferFull()  # refused before anything happened: nothing to record
        context.record_usage = True
        principal = _authenticate(runtime, context, authorization)
        parsed = parse_request(endpoint, context.body)
        context.model, context.stream = parsed.model, parsed.stream
        route = runtime.routes.get(parsed.model)
        if route is None or not principal.may_use(parsed.model):
            raise _no_such_model(parsed.model)
        context.model_known = True
        completion = parsed.max_tokens or runtime.settings.limits.default_max_tokens
        estimate = estimate_tokens(
            parsed.payload, parsed.max_tokens, completion, prompt_fields(endpoint)
        )
        context.estimate_prompt, context.estimate_completion = estimate - completion, completion
        limiter = self._limiter
        permit = await _admit(limiter, principal, estimate, context)
        context.cleanups.append(lambda: limiter.release(permit))
        # Every admitted request is settled exactly once, by its bill, however it ends.
        context.settle = lambda charged: limiter.settle(
            permit, charged.prompt_tokens, charged.completion_tokens, route.prices
        )
        relayed = await self._forwarder.forward(parsed, route, context.request_id, _hooks(context))
        if relayed.stream is None:
            return Answer(relayed.status, relayed.content_type, permit.headers, relayed.body)
        headers = {**_STREAM_HEADERS, **permit.headers}
        return Answer(relayed.status, relayed.content_type, headers, stream=relayed.stream)


def inference_blueprint(get_runtime: Callable[[], Runtime]) -> Blueprint:
    """GET /v1/models under Quart. The POST routes are served by the fast path before Quart
    sees them; their rules are here so that other methods on those paths answer 405."""
    bp = Blueprint("inference", __name__)

    async def served_by_fast_path() -> Response:
        raise RuntimeError("the inference fast path serves POST on this route")

    for endpoint in Endpoint:
        bp.add_url_rule(
            endpoint.route, endpoint.value, view_func=served_by_fast_path, methods=["POST"]
        )

    def visible() -> list[str]:
        runtime = get_runtime()
        principal = runtime.keyring.resolve(request.headers.get("authorization"))
        request_context(request.scope).org = principal.org_id
        return [name for name in runtime.routes.names() if principal.may_use(name)]

    @bp.get("/v1/models")
    async def models() -> Response:
        data = [Model(name) for name in visible()]
        return Response(msgspec.json.encode(ModelList(data=data)), content_type=_JSON)

    @bp.get("/v1/models/<path:model_id>")  # path: model names may hold "/" (org/model)
    async def model(model_id: str) -> Response:
        if model_id not in visible():  # unknown and forbidden answer alike
            raise _no_such_model(model_id[:200])
        return Response(msgspec.json.encode(Model(model_id)), content_type=_JSON)

    return bp


def _no_such_model(name: str) -> ModelNotFound:
    """Unknown and forbidden models answer alike, so keys cannot probe what exists."""
    return ModelNotFound(
        f"The model '{name}' does not exist or you do not have access to it.", param="model"
    )


def _hooks(context: RequestContext) -> RequestHooks:
    return RequestHooks(
        on_decision=_decision_recorder(context),
        on_done=_usage_recorder(context),
        on_progress=_progress_recorder(context),
        defer=context.cleanups.append,
        on_upstream_time=context.add_upstream_time,
        trace=context.trace,
        trace_headers=_client_trace(context) if context.traceparent is not None else None,
    )


def _authenticate(
    runtime: Runtime, context: RequestContext, authorization: str | None
) -> Principal:
    trace = context.trace
    if trace is not None:
        trace.step("auth")  # a raise leaves the step open: the trace ends it failed
    try:
        principal = runtime.keyring.resolve(authorization)
    except RevokedApiKey as revoked:  # for the access log only: the answer is an unknown key's
        context.org, context.key_id = revoked.org_id, revoked.key_id
        raise
    context.org, context.key_id = principal.org_id, principal.key_id
    if trace is not None:
        trace.step_done()
    return principal


async def _admit(
    limiter: Limiter, principal: Principal, estimate: int, context: RequestContext
) -> Permit:
    trace = context.trace
    if trace is not None:
        trace.step("limits")
    permit = await limiter.admit(principal.limits, estimate, context.request_id)
    if trace is not None:
        trace.step_done()
    return permit


def _client_trace(context: RequestContext) -> Mapping[str, str]:
    """The client's W3C trace context, passed to backends unchanged when we do not trace."""
    assert context.traceparent is not None
    if context.tracestate is None:
        return {"traceparent": context.traceparent}
    return {"traceparent": context.traceparent, "tracestate": context.tracestate}


def _decision_recorder(context: RequestContext) -> Callable[[Decision, int], None]:
    def record(decision: Decision, attempt: int) -> None:
        context.backend = decision.target.backend_id
        context.upstream_model = decision.target.upstream_model
        context.decision = decision.kind.value
        context.attempts = attempt + 1

    return record


def _progress_recorder(context: RequestContext) -> Callable[[Usage | None, int], None]:
    def record(usage: Usage | None, events: int) -> None:
        context.events_relayed = events
        if usage is not None:
            context.prompt_tokens = usage.prompt_tokens
            context.completion_tokens = usage.completion_tokens

    return record


def _usage_recorder(context: RequestContext) -> Callable[[Usage | None, str], None]:
    def record(usage: Usage | None, outcome: str) -> None:
        context.outcome = outcome
        if usage is not None:
            context.prompt_tokens = usage.prompt_tokens
            context.completion_tokens = usage.completion_tokens

    return record
