"""Serving the app: the runner (signals, drain), the engines (routerctl's own HTTP/1.1 server,
or hypercorn with its hardening), and the metrics listener. Callers import from
`appliance.server`."""

from __future__ import annotations

from appliance.server.engines import Engine, engine_for
from appliance.server.hypercorn_setup import hypercorn_config
from appliance.server.metrics_listener import MetricsListener
from appliance.server.runner import ConfigSource, Started, run, serve
from appliance.server.startup_error import StartupError

__all__ = [
    "ConfigSource",
    "Engine",
    "MetricsListener",
    "Started",
    "StartupError",
    "engine_for",
    "hypercorn_config",
    "run",
    "serve",
]
