"""Apply a new configuration to the running router without dropping requests.

Health, latency, load, ejections, rate-limit buckets and budgets are kept: only the parts a
config names change. A request reads one `Runtime` at its start; a change swaps it between
two awaits, after the backends it may name exist (a model never points at a backend that
is not defined yet).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Protocol

import msgspec

from appliance.runtime import Runtime
from appliance.settings import Backend, Settings
from appliance.settings.loader import BackendCredentials, resolve_credentials

# Sections a running router cannot change: listeners, state, sinks, telemetry, admin tokens,
# limiter wiring, readiness and the config service itself. A reload that changes one applies
# the rest and says a restart is needed for these.
STATIC_SECTIONS = (
    "server",
    "state",
    "admin",
    "telemetry",
    "usage",
    "limits",
    "budget",
    "health",
    "config_service",
)


class ApplyError(Exception):
    """The new config cannot be applied (e.g. a backend's credential variable is unset)."""


class BackendUpdater(Protocol):
    def update(
        self, backends: tuple[Backend, ...], credentials: Mapping[str, BackendCredentials]
    ) -> None: ...


class RegistryReconciler(Protocol):
    def reconcile(self, settings: Settings) -> None: ...


class HealthReconciler(Protocol):
    def reconcile(self) -> None: ...


class LiveConfig:
    def __init__(
        self,
        *,
        registry: RegistryReconciler,
        backends: BackendUpdater,
        health: HealthReconciler,
        current: Callable[[], Runtime],
        swap: Callable[[Runtime], None],
        environ: Mapping[str, str],
    ) -> None:
        self._registry = registry
        self._backends = backends
        self._health = health
        self._current = current
        self._swap = swap
        self._environ = environ

    @property
    def settings(self) -> Settings:
        return self._current().settings

    def apply(self, settings: Settings) -> None:
        """Make `settings` live (its static sections must be the running ones)."""
        credentials, missing = resolve_credentials(settings, self._environ)
        if missing:
            reasons = []
            for path, reason in missing:
                backend = settings.backends[int(path[1])].id
                reasons.append(f"backends/{backend}: {reason}")
            raise ApplyError("; ".join(reasons))
        runtime = Runtime.from_settings(settings)  # before any change: it may raise
        self._backends.update(settings.backends, credentials)
        self._registry.reconcile(settings)
        self._swap(runtime)
        self._health.reconcile()


def keep_static(new: Settings, running: Settings) -> tuple[Settings, list[str]]:
    """`new` with the running static sections, and the names of those it wanted changed."""
    changed = [
        name
        for name in STATIC_SECTIONS
        if msgspec.to_builtins(getattr(new, name)) != msgspec.to_builtins(getattr(running, name))
    ]
    kept = msgspec.structs.replace(new, **{name: getattr(running, name) for name in changed})
    return kept, changed
