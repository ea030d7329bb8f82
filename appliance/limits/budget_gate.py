"""The spend a budget is checked against, in embedded mode: the SQLite store, cached.

Spend is read from the store at most once per org per `refresh_s` and kept up to date
locally as this router adds to it, so a budget check is almost never a round trip to the
disk. (With Redis the limits script reads the org's spend in the admission's own round
trip instead, and an external budget authority keeps its own cache.)
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from appliance.limits.ports import SpendStore

_REFRESH_S = 1.0


@dataclass(slots=True)
class _Cached:
    period: str
    spent: float
    fetched_at: float


class BudgetGate:
    def __init__(
        self, spend: SpendStore, monotonic: Callable[[], float], refresh_s: float = _REFRESH_S
    ) -> None:
        self._spend = spend
        self._monotonic = monotonic
        self._refresh_s = refresh_s
        self._cache: dict[str, _Cached] = {}

    async def spent(self, org: str, period: str) -> float:
        """The org's spend in `period` ("YYYY-MM"). Raises LimiterBackendError."""
        cached = self._cache.get(org)
        now = self._monotonic()
        if cached is None or cached.period != period or now - cached.fetched_at > self._refresh_s:
            spent = await self._spend.spent(org, period)
            cached = self._cache[org] = _Cached(period, spent, now)
        return cached.spent

    async def charge(self, org: str, period: str, usd: float) -> float:
        """Add to the org's spend in `period`; returns the period's total."""
        total = await self._spend.add(org, period, usd)
        cached = self._cache.get(org)
        if cached is not None and cached.period == period:
            cached.spent = total
        return total
