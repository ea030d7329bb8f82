"""Tracing: spans exported over OTLP/HTTP to a real receiver; W3C trace context to backends.

The router flushes its spans when it shuts down, so every assertion on spans comes after the
router's context has exited: no sleeping, no polling.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Iterable, Mapping

import pytest
from aiohttp import web
from opentelemetry import trace as otel_trace
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue
from opentelemetry.proto.trace.v1.trace_pb2 import Span, Status

from tests.integration.router_harness import chat, running_router
from tests.services import free_port

TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
CLIENT_SPAN = "00f067aa0ba902b7"
TRACEPARENT = f"00-{TRACE_ID}-{CLIENT_SPAN}-01"
STEPS = ("auth", "limits", "routing", "usage.record")


class Receiver:
    """An OTLP/HTTP traces endpoint on 127.0.0.1 that decodes and keeps every span."""

    def __init__(self) -> None:
        self.spans: list[Span] = []
        self.resources: list[dict[str, object]] = []
        self.content_types: set[str] = set()
        self.url = ""
        self._runner: web.AppRunner | None = None

    async def start(self) -> None:
        app = web.Application()
        app.router.add_post("/v1/traces", self._traces)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        port = self._runner.addresses[0][1]
        self.url = f"http://127.0.0.1:{port}"

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    async def _traces(self, request: web.Request) -> web.Response:
        self.content_types.add(request.content_type)
        message = ExportTraceServiceRequest()
        message.ParseFromString(await request.read())
        for resource_spans in message.resource_spans:
            self.resources.append(attributes(resource_spans.resource.attributes))
            for scope_spans in resource_spans.scope_spans:
                self.spans.extend(scope_spans.spans)
        return web.Response(
            body=ExportTraceServiceResponse().SerializeToString(),
            content_type="application/x-protobuf",
        )


@pytest.fixture
async def receiver() -> AsyncIterator[Receiver]:
    found = Receiver()
    await found.start()
    try:
        yield found
    finally:
        await found.stop()


def value_of(value: AnyValue) -> object:
    kind = value.WhichOneof("value")
    if kind == "array_value":
        return [value_of(item) for item in value.array_value.values]
    return getattr(value, str(kind))


def attributes(items: Iterable[KeyValue]) -> dict[str, object]:
    return {item.key: value_of(item.value) for item in items}


def header(headers: object, name: str) -> str | None:
    assert isinstance(headers, Mapping)
    found = [value for key, value in headers.items() if key.lower() == name]
    return found[0] if found else None


def traced(receiver: Receiver) -> str:
    return f'otlp_endpoint = "{receiver.url}"'


def finish_reason_of_stream(text: str) -> str:
    reasons = [
        choice["finish_reason"]
        for line in text.splitlines()
        if line.startswith("data: {")
        for choice in json.loads(line[6:]).get("choices", ())
        if choice.get("finish_reason")
    ]
    assert len(reasons) == 1
    return str(reasons[0])


@pytest.mark.parametrize("stream", [False, True])
async def test_chat_completion_is_one_trace_continuing_the_clients(
    receiver: Receiver, stream: bool
) -> None:
    """A chat completion with a client traceparent exports request, step and attempt spans in
    the client's trace, with GenAI attributes, and the backend gets the attempt's context."""
    payload = chat(max_tokens=3, stream=stream, stream_options={"include_usage": True})
    if not stream:
        del payload["stream_options"]
    async with running_router(telemetry_extra=traced(receiver)) as router:
        async with await router.post(
            "/v1/chat/completions", payload, headers={"traceparent": TRACEPARENT}
        ) as response:
            assert response.status == 200
            request_id = response.headers["x-request-id"]
            text = await response.text()
        sent = router.mocks["m0"].requests()[-1]["headers"]
        mock_port = router.mocks["m0"].port
    if stream:
        usage_doc = json.loads([line for line in text.splitlines() if '"usage"' in line][-1][6:])[
            "usage"
        ]
        finish = finish_reason_of_stream(text)
    else:
        doc = json.loads(text)
        usage_doc, finish = doc["usage"], doc["choices"][0]["finish_reason"]

    assert receiver.content_types == {"application/x-protobuf"}
    assert receiver.resources[0]["service.name"] == "routerctl"
    spans = {span.name: span for span in receiver.spans}
    assert sorted(spans) == sorted(["POST /v1/chat/completions", "chat up-m0", *STEPS])
    assert {span.trace_id.hex() for span in receiver.spans} == {TRACE_ID}

    request = spans["POST /v1/chat/completions"]
    assert request.parent_span_id.hex() == CLIENT_SPAN
    assert request.kind == Span.SPAN_KIND_SERVER
    on_request = attributes(request.attributes)
    assert on_request["routerctl.request_id"] == request_id
    assert on_request["http.response.status_code"] == 200
    assert on_request["gen_ai.operation.name"] == "chat"
    assert on_request["gen_ai.request.model"] == "chat"
    assert on_request["gen_ai.usage.input_tokens"] == usage_doc["prompt_tokens"]
    assert on_request["gen_ai.usage.output_tokens"] == usage_doc["completion_tokens"]
    assert on_request["routerctl.org"] == "acme"
    for name in STEPS:
        assert spans[name].parent_span_id == request.span_id, name
        assert spans[name].status.code != Status.STATUS_CODE_ERROR, name
    assert attributes(spans["routing"].attributes)["routerctl.backend"] == "m0"

    attempt = spans["chat up-m0"]
    assert attempt.parent_span_id == request.span_id
    assert attempt.kind == Span.SPAN_KIND_CLIENT
    on_attempt = attributes(attempt.attributes)
    assert on_attempt["gen_ai.operation.name"] == "chat"
    assert on_attempt["gen_ai.request.model"] == "up-m0"
    assert on_attempt["server.address"] == "127.0.0.1"
    assert on_attempt["server.port"] == mock_port
    assert on_attempt["http.response.status_code"] == 200
    assert on_attempt["gen_ai.usage.input_tokens"] == usage_doc["prompt_tokens"]
    assert on_attempt["gen_ai.usage.output_tokens"] == usage_doc["completion_tokens"]
    assert on_attempt["gen_ai.response.finish_reasons"] == [finish]
    # The usage record is written inside the request, and the stream's attempt lasts until
    # its end: both end before the request span does.
    assert attempt.end_time_unix_nano <= request.end_time_unix_nano
    assert spans["usage.record"].end_time_unix_nano <= request.end_time_unix_nano

    assert header(sent, "traceparent") == f"00-{TRACE_ID}-{attempt.span_id.hex()}-01"


async def test_failover_traces_each_attempt(receiver: Receiver) -> None:
    """A dead first backend and a live second one make two routing and two attempt spans;
    the failed attempt is an error, and the backend that answered got the second's context."""
    async with running_router(telemetry_extra=traced(receiver)) as router:
        await router.state.control.pin("chat", "dead", "tracing test", "test", None)
        async with await router.post(
            "/v1/chat/completions", chat(max_tokens=2), headers={"traceparent": TRACEPARENT}
        ) as response:
            assert response.status == 200
            await response.read()
        sent = router.mocks["m0"].requests()[-1]["headers"]

    request = next(s for s in receiver.spans if s.kind == Span.SPAN_KIND_SERVER)
    attempts = sorted(
        (s for s in receiver.spans if s.kind == Span.SPAN_KIND_CLIENT),
        key=lambda s: int(str(attributes(s.attributes)["routerctl.attempt"])),
    )
    routings = [s for s in receiver.spans if s.name == "routing"]
    assert len(attempts) == 2
    assert len(routings) == 2
    assert all(s.parent_span_id == request.span_id for s in [*attempts, *routings])
    first, second = (attributes(s.attributes) for s in attempts)
    assert first["routerctl.backend"] == "dead"
    assert first["routerctl.decision"] == "OVERRIDE"
    assert first["error.type"] == "upstream_connect_error"
    assert attempts[0].status.code == Status.STATUS_CODE_ERROR
    assert second["routerctl.backend"] == "m0"
    assert second["routerctl.decision"] == "FAILOVER"
    assert "error.type" not in second
    assert attributes(request.attributes)["http.response.status_code"] == 200
    assert header(sent, "traceparent") == f"00-{TRACE_ID}-{attempts[1].span_id.hex()}-01"


