"""What the routing engine needs from the outside world, as small Protocols."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

from appliance.routing.overrides import Override


class OverrideStore(Protocol):
    """Durable overrides: SQLite in the state dir now, etcd when replicas share them (#6)."""

    async def list(self) -> list[Override]:
        """Every stored override, expired ones included until purged."""
        ...

    async def put(self, override: Override) -> None:
        """Insert or replace by id."""
        ...

    async def delete(self, override_id: str) -> Override | None:
        """Remove one; returns what was removed, or None if there was nothing."""
        ...

    async def purge_expired(self, now: float) -> int:
        """Delete overrides whose TTL has passed; returns how many."""
        ...


class Clock(Protocol):
    def __call__(self) -> float:
        """Seconds: unix time for stored facts, or a monotonic clock for durations."""
        ...


class BackendView(Protocol):
    """A backend's configuration and live state, as the admin API shows it (read-only)."""

    @property
    def id(self) -> str: ...

    @property
    def models(self) -> tuple[str, ...]: ...

    @property
    def weight(self) -> float: ...  # configured

    @property
    def effective_weight(self) -> float: ...  # configured x override factor

    @property
    def health(self) -> str: ...  # "healthy" | "unhealthy" | "ejected" | "unknown"

    @property
    def inflight(self) -> int: ...

    @property
    def max_concurrency(self) -> int: ...  # 0 = unlimited

    @property
    def ewma_latency_ms(self) -> float | None: ...

    @property
    def ejections(self) -> int: ...

    @property
    def override(self) -> Override | None: ...  # the degrade/drain in force, if any


class RoutingControl(Protocol):
    """What operators can see and change; every change is audited with actor and reason.

    Raises `appliance.errors` classes: BackendNotFound, ModelNotFound, OverrideNotFound,
    InvalidRequest (e.g. a factor outside 0 < f < 1).
    """

    def backends(self) -> Sequence[BackendView]: ...

    def overrides(self) -> list[Override]:
        """Overrides in force now (expired ones are not shown)."""
        ...

    async def degrade(
        self, backend_id: str, factor: float, reason: str, actor: str, ttl_s: float | None
    ) -> Override: ...

    async def drain(
        self, backend_id: str, reason: str, actor: str, ttl_s: float | None
    ) -> Override: ...

    async def restore(self, backend_id: str, reason: str, actor: str) -> list[Override]:
        """Remove the backend's degrade/drain overrides; returns the removed ones."""
        ...

    async def pin(
        self, model: str, backend_id: str, reason: str, actor: str, ttl_s: float | None
    ) -> Override: ...

    async def clear(self, override_id: str, reason: str, actor: str) -> Override: ...


class RoutingObserver(Protocol):
    """Where routing reports what it did (metrics); implemented in telemetry."""

    def attempt(self, backend_id: str, kind: str, success: bool, latency_s: float) -> None: ...

    def failover(self, from_backend: str, to_backend: str, reason: str) -> None: ...

    def decision(self, seconds: float) -> None: ...

    def ejected(self, backend_id: str) -> None: ...
