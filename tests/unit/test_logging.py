"""Structured logging: JSON lines for ours and stdlib's loggers, filtered by the set level."""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Iterator

import pytest
import structlog

from appliance.settings import TelemetrySettings
from appliance.telemetry.logging import configure_logging, get_logger


@pytest.fixture
def restore_logging() -> Iterator[None]:
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    try:
        yield
    finally:
        structlog.reset_defaults()
        root.handlers[:] = handlers
        root.setLevel(level)


@pytest.mark.usefixtures("restore_logging")
def test_level_filters_and_every_line_is_json() -> None:
    """At level warning, info lines of both kinds are dropped; the rest are JSON objects
    naming their logger and level."""
    out = io.StringIO()
    configure_logging(TelemetrySettings(log_level="warning"), stream=out, cache=False)
    ours = get_logger("routerctl.test")
    ours.info("dropped")
    ours.warning("kept", detail="x")
    logging.getLogger("hypercorn.error").info("dropped too")
    logging.getLogger("hypercorn.error").error("kept %s", "too")
    lines = [json.loads(line) for line in out.getvalue().splitlines()]
    assert [(line["logger"], line["level"], line["event"]) for line in lines] == [
        ("routerctl.test", "warning", "kept"),
        ("hypercorn.error", "error", "kept too"),
    ]
    assert lines[0]["detail"] == "x"
