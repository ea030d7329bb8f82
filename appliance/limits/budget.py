"""Budget arithmetic: calendar-month periods (UTC), request cost and what is left.

Pure: no I/O, no clock. Callers pass unix seconds, so tests pin any instant.
"""

from __future__ import annotations

import math
from datetime import UTC, datetime

_PERIOD_LEN = len("YYYY-MM")


def period_of(unix_seconds: float) -> str:
    """The UTC calendar month holding `unix_seconds`, as "YYYY-MM"."""
    moment = datetime.fromtimestamp(unix_seconds, UTC)
    return f"{moment.year:04d}-{moment.month:02d}"


def period_start(period: str) -> int:
    """Unix seconds of the first instant of `period` ("YYYY-MM"); ValueError if malformed."""
    year, month = _parse(period)
    return int(datetime(year, month, 1, tzinfo=UTC).timestamp())


def period_end(unix_seconds: float) -> int:
    """Unix seconds of the start of the month after the one holding `unix_seconds`."""
    return end_of_period(period_of(unix_seconds))


def end_of_period(period: str) -> int:
    """Unix seconds of the first instant after `period` ("YYYY-MM"); ValueError if malformed."""
    year, month = _parse(period)
    # Dec -> Jan of the next year; month lengths and leap days come from datetime.
    year, month = (year + 1, 1) if month == 12 else (year, month + 1)
    return int(datetime(year, month, 1, tzinfo=UTC).timestamp())


def cost_usd(
    prompt_tokens: int,
    completion_tokens: int,
    input_price_per_1k: float,
    output_price_per_1k: float,
) -> float:
    """What a request costs in USD at per-1k-token prices; ValueError on negative inputs."""
    # A negative count or price would silently credit the org's budget: refuse it.
    for name, value in (
        ("prompt_tokens", prompt_tokens),
        ("completion_tokens", completion_tokens),
        ("input_price_per_1k", input_price_per_1k),
        ("output_price_per_1k", output_price_per_1k),
    ):
        if not (value >= 0 and math.isfinite(value)):
            raise ValueError(f"{name} must be a finite number >= 0, got {value!r}")
    return (prompt_tokens * input_price_per_1k + completion_tokens * output_price_per_1k) / 1000


def budget_left(limit_usd: float, spent_usd: float) -> float:
    """USD still spendable this period, never negative; 0 means the budget is exhausted."""
    # NaN (a corrupt reading) must exhaust the budget rather than pass every comparison.
    left = limit_usd - spent_usd
    return left if left > 0 else 0.0


def _parse(period: str) -> tuple[int, int]:
    year_s, dash, month_s = period.partition("-")
    if (
        len(period) != _PERIOD_LEN
        or dash != "-"
        or not (year_s.isascii() and year_s.isdigit())
        or not (month_s.isascii() and month_s.isdigit())
        or not 1 <= int(month_s) <= 12
    ):
        raise ValueError(f"period must look like 'YYYY-MM', got {period!r}")
    return int(year_s), int(month_s)
