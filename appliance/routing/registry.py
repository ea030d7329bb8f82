"""Live state of every backend: in-flight, latency, active and passive health (pure, no I/O).

Times passed in are monotonic seconds. Passive health is Envoy's consecutive-failure outlier
detection: `consecutive_failures` request failures eject a backend for base x times-ejected
(capped), never more than `max_ejection_percent` of a model's backends at once (but at least
one). A probe that succeeds after failing returns an ejected backend early.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable
from dataclasses import dataclass, field

from appliance.settings import RoutingSettings, Settings

_EWMA_ALPHA = 0.2
# A failure is recorded as at least this slow, and slower than the backend's usual self, so a
# backend that fails fast never looks like the fastest one to least-loaded selection.
_FAILURE_FLOOR_S = 1.0
_FAILURE_FACTOR = 4.0


class Health(enum.StrEnum):
    HEALTHY = "healthy"
    UNHEALTHY = "unhealthy"  # failing active probes
    EJECTED = "ejected"  # outlier ejection after request failures
    UNKNOWN = "unknown"  # not probed yet: routable


@dataclass(slots=True)
class BackendState:
    id: str
    weight: float
    max_concurrency: int
    models: tuple[str, ...]
    inflight: int = 0
    ewma_s: float | None = None
    consecutive_failures: int = 0
    ejections: int = 0
    ejected_until: float | None = None
    last_ejection_end: float | None = None
    probe_ok: bool | None = None  # None until the thresholds decide
    probe_streak: int = 0  # >0 successes in a row, <0 failures in a row
    probe_saw_down: bool = False  # a probe failed since probes last called it healthy
    busy_until: float | None = None  # it answered 429 with Retry-After: peers first till then

    def ejected(self, now: float) -> bool:
        return self.ejected_until is not None and now < self.ejected_until

    def routable(self, now: float) -> bool:
        return not self.ejected(now) and self.probe_ok is not False

    def busy(self, now: float) -> bool:
        return self.busy_until is not None and now < self.busy_until

    def full(self) -> bool:
        return 0 < self.max_concurrency <= self.inflight

    def health(self, now: float) -> Health:
        if self.ejected(now):
            return Health.EJECTED
        if self.probe_ok is None:
            return Health.UNKNOWN
        return Health.HEALTHY if self.probe_ok else Health.UNHEALTHY


@dataclass(frozen=True, slots=True)
class Ejection:
    backend_id: str
    until: float
    times: int


@dataclass(slots=True)
class Registry:
    """Every backend's state plus the policy that moves it; one per router process."""

    policy: RoutingSettings
    backends: dict[str, BackendState] = field(default_factory=dict)
    model_backends: dict[str, tuple[str, ...]] = field(default_factory=dict)
    # Backends a config change removed: requests that picked one before the change still
    # finish against its state; a later config that brings the id back gets it back.
    retired: dict[str, BackendState] = field(default_factory=dict)

    @classmethod
    def from_settings(cls, settings: Settings) -> Registry:
        registry = cls(policy=settings.routing)
        registry.reconcile(settings)
        return registry

    def reconcile(self, settings: Settings) -> None:
        """Follow a new config: new backends start fresh; kept ones keep their health,
        latency, load and ejections; removed ones retire. Runs between two awaits, so no
        request sees it half done."""
        models: dict[str, list[str]] = {}
        for model in settings.models:
            for route in model.backends:
                models.setdefault(route.backend, []).append(model.name)
        backends: dict[str, BackendState] = {}
        for b in settings.backends:
            state = self.backends.get(b.id) or self.retired.pop(b.id, None)
            if state is None:
                state = BackendState(
                    id=b.id, weight=b.weight, max_concurrency=b.max_concurrency, models=()
                )
            state.weight, state.max_concurrency = b.weight, b.max_concurrency
            state.models = tuple(dict.fromkeys(models.get(b.id, ())))
            backends[b.id] = state
        for gone in self.backends.keys() - backends.keys():
            self.retired[gone] = self.backends[gone]
        self.policy = settings.routing
        self.backends = backends
        self.model_backends = {
            m.name: tuple(dict.fromkeys(r.backend for r in m.backends)) for m in settings.models
        }

    def get(self, backend_id: str) -> BackendState:
        state = self.backends.get(backend_id)
        return state if state is not None else self.retired[backend_id]

    def begin(self, backend_id: str) -> None:
        self.get(backend_id).inflight += 1

    def abandon(self, backend_id: str) -> None:
        """An attempt the client gave up on: frees its slot, says nothing about health."""
        state = self.get(backend_id)
        state.inflight = max(0, state.inflight - 1)

    def end(self, backend_id: str, ok: bool, latency_s: float, now: float) -> Ejection | None:
        """An attempt finished; update latency and passive health. Returns a new ejection."""
        state = self.get(backend_id)
        state.inflight = max(0, state.inflight - 1)
        if ok:
            state.consecutive_failures = 0
            _observe(state, latency_s)
            return None
        usual = state.ewma_s or 0.0
        _observe(state, max(latency_s, _FAILURE_FLOOR_S, usual * _FAILURE_FACTOR))
        state.consecutive_failures += 1
        if state.consecutive_failures < self.policy.consecutive_failures or state.ejected(now):
            return None
        if not self._may_eject(state, now):
            return None
        return self._eject(state, now)

    def end_busy(self, backend_id: str, rest_s: float | None, now: float) -> None:
        """An attempt the backend refused with a 429: frees its slot, says nothing about
        health; with a Retry-After (capped at max_ejection_s) it is busy until then."""
        state = self.get(backend_id)
        state.inflight = max(0, state.inflight - 1)
        if rest_s is not None:
            until = now + min(rest_s, self.policy.max_ejection_s)
            state.busy_until = max(until, state.busy_until or until)

    def record_probe(self, backend_id: str, ok: bool, now: float) -> bool:
        """An active probe result; returns True when the backend's routability changed."""
        state = self.get(backend_id)
        before = state.routable(now)
        if ok:
            state.probe_streak = max(state.probe_streak, 0) + 1
            if state.probe_ok is None or state.probe_streak >= self.policy.healthy_threshold:
                state.probe_ok = True
                # Back early only when probes saw it down and now see it up (a restart): a
                # backend whose /health says OK while it answers 500 stays ejected.
                if state.probe_saw_down and state.ejected(now):
                    state.ejected_until = now  # back early, as Envoy does on a good probe
                    state.last_ejection_end = now
                    state.consecutive_failures = 0
                state.probe_saw_down = False
        else:
            state.probe_saw_down = True
            state.probe_streak = min(state.probe_streak, 0) - 1
            if -state.probe_streak >= self.policy.unhealthy_threshold:
                state.probe_ok = False
        return before != state.routable(now)

    def panic(self, model: str, now: float) -> bool:
        """True when no backend of the model is routable: then all are used anyway."""
        return not any(self.backends[b].routable(now) for b in self.model_backends.get(model, ()))

    def _may_eject(self, state: BackendState, now: float) -> bool:
        for model in state.models:
            members = self.model_backends.get(model, ())
            ejected = sum(1 for b in members if self.backends[b].ejected(now))
            # At least one may always go; beyond that, stay within the percentage.
            if ejected and (ejected + 1) * 100 > self.policy.max_ejection_percent * len(members):
                return False
        return True

    def _eject(self, state: BackendState, now: float) -> Ejection:
        policy = self.policy
        # The multiplier decays: a backend healthy for a full max period starts over.
        if state.last_ejection_end is not None and now - state.last_ejection_end > max(
            policy.max_ejection_s, policy.base_ejection_s
        ):
            state.ejections = 0
        state.ejections += 1
        duration = min(
            policy.base_ejection_s * state.ejections,
            max(policy.max_ejection_s, policy.base_ejection_s),
        )
        state.ejected_until = now + duration
        state.last_ejection_end = state.ejected_until
        state.consecutive_failures = 0
        return Ejection(state.id, state.ejected_until, state.ejections)

    def states(self, ids: Iterable[str]) -> list[BackendState]:
        return [self.get(i) for i in ids]


def _observe(state: BackendState, seconds: float) -> None:
    if state.ewma_s is None:
        state.ewma_s = seconds
    else:
        state.ewma_s += _EWMA_ALPHA * (seconds - state.ewma_s)
