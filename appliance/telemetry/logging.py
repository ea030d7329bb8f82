"""Structured logging: JSON lines (or console) on stderr, level from settings.

Lines of stdlib loggers (hypercorn, aiohttp, the OTLP exporter) get the same shape and level
as ours, so a log pipeline parses one format.
"""

from __future__ import annotations

import logging
import sys
from typing import TextIO

import structlog

from appliance.settings import TelemetrySettings


def configure_logging(
    settings: TelemetrySettings,
    stream: TextIO | None = None,
    *,
    cache: bool = True,
    worker: int | None = None,
) -> None:
    """Configure structlog and route stdlib loggers through the same level and renderer.

    Lines go to `stream` (stderr by default). `cache=False` keeps loggers following a later
    reconfiguration (tests); a server caches each logger's pipeline on first use. A worker
    of several (`[server] workers`) says which on every line (`worker`).
    """
    out = sys.stderr if stream is None else stream
    level = logging.getLevelNamesMapping()[settings.log_level.upper()]
    renderer: structlog.typing.Processor = (
        structlog.processors.JSONRenderer()
        if settings.log_format == "json"
        else structlog.dev.ConsoleRenderer(colors=False)
    )
    shared: list[structlog.typing.Processor] = [
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        structlog.processors.format_exc_info,
    ]
    if worker is not None:
        shared.insert(0, _WorkerKey(worker))
    structlog.configure(
        processors=[_logger_key, *shared, renderer],
        wrapper_class=structlog.make_filtering_bound_logger(level),
        # One write per line: workers share stderr, and two writes could interleave.
        logger_factory=structlog.WriteLoggerFactory(out),
        cache_logger_on_first_use=cache,
    )
    handler = logging.StreamHandler(out)
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta, renderer],
            foreign_pre_chain=[structlog.stdlib.add_logger_name, *shared],
        )
    )
    logging.basicConfig(level=level, handlers=[handler], force=True)


class _WorkerKey:
    def __init__(self, index: int) -> None:
        self._index = index

    def __call__(
        self, _logger: object, _method: str, event: structlog.typing.EventDict
    ) -> structlog.typing.EventDict:
        event["worker"] = self._index
        return event


def _logger_key(
    _logger: object, _method: str, event: structlog.typing.EventDict
) -> structlog.typing.EventDict:
    """`logger`, the key stdlib lines get too (ours bind it as `logger_name`: see below)."""
    if "logger_name" in event:
        event["logger"] = event.pop("logger_name")
    return event


def get_logger(name: str) -> structlog.typing.FilteringBoundLogger:
    """A logger whose lines name it; bound lazily, so configure may come after this call.

    (`logger` itself cannot be bound: it is a parameter name of structlog's wrap_logger.)
    """
    logger: structlog.typing.FilteringBoundLogger = structlog.get_logger(name, logger_name=name)
    return logger
