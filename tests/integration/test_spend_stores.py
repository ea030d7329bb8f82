"""The SpendStore contract of SQLite files (embedded mode).

In Redis, spend is read and added by the limits script: see test_admission_stores.py.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from pathlib import Path
from typing import Protocol

import pytest

from appliance.limits.ports import LimiterBackendError
from appliance.limits.spend_sqlite import SqliteSpendStore

MONTH, NEXT_MONTH = "2099-01", "2099-02"


class Store(Protocol):
    async def spent(self, org: str, period: str) -> float: ...
    async def add(self, org: str, period: str, usd: float) -> float: ...
    async def ping(self) -> None: ...


# Opens a store over the same data each time it is called (a restart).
Opener = Callable[[], AbstractAsyncContextManager[Store]]


@pytest.fixture
def open_store(tmp_path: Path) -> Opener:
    path = tmp_path / "state" / "spend.db"

    @asynccontextmanager
    async def sqlite() -> AsyncIterator[Store]:
        async with SqliteSpendStore(path) as store:
            yield store

    return sqlite


async def test_add_returns_running_total_and_spent_reads_it(open_store: Opener) -> None:
    """add() returns the new total, spent() reads it, and an unknown org has spent 0."""
    async with open_store() as store:
        assert await store.spent("acme", MONTH) == 0.0
        assert await store.add("acme", MONTH, 1.25) == pytest.approx(1.25)
        assert await store.add("acme", MONTH, 0.5) == pytest.approx(1.75)
        assert await store.spent("acme", MONTH) == pytest.approx(1.75)
        await store.ping()


async def test_refunds_subtract_and_non_finite_amounts_are_refused(open_store: Opener) -> None:
    """A negative amount lowers the total; NaN or infinity is a ValueError and changes nothing."""
    async with open_store() as store:
        await store.add("acme", MONTH, 2.0)
        assert await store.add("acme", MONTH, -0.5) == pytest.approx(1.5)
        for bad in (float("nan"), float("inf")):
            with pytest.raises(ValueError, match="finite"):
                await store.add("acme", MONTH, bad)
        assert await store.spent("acme", MONTH) == pytest.approx(1.5)


async def test_concurrent_adds_lose_nothing(open_store: Opener) -> None:
    """200 concurrent adds of 0.01 sum to 2.00, each seeing a distinct running total."""
    async with open_store() as store:
        totals = await asyncio.gather(*(store.add("acme", MONTH, 0.01) for _ in range(200)))
        assert await store.spent("acme", MONTH) == pytest.approx(2.0, abs=1e-9)
        assert sorted(totals) == pytest.approx([0.01 * i for i in range(1, 201)], abs=1e-9)
        # Binary-exact amounts leave no rounding to hide behind.
        await asyncio.gather(*(store.add("exact", MONTH, 0.125) for _ in range(200)))
        assert await store.spent("exact", MONTH) == 25.0


async def test_orgs_and_periods_are_independent(open_store: Opener) -> None:
    """Spend is kept per (org, period): neither another org nor another month sees it."""
    async with open_store() as store:
        await store.add("acme", MONTH, 3.0)
        await store.add("acme", NEXT_MONTH, 0.25)
        await store.add("globex", MONTH, 7.0)
        await store.add("acme:2099", MONTH, 1.0)  # a ':' in an org id cannot collide
        assert await store.spent("acme", MONTH) == pytest.approx(3.0)
        assert await store.spent("acme", NEXT_MONTH) == pytest.approx(0.25)
        assert await store.spent("globex", MONTH) == pytest.approx(7.0)
        assert await store.spent("acme:2099", MONTH) == pytest.approx(1.0)
        assert await store.spent("globex", NEXT_MONTH) == 0.0


async def test_spend_survives_a_reopen(open_store: Opener) -> None:
    """Spend written before a restart is read back."""
    async with open_store() as store:
        await store.add("acme", MONTH, 4.5)
    async with open_store() as store:
        assert await store.spent("acme", MONTH) == pytest.approx(4.5)
        assert await store.add("acme", MONTH, 0.5) == pytest.approx(5.0)


async def test_closed_sqlite_store_fails_as_backend_error(tmp_path: Path) -> None:
    """A SQLite store used after close() raises LimiterBackendError naming the file."""
    store = SqliteSpendStore(tmp_path / "spend.db")
    async with store:
        await store.add("acme", MONTH, 1.0)
    with pytest.raises(LimiterBackendError, match=r"spend\.db"):
        await store.spent("acme", MONTH)
    with pytest.raises(LimiterBackendError):
        await store.ping()
