"""SpendStore on a SQLite file in the state dir, so one replica's spend survives restarts."""

from __future__ import annotations

import math
import sqlite3
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

from appliance.limits.ports import LimiterBackendError
from appliance.sqlite_support import SqliteStore, SqliteWorker, StoreError

T = TypeVar("T")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS spend (
    org       TEXT NOT NULL,
    period    TEXT NOT NULL,
    spent_usd REAL NOT NULL,
    PRIMARY KEY (org, period)
) WITHOUT ROWID;
"""
# One statement adds and reads back, so concurrent writers (even another process on the same
# file) never lose an update between a read and a write.
_UPSERT = (
    "INSERT INTO spend (org, period, spent_usd) VALUES (?, ?, ?)"
    " ON CONFLICT (org, period) DO UPDATE SET spent_usd = spent_usd + excluded.spent_usd"
    " RETURNING spent_usd"
)


class SqliteSpendStore(SqliteStore):
    """Spend per (org, period), one row each; `async with SqliteSpendStore(path) as store`.

    open() raises StoreError naming the file; spent()/add()/ping() raise LimiterBackendError,
    the limiter's one failure type.
    """

    def __init__(self, path: Path) -> None:
        # NORMAL: in WAL mode a commit survives a process crash (SIGKILL) and only a power cut
        # can lose the last few; no fsync per request keeps settle() off the disk's latency.
        self._worker = SqliteWorker(
            path, schema=_SCHEMA, version=1, synchronous="NORMAL", name="spend"
        )

    async def spent(self, org: str, period: str) -> float:
        """USD spent by `org` in `period` ("YYYY-MM"); 0.0 when nothing was recorded."""

        def select(conn: sqlite3.Connection) -> float:
            row = conn.execute(
                "SELECT spent_usd FROM spend WHERE org = ? AND period = ?", (org, period)
            ).fetchone()
            return 0.0 if row is None else float(row[0])

        return await self._run("spent", select)

    async def add(self, org: str, period: str, usd: float) -> float:
        """Add `usd` (may be negative, a refund) to the org's spend; returns the new total."""
        if not math.isfinite(usd):
            raise ValueError(f"usd must be finite, got {usd!r}")

        def upsert(conn: sqlite3.Connection) -> float:
            with conn:
                (total,) = conn.execute(_UPSERT, (org, period, usd)).fetchone()
            return float(total)

        return await self._run("add", upsert)

    async def ping(self) -> None:
        """Raise LimiterBackendError unless a statement runs on the open file."""

        def probe(conn: sqlite3.Connection) -> None:
            conn.execute("SELECT 1 FROM spend LIMIT 1").fetchall()

        await self._run("ping", probe)

    async def _run(self, op: str, fn: Callable[[sqlite3.Connection], T]) -> T:
        try:
            return await self._worker.run(op, fn)
        except StoreError as exc:
            raise LimiterBackendError(str(exc)) from exc
