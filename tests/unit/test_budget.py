"""Budget arithmetic: UTC calendar months, request cost, what is left."""

from __future__ import annotations

import math
from datetime import UTC, datetime

import pytest

from appliance.limits.budget import (
    budget_left,
    cost_usd,
    end_of_period,
    period_end,
    period_of,
    period_start,
)


def ts(year: int, month: int, day: int, *hms: int) -> float:
    """Unix seconds of a UTC date and optional hour, minute, second."""
    hour, minute, second = (*hms, 0, 0, 0)[:3]
    return datetime(year, month, day, hour, minute, second, tzinfo=UTC).timestamp()


@pytest.mark.parametrize(
    ("instant", "period"),
    [
        (ts(2024, 1, 1), "2024-01"),
        (ts(2024, 1, 31, 23, 59, 59) + 0.999, "2024-01"),
        (ts(2023, 12, 31, 23, 59, 59) + 0.5, "2023-12"),
        (ts(2024, 2, 29, 12), "2024-02"),
        (0.0, "1970-01"),
        (ts(2099, 7, 4), "2099-07"),
    ],
)
def test_period_of_is_the_utc_calendar_month(instant: float, period: str) -> None:
    """An instant falls in the UTC month holding it, up to the last fraction of a second."""
    assert period_of(instant) == period


def test_period_of_ignores_the_local_timezone() -> None:
    """An instant just after midnight UTC on the 1st is in the new month whatever the offset."""
    assert period_of(ts(2024, 3, 1, 0, 0, 1)) == "2024-03"
    assert period_of(ts(2024, 3, 1) - 1) == "2024-02"


@pytest.mark.parametrize(
    ("instant", "end"),
    [
        (ts(2023, 12, 15), ts(2024, 1, 1)),  # December rolls into January of the next year
        (ts(2023, 12, 31, 23, 59, 59), ts(2024, 1, 1)),
        (ts(2024, 1, 1), ts(2024, 2, 1)),  # the first instant of a month is inside it
        (ts(2024, 2, 10), ts(2024, 3, 1)),  # leap year: February has 29 days
        (ts(2024, 2, 29, 23, 59, 59), ts(2024, 3, 1)),
        (ts(2023, 2, 28, 23, 59, 59), ts(2023, 3, 1)),  # common year
        (ts(2100, 2, 28), ts(2100, 3, 1)),  # divisible by 100: not a leap year
        (ts(2000, 2, 29), ts(2000, 3, 1)),  # divisible by 400: a leap year
        (ts(2024, 4, 30, 23), ts(2024, 5, 1)),  # a 30-day month
    ],
)
def test_period_end_is_the_next_months_first_instant(instant: float, end: float) -> None:
    """period_end returns the unix second at which the next UTC month starts."""
    assert period_end(instant) == end
    assert period_of(end) != period_of(instant)
    assert period_of(end - 1) == period_of(instant)


def test_period_bounds_round_trip() -> None:
    """Every month of a leap year starts where the one before it ends."""
    for month in range(1, 13):
        period = f"2024-{month:02d}"
        assert period_of(period_start(period)) == period
        assert period_of(end_of_period(period) - 1) == period
    assert end_of_period("2024-02") - period_start("2024-02") == 29 * 86_400
    assert end_of_period("2023-02") - period_start("2023-02") == 28 * 86_400
    assert end_of_period("2024-12") == period_start("2025-01")


@pytest.mark.parametrize(
    "bad", ["2024-13", "2024-00", "2024-1", "24-01", "2024/01", "", "\uff12\uff10\uff12\uff14-01"]
)
def test_malformed_periods_are_refused(bad: str) -> None:
    """A period that is not 'YYYY-MM' with a real month is a ValueError, not a guess."""
    with pytest.raises(ValueError, match="YYYY-MM"):
        end_of_period(bad)


def test_cost_uses_prices_per_thousand_tokens() -> None:
    """Prompt and completion tokens are priced separately, per 1k tokens."""
    assert cost_usd(1000, 0, 0.5, 1.5) == pytest.approx(0.5)
    assert cost_usd(0, 1000, 0.5, 1.5) == pytest.approx(1.5)
    assert cost_usd(1500, 500, 0.01, 0.03) == pytest.approx(0.015 + 0.015)
    assert cost_usd(0, 0, 0.5, 1.5) == 0.0
    assert cost_usd(10, 10, 0.0, 0.0) == 0.0


@pytest.mark.parametrize(
    "args",
    [(-1, 0, 1.0, 1.0), (0, -1, 1.0, 1.0), (1, 1, -0.1, 1.0), (1, 1, 1.0, math.nan)],
)
def test_cost_refuses_negative_or_nan_inputs(args: tuple[int, int, float, float]) -> None:
    """A negative count or price, which would credit the budget, is a ValueError."""
    with pytest.raises(ValueError, match="finite number >= 0"):
        cost_usd(*args)


@pytest.mark.parametrize(
    ("limit", "spent", "left"),
    [(10.0, 2.5, 7.5), (10.0, 10.0, 0.0), (10.0, 12.0, 0.0), (0.0, 0.0, 0.0), (5.0, -1.0, 6.0)],
)
def test_budget_left_is_never_negative(limit: float, spent: float, left: float) -> None:
    """What is left is limit minus spent, floored at zero (overspend leaves nothing)."""
    assert budget_left(limit, spent) == pytest.approx(left)


def test_budget_left_treats_nan_as_exhausted() -> None:
    """A NaN reading exhausts the budget instead of slipping past every comparison."""
    assert budget_left(10.0, math.nan) == 0.0
    assert budget_left(math.nan, 1.0) == 0.0
