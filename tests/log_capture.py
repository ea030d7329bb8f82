"""Capture every log line of a test, structlog's and stdlib's, rendered as in production."""

from __future__ import annotations

import io
import logging
from collections.abc import Iterator
from contextlib import contextmanager

import structlog

from appliance.settings import TelemetrySettings
from appliance.telemetry.logging import configure_logging


@contextmanager
def all_logs() -> Iterator[io.StringIO]:
    """Logging configured at debug into a buffer; the previous setup is restored after."""
    buffer = io.StringIO()
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    configure_logging(TelemetrySettings(log_level="debug"), stream=buffer, cache=False)
    try:
        yield buffer
    finally:
        structlog.reset_defaults()
        root.handlers[:] = handlers
        root.setLevel(level)
