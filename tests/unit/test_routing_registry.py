"""Registry: in-flight, EWMA, outlier ejection with caps and decay, active probes."""

from __future__ import annotations

from appliance.routing.registry import Health, Registry
from appliance.settings import Backend, Model, ModelRoute, RoutingSettings, Settings


def registry(n: int = 4, **policy: float) -> Registry:
    settings = Settings(
        routing=RoutingSettings(**policy),  # type: ignore[arg-type]
        backends=tuple(Backend(id=f"b{i}", url="http://x/v1") for i in range(n)),
        models=(Model(name="m", backends=tuple(ModelRoute(backend=f"b{i}") for i in range(n))),),
    )
    return Registry.from_settings(settings)


def fail(reg: Registry, backend: str, times: int, now: float) -> list[object]:
    out = []
    for _ in range(times):
        reg.begin(backend)
        out.append(reg.end(backend, ok=False, latency_s=0.01, now=now))
    return out


def test_inflight_counts_up_and_down() -> None:
    """begin/end and abandon keep the in-flight count exact."""
    reg = registry()
    reg.begin("b0")
    reg.begin("b0")
    reg.end("b0", ok=True, latency_s=0.1, now=0)
    reg.abandon("b0")
    assert reg.get("b0").inflight == 0


def test_consecutive_failures_eject_and_success_resets() -> None:
    """N consecutive failures eject; a success in between resets the count."""
    reg = registry(consecutive_failures=3)
    fail(reg, "b0", 2, now=0)
    reg.begin("b0")
    reg.end("b0", ok=True, latency_s=0.1, now=0)
    assert fail(reg, "b0", 2, now=0) == [None, None]
    ejection = fail(reg, "b0", 1, now=0)[0]
    assert ejection is not None
    assert reg.get("b0").health(1.0) is Health.EJECTED
    assert not reg.get("b0").routable(1.0)


def test_ejection_time_grows_and_is_capped() -> None:
    """Each ejection lasts base x times ejected, capped by max_ejection_s."""
    reg = registry(consecutive_failures=1, base_ejection_s=10, max_ejection_s=25)
    first = fail(reg, "b0", 1, now=0)[0]
    second = fail(reg, "b0", 1, now=11)[0]
    third = fail(reg, "b0", 1, now=32)[0]
    assert [e.until for e in (first, second, third)] == [10, 31, 57]  # type: ignore[attr-defined]


def test_ejection_multiplier_decays_after_a_quiet_period() -> None:
    """A backend healthy for longer than max_ejection_s starts again at the base time."""
    reg = registry(consecutive_failures=1, base_ejection_s=10, max_ejection_s=25)
    fail(reg, "b0", 1, now=0)
    ejection = fail(reg, "b0", 1, now=100)[0]
    assert ejection.until == 110  # type: ignore[attr-defined]


def test_at_most_max_percent_ejected_but_always_one() -> None:
    """With 4 backends and 50 %, two may be ejected and the third stays in."""
    reg = registry(consecutive_failures=1, max_ejection_percent=50)
    results = [fail(reg, f"b{i}", 1, now=0)[0] for i in range(3)]
    assert [r is not None for r in results] == [True, True, False]
    small = registry(n=2, consecutive_failures=1, max_ejection_percent=10)
    assert fail(small, "b0", 1, now=0)[0] is not None  # one always may go


def test_failures_look_slow_to_ewma() -> None:
    """A fast failure is recorded as at least a second, so it never looks fast."""
    reg = registry()
    reg.begin("b0")
    reg.end("b0", ok=True, latency_s=0.05, now=0)
    fail(reg, "b0", 1, now=0)
    assert reg.get("b0").ewma_s is not None
    assert reg.get("b0").ewma_s > 0.2


def test_probes_mark_unhealthy_and_healthy_with_thresholds() -> None:
    """unhealthy_threshold failures take a backend out; healthy_threshold successes return it."""
    reg = registry(unhealthy_threshold=2, healthy_threshold=2)
    assert reg.record_probe("b0", ok=True, now=0) is False  # unknown -> healthy: still routable
    assert reg.get("b0").health(0) is Health.HEALTHY
    assert reg.record_probe("b0", ok=False, now=1) is False
    assert reg.record_probe("b0", ok=False, now=2) is True
    assert reg.get("b0").health(2) is Health.UNHEALTHY
    assert reg.record_probe("b0", ok=True, now=3) is False
    assert reg.record_probe("b0", ok=True, now=4) is True
    assert reg.get("b0").routable(4)


def test_recovering_probe_returns_an_ejected_backend_early() -> None:
    """A probe succeeding after failures (a restart) ends an outlier ejection early."""
    reg = registry(consecutive_failures=1, base_ejection_s=30, unhealthy_threshold=5)
    fail(reg, "b0", 1, now=0)
    reg.record_probe("b0", ok=False, now=1)
    assert not reg.get("b0").routable(1)
    assert reg.record_probe("b0", ok=True, now=2) is True
    assert reg.get("b0").routable(2)


def test_a_restart_seen_by_probes_returns_a_healthy_backend_at_the_threshold() -> None:
    """Healthy, ejected, probes fail then pass healthy_threshold times: back at once."""
    reg = registry(consecutive_failures=1, base_ejection_s=30, healthy_threshold=2)
    reg.record_probe("b0", ok=True, now=0)
    fail(reg, "b0", 1, now=0)
    reg.record_probe("b0", ok=False, now=1)  # down (restarting)
    assert reg.record_probe("b0", ok=True, now=2) is False  # one success: not yet
    assert reg.record_probe("b0", ok=True, now=3) is True  # the threshold: back early
    assert reg.get("b0").routable(3)


def test_probe_that_never_failed_does_not_undo_an_ejection() -> None:
    """A backend whose health check passes while its requests fail stays ejected."""
    reg = registry(consecutive_failures=1, base_ejection_s=30)
    reg.record_probe("b0", ok=True, now=0)
    fail(reg, "b0", 1, now=0)
    assert reg.record_probe("b0", ok=True, now=2) is False
    assert reg.get("b0").health(2) is Health.EJECTED


def test_panic_when_nothing_is_routable() -> None:
    """panic() is true only when every backend of the model is out."""
    reg = registry(n=2, consecutive_failures=1, max_ejection_percent=100)
    fail(reg, "b0", 1, now=0)
    assert not reg.panic("m", 1)
    fail(reg, "b1", 1, now=0)
    assert reg.panic("m", 1)
