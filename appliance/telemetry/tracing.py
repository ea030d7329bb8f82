"""OpenTelemetry tracing: request, step and attempt spans exported over OTLP/HTTP.

The only module that imports OpenTelemetry. Spans are started with explicit parents (no
context variables): a request's work crosses tasks and a streaming generator. The provider
is global to nobody: it lives in the app's container and is never registered as OTel's
global one. GenAI attributes follow OpenTelemetry's semantic conventions for GenAI spans.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from urllib.parse import urlsplit

from opentelemetry import trace as otel
from opentelemetry.context import Context
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor
from opentelemetry.trace import Span, SpanKind, Status, StatusCode, Tracer
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from appliance.routing.engine import Decision
from appliance.settings import TelemetrySettings
from appliance.telemetry.logging import get_logger
from appliance.telemetry.spans import RequestTrace, ServerAddress, TracedRequest
from appliance.upstream.usage import Usage

_log = get_logger("routerctl.tracing")
_TRACES_PATH = "/v1/traces"
_EXPORT_TIMEOUT_S = 5.0  # one export; bounds the flush at shutdown when the collector is gone
_PROPAGATOR = TraceContextTextMapPropagator()
_UNTRACED_PREFIX = "/v1/status/"  # probes: frequent, and no request flow to see
# gen_ai.operation.name per public route; their paths are fixed, so they name the span too.
_OPERATIONS = {
    "/v1/chat/completions": "chat",
    "/v1/completions": "text_completion",
    "/v1/embeddings": "embeddings",
    "/v1/responses": "chat",  # semconv has no operation of its own for the Responses API
}
_NAMED_PATHS = frozenset({*_OPERATIONS, "/v1/models"})
# Outcomes that end a span without it being our or the backend's failure.
_NOT_ERRORS = frozenset({"ok", "client_disconnected"})


def traces_url(endpoint: str) -> str:
    """The OTLP/HTTP traces URL for `[telemetry] otlp_endpoint`: a collector's base URL
    (as OTEL_EXPORTER_OTLP_ENDPOINT) gets `/v1/traces`; a URL with a path is used as is."""
    if urlsplit(endpoint).path.strip("/"):
        return endpoint
    return endpoint.rstrip("/") + _TRACES_PATH


class OtelTracing:
    """Builds request traces; `open` starts the export thread, `close` flushes and stops it."""

    def __init__(self, settings: TelemetrySettings, version: str) -> None:
        resource = Resource.create(
            {"service.name": settings.service_name, "service.version": version}
        )
        # Shut down by `close` in the app's lifecycle, not at interpreter exit.
        self._provider = TracerProvider(resource=resource, shutdown_on_exit=False)
        self._tracer = self._provider.get_tracer("routerctl", version)
        self._endpoint = traces_url(settings.otlp_endpoint)
        self._opened = False

    async def open(self) -> None:
        exporter = OTLPSpanExporter(endpoint=self._endpoint, timeout=_EXPORT_TIMEOUT_S)
        self._provider.add_span_processor(BatchSpanProcessor(exporter))
        self._opened = True
        # Scheme, host and port only: userinfo or a query may hold credentials.
        parts = urlsplit(self._endpoint)
        port = f":{parts.port}" if parts.port else ""
        _log.info("tracing_on", collector=f"{parts.scheme}://{parts.hostname}{port}")

    async def close(self) -> None:
        """Export what is left (bounded by the export timeout) and stop the export thread."""
        if self._opened:
            self._opened = False
            await asyncio.to_thread(self._provider.shutdown)

    def start(
        self, request: TracedRequest, traceparent: str | None, tracestate: str | None
    ) -> RequestTrace | None:
        path = request.path
        if path.startswith(_UNTRACED_PREFIX):
            return None
        parent = Context()
        if traceparent is not None:
            carrier = {"traceparent": traceparent}
            if tracestate is not None:
                carrier["tracestate"] = tracestate
            parent = _PROPAGATOR.extract(carrier)  # an invalid one starts a new trace
        operation = _OPERATIONS.get(path)
        attributes: dict[str, str] = {
            "http.request.method": request.method,
            "url.path": path,
            "routerctl.request_id": request.request_id,
        }
        if operation is not None:
            attributes["gen_ai.operation.name"] = operation
        span = self._tracer.start_span(
            f"{request.method} {path}" if path in _NAMED_PATHS else request.method,
            context=parent,
            kind=SpanKind.SERVER,
            attributes=attributes,
        )
        return _RequestTrace(self._tracer, span, request, operation or "")


class _RequestTrace:
    __slots__ = ("_context", "_open", "_operation", "_request", "_span", "_tracer")

    def __init__(self, tracer: Tracer, span: Span, request: TracedRequest, operation: str) -> None:
        self._tracer = tracer
        self._span = span
        self._request = request
        self._operation = operation
        self._context = otel.set_span_in_context(span, Context())
        self._open: Span | None = None

    def step(self, name: str) -> None:
        self._fail_open_step()
        self._open = self._tracer.start_span(name, context=self._context)

    def step_done(self) -> None:
        if self._open is not None:
            self._open.end()
            self._open = None

    def routed(self, decision: Decision) -> None:
        span = self._open
        if span is not None:
            span.set_attribute("routerctl.decision", decision.kind.value)
            span.set_attribute("routerctl.backend", decision.target.backend_id)
            if decision.panic:
                span.set_attribute("routerctl.panic", True)
        self.step_done()

    def attempt(self, decision: Decision, address: ServerAddress, number: int) -> _Attempt:
        model = decision.target.upstream_model
        span = self._tracer.start_span(
            f"{self._operation} {model}" if self._operation else "attempt",
            context=self._context,
            kind=SpanKind.CLIENT,
            attributes={
                "gen_ai.operation.name": self._operation,
                "gen_ai.request.model": model,
                "server.address": address[0],
                "server.port": address[1],
                "routerctl.backend": decision.target.backend_id,
                "routerctl.decision": decision.kind.value,
                "routerctl.attempt": number,
            },
        )
        headers: dict[str, str] = {}
        _PROPAGATOR.inject(headers, context=otel.set_span_in_context(span, Context()))
        return _Attempt(span, headers)

    def finish(self) -> None:
        self._fail_open_step()
        request, span = self._request, self._span
        status = request.status or 499  # no response started: the client left first
        span.set_attribute("http.response.status_code", status)
        if request.model is not None:
            span.set_attribute("gen_ai.request.model", request.model)
        if request.org is not None:
            span.set_attribute("routerctl.org", request.org)
        if request.key_id is not None:
            span.set_attribute("routerctl.key_id", request.key_id)
        _set_tokens(span, request.prompt_tokens, request.completion_tokens)
        if request.outcome != "ok":
            span.set_attribute("error.type", request.outcome)
        # Server spans: 4xx are the client's errors, not ours (OTel's HTTP conventions).
        if status >= 500 or (status < 400 and request.outcome not in _NOT_ERRORS):
            span.set_status(Status(StatusCode.ERROR, request.outcome))
        span.end()

    def _fail_open_step(self) -> None:
        span = self._open
        if span is not None:
            self._open = None
            outcome = self._request.outcome
            span.set_attribute("error.type", outcome)
            span.set_status(Status(StatusCode.ERROR, outcome))
            span.end()


class _Attempt:
    __slots__ = ("_done", "_span", "headers")

    def __init__(self, span: Span, headers: Mapping[str, str]) -> None:
        self._span = span
        self.headers = headers
        self._done = False

    def response(self, status: int) -> None:
        self._span.set_attribute("http.response.status_code", status)

    def finish(self, outcome: str, usage: Usage | None = None) -> None:
        if self._done:
            return
        self._done = True
        span = self._span
        if usage is not None:
            _set_tokens(span, usage.prompt_tokens, usage.completion_tokens)
            if usage.finish_reasons:
                span.set_attribute("gen_ai.response.finish_reasons", usage.finish_reasons)
        if outcome != "ok":
            span.set_attribute("error.type", outcome)
            if outcome not in _NOT_ERRORS:
                span.set_status(Status(StatusCode.ERROR, outcome))
        span.end()


def _set_tokens(span: Span, prompt: int | None, completion: int | None) -> None:
    if prompt is not None:
        span.set_attribute("gen_ai.usage.input_tokens", prompt)
    if completion is not None:
        span.set_attribute("gen_ai.usage.output_tokens", completion)
