"""Tracing setup without a collector: the traces URL, and which client trace context counts."""

from __future__ import annotations

import pytest

from appliance.http.edge import parse_trace_context
from appliance.telemetry.tracing import traces_url

TRACEPARENT = b"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"


@pytest.mark.parametrize(
    ("endpoint", "url"),
    [
        ("http://collector:4318", "http://collector:4318/v1/traces"),
        ("http://collector:4318/", "http://collector:4318/v1/traces"),
        ("https://otel.example/v1/traces", "https://otel.example/v1/traces"),
        ("https://otel.example/custom/path", "https://otel.example/custom/path"),
    ],
)
def test_traces_url(endpoint: str, url: str) -> None:
    """A collector's base URL gets OTLP's /v1/traces; a URL with a path is used as given."""
    assert traces_url(endpoint) == url


def test_client_trace_context_is_kept_only_when_well_formed() -> None:
    """A well-formed traceparent (and a bounded tracestate with it) is kept; a malformed
    traceparent drops both, as W3C Trace Context asks."""
    assert parse_trace_context(TRACEPARENT, b"a=1,b=2") == (TRACEPARENT.decode(), "a=1,b=2")
    assert parse_trace_context(TRACEPARENT, None) == (TRACEPARENT.decode(), None)
    assert parse_trace_context(TRACEPARENT, b"x" * 513) == (TRACEPARENT.decode(), None)
    assert parse_trace_context(b"00-xyz-00f067aa0ba902b7-01", b"a=1") == (None, None)
    assert parse_trace_context(TRACEPARENT.upper(), None) == (None, None)
