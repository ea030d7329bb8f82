"""Routing decisions: which backend serves this attempt, and why (pure, no I/O).

Order: a pin override wins; then the model's backends minus those already tried, minus
drained ones, weighted by configured weight x override factor; unroutable (ejected or failing
probes) backends are skipped unless none is left (panic: use them all rather than fail all);
full backends are skipped, and busy ones (a 429 with Retry-After) unless all are; the strategy
picks among what remains.
"""

from __future__ import annotations

import enum
import random
from collections.abc import Collection
from dataclasses import dataclass

from appliance.errors import BackendsSaturated, NoBackendAvailable
from appliance.routing.overrides import ActiveOverrides
from appliance.routing.registry import BackendState, Registry
from appliance.routing.selection import ModelRoute, Target, pick_weighted


class DecisionKind(enum.StrEnum):
    PRIMARY = "PRIMARY"  # the only candidate
    WEIGHTED = "WEIGHTED"
    LEAST_LOADED = "LEAST_LOADED"
    OVERRIDE = "OVERRIDE"  # an operator pin
    FAILOVER = "FAILOVER"  # a retry after a failed attempt


@dataclass(frozen=True, slots=True)
class Decision:
    target: Target
    kind: DecisionKind
    panic: bool = False


@dataclass(frozen=True, slots=True)
class _Candidate:
    target: Target
    state: BackendState
    weight: float


def decide(
    route: ModelRoute,
    registry: Registry,
    overrides: ActiveOverrides,
    *,
    tried: Collection[str],
    now: float,
    rng: random.Random,
) -> Decision:
    """Choose the backend for one attempt; raises NoBackendAvailable or BackendsSaturated."""
    pinned = overrides.pinned(route.name)
    if pinned is not None and pinned not in tried:
        state = registry.get(pinned)
        if state.full():
            raise BackendsSaturated(retry_after_s=1)
        upstream = next((t for t in route.targets if t.backend_id == pinned), None)
        target = upstream or Target(pinned, route.name, state.weight)
        return Decision(target, DecisionKind.OVERRIDE)
    candidates = [
        _Candidate(t, registry.get(t.backend_id), t.weight * overrides.factor(t.backend_id))
        for t in route.targets
        if t.backend_id not in tried and overrides.factor(t.backend_id) > 0
    ]
    if not candidates:
        raise NoBackendAvailable()
    routable = [c for c in candidates if c.state.routable(now)]
    panic = not routable
    pool = [c for c in (candidates if panic else routable) if not c.state.full()]
    if not pool:
        raise BackendsSaturated(retry_after_s=1)
    # Backends resting after a 429 get traffic only when every other one rests too.
    pool = [c for c in pool if not c.state.busy(now)] or pool
    kind = _kind(route.strategy, tried, len(pool))
    if len(pool) == 1:
        chosen = pool[0]
    elif route.strategy == "least_loaded":
        chosen = _least_loaded(pool, rng)
    else:
        by_id = {c.target.backend_id: c for c in pool}
        weighted = [Target(c.target.backend_id, c.target.upstream_model, c.weight) for c in pool]
        chosen = by_id[pick_weighted(weighted, rng).backend_id]
    return Decision(chosen.target, kind, panic)


def _kind(strategy: str, tried: Collection[str], pool_size: int) -> DecisionKind:
    if tried:
        return DecisionKind.FAILOVER
    if pool_size == 1:
        return DecisionKind.PRIMARY
    return DecisionKind.LEAST_LOADED if strategy == "least_loaded" else DecisionKind.WEIGHTED


def _load_score(candidate: _Candidate) -> float:
    """Lower is better. In-flight counts squared (streams hold slots for long, so load must
    dominate), times latency (errors recorded as slow), divided by weight."""
    latency = candidate.state.ewma_s if candidate.state.ewma_s is not None else 0.05
    return (candidate.state.inflight + 1) ** 2 * (latency + 0.001) / max(candidate.weight, 1e-6)


def _least_loaded(pool: list[_Candidate], rng: random.Random) -> _Candidate:
    """Power of two choices: two distinct candidates drawn by weight, the less loaded wins."""
    weighted = [Target(c.target.backend_id, c.target.upstream_model, c.weight) for c in pool]
    first = pick_weighted(weighted, rng).backend_id
    rest = [t for t in weighted if t.backend_id != first]
    second = pick_weighted(rest, rng).backend_id
    by_id = {c.target.backend_id: c for c in pool}
    a, b = by_id[first], by_id[second]
    return a if _load_score(a) <= _load_score(b) else b
