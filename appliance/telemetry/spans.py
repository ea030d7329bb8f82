"""What the request path asks of tracing; no OpenTelemetry here.

Without an OTLP endpoint a request has no trace (`None`): the hot path pays one `is None`
check per step and creates nothing. `appliance.telemetry.tracing` implements these
Protocols with OpenTelemetry and is built only by `appliance.app`.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Protocol

from appliance.routing.engine import Decision
from appliance.upstream.usage import Usage

# (host, port) of a backend, as OpenTelemetry's `server.address` and `server.port`.
ServerAddress = tuple[str, int]


class TracedRequest(Protocol):
    """The request facts a trace reads at its start and end (the edge's request context)."""

    method: str
    path: str
    request_id: str
    status: int
    outcome: str
    model: str | None
    org: str | None
    key_id: str | None
    prompt_tokens: int | None
    completion_tokens: int | None


class AttemptSpan(Protocol):
    """One try on one backend: a client span whose context travels in `headers`."""

    @property
    def headers(self) -> Mapping[str, str]:
        """`traceparent` (and `tracestate`) naming this attempt, for the backend request."""
        ...

    def response(self, status: int) -> None:
        """The backend answered with `status` (headers arrived)."""

    def finish(self, outcome: str, usage: Usage | None = None) -> None:
        """End the attempt: "ok" or an error code, with the usage read; later calls do nothing."""


class RequestTrace(Protocol):
    """The spans of one request: the server span and its children."""

    def step(self, name: str) -> None:
        """Start a child span for one step (auth, limits, routing, usage.record).

        A step still open was cut short by an error: it ends failed, with the request's outcome.
        """

    def step_done(self) -> None:
        """End the open step successfully."""

    def routed(self, decision: Decision) -> None:
        """The routing step chose `decision`: note it and end the step."""

    def attempt(self, decision: Decision, address: ServerAddress, number: int) -> AttemptSpan:
        """Start the span of attempt `number` (from 1) on the decided backend."""
        ...

    def finish(self) -> None:
        """End the request span (and a step left open) with the request's status and usage."""


class Tracing(Protocol):
    def start(
        self, request: TracedRequest, traceparent: str | None, tracestate: str | None
    ) -> RequestTrace | None:
        """A trace for this request (a child of the client's `traceparent` when it sent a
        valid one), or None for requests not traced (status probes)."""
        ...