async def test_refused_request_ends_its_failed_step_as_an_error(receiver: Receiver) -> None:
    """A wrong key ends the auth span as an error named by the request's outcome; the
    request span records the 401 (a client error: not an error status on a server span)."""
    async with (
        running_router(telemetry_extra=traced(receiver)) as router,
        await router.post(
            "/v1/chat/completions",
            chat(),
            headers={"Authorization": "Bearer rk-wrong", "traceparent": TRACEPARENT},
        ) as response,
    ):
        assert response.status == 401
        await response.read()
    spans = {span.name: span for span in receiver.spans}
    assert sorted(spans) == sorted(["POST /v1/chat/completions", "auth", "usage.record"])
    auth = spans["auth"]
    assert auth.status.code == Status.STATUS_CODE_ERROR
    assert attributes(auth.attributes)["error.type"] == "invalid_api_key"
    request = spans["POST /v1/chat/completions"]
    assert attributes(request.attributes)["http.response.status_code"] == 401
    assert request.status.code != Status.STATUS_CODE_ERROR


async def test_without_an_endpoint_nothing_is_traced_and_client_context_passes() -> None:
    """No otlp_endpoint: no tracer exists, no OTel provider is set, the backend gets no
    traceparent of ours, and a client's traceparent and tracestate pass through unchanged."""
    async with running_router() as router:
        assert router.state.tracing is None
        assert isinstance(otel_trace.get_tracer_provider(), otel_trace.ProxyTracerProvider)
        mock = router.mocks["m0"]
        async with await router.post("/v1/chat/completions", chat(max_tokens=2)) as response:
            assert response.status == 200
            await response.read()
        plain = mock.requests()[-1]["headers"]
        client = {"traceparent": TRACEPARENT, "tracestate": "vendor=opaque"}
        async with await router.post(
            "/v1/chat/completions", chat(max_tokens=2), headers=client
        ) as response:
            assert response.status == 200
            await response.read()
        passed = mock.requests()[-1]["headers"]
        malformed = {"traceparent": "00-not-a-trace", "tracestate": "vendor=opaque"}
        async with await router.post(
            "/v1/chat/completions", chat(max_tokens=2), headers=malformed
        ) as response:
            assert response.status == 200
            await response.read()
        dropped = mock.requests()[-1]["headers"]
    assert header(plain, "traceparent") is None
    assert header(plain, "tracestate") is None
    assert header(passed, "traceparent") == TRACEPARENT
    assert header(passed, "tracestate") == "vendor=opaque"
    assert header(dropped, "traceparent") is None
    assert header(dropped, "tracestate") is None


async def test_collector_down_costs_requests_nothing() -> None:
    """A collector that refuses connections: requests are answered as usual and the router
    still shuts down (the final export gives up within its timeout)."""
    endpoint = f'otlp_endpoint = "http://127.0.0.1:{free_port()}"'
    async with running_router(telemetry_extra=endpoint) as router:
        assert router.state.tracing is not None
        async with await router.post("/v1/chat/completions", chat(max_tokens=2)) as response:
            assert response.status == 200
            await response.read()
