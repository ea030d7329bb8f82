"""Retry budget arithmetic and override expiry."""

from __future__ import annotations

from appliance.routing.control import OverrideBook
from appliance.routing.overrides import ActiveOverrides, Override, OverrideKind
from appliance.routing.retry_budget import RetryBudget


def test_budget_allows_ratio_of_requests_plus_floor() -> None:
    """With ratio 0.2 and no floor, 100 requests allow 20 retries in the window."""
    budget = RetryBudget(ratio=0.2, min_per_s=0)
    for _ in range(100):
        budget.record_request(now=5.0)
    allowed = sum(budget.try_retry(now=5.5) for _ in range(50))
    assert allowed == 20


def test_budget_floor_allows_a_trickle_without_traffic() -> None:
    """min_per_s gives retries even with no recorded requests."""
    budget = RetryBudget(ratio=0.0, min_per_s=1, window_s=10)
    assert sum(budget.try_retry(now=1.0) for _ in range(20)) == 10


def test_budget_window_slides() -> None:
    """Old requests and retries leave the window."""
    budget = RetryBudget(ratio=1.0, min_per_s=0, window_s=10)
    budget.record_request(now=0)
    assert budget.try_retry(now=0)
    assert not budget.try_retry(now=1)
    budget.record_request(now=20)
    assert budget.try_retry(now=20)


def _override(expires_at: float | None, created: float = 0) -> Override:
    return Override(
        id=f"o{created}", kind=OverrideKind.DEGRADE, backend="b", model=None, factor=0.5,
        reason="r", actor="a", created_at=created, expires_at=expires_at,
    )  # fmt: skip


def test_expired_overrides_drop_out() -> None:
    """An override past its TTL no longer applies, without anyone removing it."""
    active = ActiveOverrides([_override(expires_at=10)], now=11)
    assert active.factor("b") == 1.0
    assert ActiveOverrides([_override(expires_at=10)], now=9).factor("b") == 0.5


def test_book_rebuilds_at_expiry() -> None:
    """OverrideBook caches the active set and refreshes it when an override lapses."""
    clock = [0.0]
    book = OverrideBook(lambda: clock[0])
    book.put(_override(expires_at=5))
    assert book.active().factor("b") == 0.5
    clock[0] = 6
    assert book.active().factor("b") == 1.0


def test_later_override_wins() -> None:
    """Of two overrides on one backend, the newer one applies."""
    active = ActiveOverrides([_override(None, created=2), _override(None, created=1)], now=3)
    assert len(active.items) == 2
    assert active.factor("b") == 0.5
