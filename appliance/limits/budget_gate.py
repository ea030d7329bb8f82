"""Budgets on the request path: is there money left, and record what a request cost.

Spend is read from the store at most once per org per `refresh_s` and kept up to date
locally as this router adds to it, so a budget check is almost never a round trip. Another
replica's spend shows up within `refresh_s`: the overshoot bound is one refresh of traffic.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from appliance.limits.budget import period_end, period_of
from appliance.limits.ports import BudgetAuthority, BudgetStatus, SpendStore

_REFRESH_S = 1.0


@dataclass(slots=True)
class _Cached:
    period: str
    spent: float
    fetched_at: float


class BudgetGate:
    def __init__(
        self,
        spend: SpendStore,
        authority: BudgetAuthority | None,
        wall: Callable[[], float],
        monotonic: Callable[[], float],
        refresh_s: float = _REFRESH_S,
    ) -> None:
        self._spend = spend
        self._authority = authority
        self._wall = wall
        self._monotonic = monotonic
        self._refresh_s = refresh_s
        self._cache: dict[str, _Cached] = {}

    @property
    def external(self) -> bool:
        return self._authority is not None

    async def status(self, org: str, limit_usd: float) -> BudgetStatus | None:
        """The org's budget now, or None when it has none. Raises LimiterBackendError."""
        if self._authority is not None:
            # The authority is the truth for limit and spend; within its cache TTL this
            # router may overshoot by what it serves in that time.
            return await self._authority.status(org)
        if limit_usd <= 0:
            return None
        now = self._wall()
        period = period_of(now)
        cached = self._cache.get(org)
        fresh = self._monotonic()
        if cached is None or cached.period != period or fresh - cached.fetched_at > self._refresh_s:
            spent = await self._spend.spent(org, period)
            cached = self._cache[org] = _Cached(period, spent, fresh)
        return BudgetStatus(limit_usd, cached.spent, period_end(now))

    async def charge(self, org: str, usd: float) -> float:
        """Add a request's cost to the org's month; returns the month's total."""
        period = period_of(self._wall())
        total = await self._spend.add(org, period, usd)
        cached = self._cache.get(org)
        if cached is not None and cached.period == period:
            cached.spent = total
        return total
