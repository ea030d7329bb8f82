"""What one request did: filled in by the edge, the handlers and the relay, read at its end."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from appliance.telemetry.spans import RequestTrace
    from appliance.usage.record import Bill

CONTEXT_KEY = "routerctl.context"


@dataclass(slots=True)
class RequestContext:
    """What one request did, filled in along the way and logged once at its end."""

    request_id: str  # what the client sees in x-request-id (its own if it sent a sane one)
    method: str
    path: str
    record_id: str = ""  # unique, router-made: the usage record's id (= request_id if ours)
    status: int = 0
    duration_s: float = 0.0
    org: str | None = None
    key_id: str | None = None
    model: str | None = None
    model_known: bool = False  # `model` is a configured one the key may use: a bounded label
    backend: str | None = None
    stream: bool = False
    body: bytes = b""  # the request body, read and bounded by EdgeMiddleware
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    outcome: str = "ok"
    decision: str | None = None
    attempts: int = 0
    events_relayed: int = 0  # SSE data events passed to the client
    # Usage record inputs (inference routes only).
    record_usage: bool = False
    recorded: bool = False
    started_at: float = 0.0  # unix seconds
    first_byte_at: float | None = None
    first_byte_perf: float | None = None  # perf_counter() of the same moment, for durations
    upstream_s: float = 0.0  # time spent waiting on backends (streams: to the first chunk)
    response_bytes: int = 0
    event_stream: bool = False
    content_length: int | None = None
    upstream_model: str | None = None
    estimate_prompt: int = 0
    estimate_completion: int = 0
    client_disconnected: bool = False
    ttft_s: float | None = None  # seconds to the first response byte, set at the end
    # W3C trace context the client sent (passed on to backends when we do not trace), and
    # this request's trace when we do.
    traceparent: str | None = None
    tracestate: str | None = None
    trace: RequestTrace | None = None
    # Settles the request's limits with its bill; called once, when its record is built.
    settle: Callable[[Bill], None] | None = None
    # Run once the response is over, however it ended (a stream never read included).
    cleanups: list[Callable[[], None]] = field(default_factory=list)

    def add_upstream_time(self, seconds: float) -> None:
        self.upstream_s += seconds


def request_context(scope: Mapping[str, object]) -> RequestContext:
    """The context EdgeMiddleware put in this request's scope."""
    context = scope[CONTEXT_KEY]
    assert isinstance(context, RequestContext)
    return context
