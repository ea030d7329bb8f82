"""Decisions: pins, drains, degrade weights, panic, saturation, failover, least-loaded."""

from __future__ import annotations

import random
from collections import Counter

import pytest

from appliance.errors import BackendsSaturated, NoBackendAvailable
from appliance.routing.engine import DecisionKind, decide
from appliance.routing.overrides import ActiveOverrides, Override, OverrideKind
from appliance.routing.registry import Registry
from appliance.routing.selection import ModelRoute, RouteTable
from appliance.settings import Backend, Model, RoutingSettings, Settings
from appliance.settings import ModelRoute as RouteSetting


def setup(strategy: str = "weighted", max_concurrency: int = 0) -> tuple[ModelRoute, Registry]:
    settings = Settings(
        routing=RoutingSettings(consecutive_failures=1, max_ejection_percent=100),
        backends=tuple(
            Backend(id=f"b{i}", url="http://x/v1", max_concurrency=max_concurrency)
            for i in range(3)
        ),
        models=(
            Model(
                name="m",
                strategy=strategy,  # type: ignore[arg-type]
                backends=tuple(
                    RouteSetting(backend=f"b{i}", upstream_model=f"u{i}") for i in range(3)
                ),
            ),
        ),
    )
    route = RouteTable.from_settings(settings).get("m")
    assert route is not None
    return route, Registry.from_settings(settings)


def override(kind: OverrideKind, backend: str, factor: float, model: str | None = None) -> Override:
    return Override(
        id=f"o-{backend}-{kind}", kind=kind, backend=backend, model=model, factor=factor,
        reason="test", actor="t", created_at=0, expires_at=None,
    )  # fmt: skip


NONE = ActiveOverrides((), 0)


def counts(
    route: ModelRoute, reg: Registry, overrides: ActiveOverrides, n: int = 3000
) -> Counter[str]:
    rng = random.Random(3)
    return Counter(
        decide(route, reg, overrides, tried=(), now=0, rng=rng).target.backend_id for _ in range(n)
    )


def test_weighted_spreads_and_names_the_kind() -> None:
    """Equal weights spread evenly and the decision is WEIGHTED with the upstream name."""
    route, reg = setup()
    decision = decide(route, reg, NONE, tried=(), now=0, rng=random.Random(1))
    assert decision.kind is DecisionKind.WEIGHTED
    assert decision.target.upstream_model == f"u{decision.target.backend_id[1]}"
    assert min(counts(route, reg, NONE).values()) > 800


def test_degrade_shrinks_share_and_drain_removes() -> None:
    """A degrade factor of 0.25 cuts a backend's share to a quarter; drain sends nothing."""
    route, reg = setup()
    degraded = ActiveOverrides([override(OverrideKind.DEGRADE, "b0", 0.25)], 0)
    share = counts(route, reg, degraded)["b0"] / 3000
    assert 0.08 < share < 0.14  # 0.25 / 2.25 = 0.111
    drained = ActiveOverrides([override(OverrideKind.DRAIN, "b1", 0.0)], 0)
    assert counts(route, reg, drained)["b1"] == 0


def test_pin_wins_until_it_fails() -> None:
    """A pin sends the model to one backend; on failover the others are used."""
    route, reg = setup()
    pinned = ActiveOverrides([override(OverrideKind.PIN, "b2", 1.0, model="m")], 0)
    decision = decide(route, reg, pinned, tried=(), now=0, rng=random.Random())
    assert (decision.target.backend_id, decision.kind) == ("b2", DecisionKind.OVERRIDE)
    retry = decide(route, reg, pinned, tried=("b2",), now=0, rng=random.Random())
    assert retry.kind is DecisionKind.FAILOVER
    assert retry.target.backend_id != "b2"


def test_failover_skips_tried_and_runs_out() -> None:
    """Tried backends are excluded; when all are tried NoBackendAvailable is raised."""
    route, reg = setup()
    decision = decide(route, reg, NONE, tried=("b0", "b1"), now=0, rng=random.Random())
    assert (decision.target.backend_id, decision.kind) == ("b2", DecisionKind.FAILOVER)
    with pytest.raises(NoBackendAvailable):
        decide(route, reg, NONE, tried=("b0", "b1", "b2"), now=0, rng=random.Random())


def test_ejected_skipped_and_panic_uses_all() -> None:
    """Ejected backends get nothing while others live; when all are out, all are used."""
    route, reg = setup()
    for backend in ("b0", "b1"):
        reg.begin(backend)
        reg.end(backend, ok=False, latency_s=0, now=0)
    assert set(counts(route, reg, NONE, 300)) == {"b2"}
    reg.begin("b2")
    reg.end("b2", ok=False, latency_s=0, now=0)
    decision = decide(route, reg, NONE, tried=(), now=1, rng=random.Random())
    assert decision.panic


def test_full_backends_skipped_then_saturated() -> None:
    """At max_concurrency a backend is skipped; all full is 503 with Retry-After."""
    route, reg = setup(max_concurrency=1)
    reg.begin("b0")
    reg.begin("b1")
    assert decide(route, reg, NONE, tried=(), now=0, rng=random.Random()).target.backend_id == "b2"
    reg.begin("b2")
    with pytest.raises(BackendsSaturated) as caught:
        decide(route, reg, NONE, tried=(), now=0, rng=random.Random())
    assert caught.value.headers() == {"retry-after": "1"}


def test_least_loaded_avoids_busy_and_slow_backends() -> None:
    """least_loaded sends less to a backend with many in flight or high latency."""
    route, reg = setup(strategy="least_loaded")
    for _ in range(5):
        reg.begin("b0")  # busy
    for backend, latency in (("b1", 0.5), ("b2", 0.05)):
        reg.begin(backend)
        reg.end(backend, ok=True, latency_s=latency, now=0)
    seen = counts(route, reg, NONE)
    assert seen["b2"] > seen["b1"] > seen["b0"]
    assert decide(route, reg, NONE, tried=(), now=0, rng=random.Random()).kind is (
        DecisionKind.LEAST_LOADED
    )
