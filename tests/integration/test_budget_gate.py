"""The budget gate (cached spend of embedded mode) over a real SQLite spend store."""

from __future__ import annotations

from pathlib import Path

from appliance.limits.budget_gate import BudgetGate
from appliance.limits.spend_sqlite import SqliteSpendStore


async def test_spend_is_kept_per_period(tmp_path: Path) -> None:
    """What an org spent in November does not count against December."""
    async with SqliteSpendStore(tmp_path / "spend.sqlite") as store:
        gate = BudgetGate(store, lambda: 0.0, refresh_s=60)
        assert await gate.charge("acme", "2026-11", 9.5) == 9.5
        assert await gate.spent("acme", "2026-11") == 9.5
        assert await gate.spent("acme", "2026-12") == 0.0
        assert await gate.charge("acme", "2026-11", 0.5) == 10.0  # a late November bill
        assert await gate.spent("acme", "2026-12") == 0.0


async def test_cached_spend_follows_local_charges(tmp_path: Path) -> None:
    """Within the refresh interval the cached spend includes this router's own charges."""
    clock = [1000.0]
    async with SqliteSpendStore(tmp_path / "spend.sqlite") as store:
        gate = BudgetGate(store, lambda: clock[0], refresh_s=60)
        assert await gate.spent("acme", "2026-11") == 0.0
        await gate.charge("acme", "2026-11", 0.4)
        assert await gate.spent("acme", "2026-11") == 0.4
        await store.add("acme", "2026-11", 0.5)  # written behind the cache's back
        assert await gate.spent("acme", "2026-11") == 0.4
        clock[0] += 61
        assert await gate.spent("acme", "2026-11") == 0.9
