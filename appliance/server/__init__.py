"""Serving the app: the hypercorn runner (signals, drain), its config, HTTP/1.1 hardening
below the app, and the metrics listener. Callers import from `appliance.server`."""

from __future__ import annotations

from appliance.server.hypercorn_setup import hypercorn_config
from appliance.server.metrics_listener import MetricsListener
from appliance.server.runner import ConfigSource, Started, run, serve
from appliance.server.startup_error import StartupError

__all__ = [
    "ConfigSource",
    "MetricsListener",
    "Started",
    "StartupError",
    "hypercorn_config",
    "run",
    "serve",
]
