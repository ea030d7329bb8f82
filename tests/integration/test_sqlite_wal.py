"""The state dir's SQLite stores keep their write-ahead logs small (a small state dir must not
fill by itself)."""

from __future__ import annotations

from pathlib import Path

from appliance.limits.spend_sqlite import SqliteSpendStore

_MIB = 1024 * 1024


def _size(path: Path) -> int:
    return path.stat().st_size


async def test_a_busy_store_keeps_its_write_ahead_log_near_one_mib(tmp_path: Path) -> None:
    """3,000 commits (SQLite's default would grow the log to ~4 MiB) leave it at ~1 MiB."""
    path = tmp_path / "spend.sqlite"
    wal = Path(f"{path}-wal")
    largest = 0
    async with SqliteSpendStore(path) as store:
        for n in range(3000):
            await store.add(f"org-{n % 500}", "2026-12", 0.01)
            if n % 100 == 99:
                largest = max(largest, _size(wal))
    assert 0 < largest <= 1.25 * _MIB
