"""The budget gate over a real SQLite spend store, with an injected clock."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

from appliance.limits.budget_gate import BudgetGate
from appliance.limits.spend_sqlite import SqliteSpendStore


def at(year: int, month: int, day: int, hour: int = 0) -> float:
    return dt.datetime(year, month, day, hour, tzinfo=dt.UTC).timestamp()


async def test_spend_resets_at_the_month_boundary(tmp_path: Path) -> None:
    """What an org spent in November does not count against December."""
    wall = [at(2026, 11, 30, 23)]
    async with SqliteSpendStore(tmp_path / "spend.sqlite") as store:
        gate = BudgetGate(store, None, lambda: wall[0], lambda: wall[0], refresh_s=0)
        await gate.charge("acme", 9.5)
        november = await gate.status("acme", 10.0)
        assert november is not None
        assert november.spent_usd == 9.5
        assert november.period_end == at(2026, 12, 1)
        wall[0] = at(2026, 12, 1, 0) + 1
        december = await gate.status("acme", 10.0)
        assert december is not None
        assert december.spent_usd == 0.0
        assert december.period_end == at(2027, 1, 1)


async def test_no_budget_means_no_check(tmp_path: Path) -> None:
    """An org without a budget has no status to check."""
    async with SqliteSpendStore(tmp_path / "spend.sqlite") as store:
        gate = BudgetGate(store, None, lambda: 0.0, lambda: 0.0)
        assert await gate.status("acme", 0.0) is None


async def test_cached_spend_follows_local_charges(tmp_path: Path) -> None:
    """Within the refresh interval the cached spend includes this router's own charges."""
    clock = [1000.0]
    wall = at(2026, 11, 2)
    async with SqliteSpendStore(tmp_path / "spend.sqlite") as store:
        gate = BudgetGate(store, None, lambda: wall, lambda: clock[0], refresh_s=60)
        assert (await gate.status("acme", 1.0)).spent_usd == 0.0  # type: ignore[union-attr]
        await gate.charge("acme", 0.4)
        assert (await gate.status("acme", 1.0)).spent_usd == 0.4  # type: ignore[union-attr]
        await store.add("acme", "2026-11", 0.5)  # another replica
        assert (await gate.status("acme", 1.0)).spent_usd == 0.4  # type: ignore[union-attr]
        clock[0] += 61
        assert (await gate.status("acme", 1.0)).spent_usd == 0.9  # type: ignore[union-attr]
