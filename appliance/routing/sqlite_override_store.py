"""OverrideStore on a SQLite file in the state dir, so operator overrides survive a restart."""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Any

from appliance.routing.overrides import Override, OverrideKind
from appliance.sqlite_support import SqliteStore, SqliteWorker, StoreError

_SCHEMA = """
CREATE TABLE IF NOT EXISTS overrides (
    id         TEXT PRIMARY KEY,
    kind       TEXT NOT NULL,
    backend    TEXT NOT NULL,
    model      TEXT,
    factor     REAL NOT NULL,
    reason     TEXT NOT NULL,
    actor      TEXT NOT NULL,
    created_at REAL NOT NULL,
    expires_at REAL
);
"""
_SELECT = (
    "SELECT id, kind, backend, model, factor, reason, actor, created_at, expires_at FROM overrides"
)
_INSERT = (
    "INSERT OR REPLACE INTO overrides"
    " (id, kind, backend, model, factor, reason, actor, created_at, expires_at)"
    " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)"
)


class SqliteOverrideStore(SqliteStore):
    """Durable overrides, one row each, keyed by id.

    Use `await open()` / `await close()`, or `async with SqliteOverrideStore(path) as store`.
    """

    def __init__(self, path: Path) -> None:
        # NORMAL: in WAL mode a power cut may lose the last commits but never corrupts the
        # file; overrides are rare operator actions, also recorded in the (FULL) audit store.
        self._worker = SqliteWorker(
            path, schema=_SCHEMA, version=1, synchronous="NORMAL", name="override"
        )

    async def list(self) -> list[Override]:
        """Every stored override, expired ones included until purged, oldest first."""
        rows = await self._worker.run("list", _select_all)
        return [self._decode(row) for row in rows]

    async def version(self) -> int:
        """Changes whenever another connection (another worker) commits to the file."""
        return await self._worker.run("version", _data_version)

    async def put(self, override: Override) -> None:
        """Insert or replace by id."""
        row = (
            override.id,
            override.kind.value,
            override.backend,
            override.model,
            override.factor,
            override.reason,
            override.actor,
            override.created_at,
            override.expires_at,
        )

        def insert(conn: sqlite3.Connection) -> None:
            with conn:
                conn.execute(_INSERT, row)

        await self._worker.run("put", insert)

    async def delete(self, override_id: str) -> Override | None:
        """Remove one; returns what was removed, or None if there was nothing."""

        def remove(conn: sqlite3.Connection) -> tuple[Any, ...] | None:
            with conn:  # read and delete in one transaction
                found: tuple[Any, ...] | None = conn.execute(
                    _SELECT + " WHERE id = ?", (override_id,)
                ).fetchone()
                if found is not None:
                    conn.execute("DELETE FROM overrides WHERE id = ?", (override_id,))
            return found

        row = await self._worker.run("delete", remove)
        return None if row is None else self._decode(row)

    async def purge_expired(self, now: float) -> int:
        """Delete overrides with expires_at <= now (the instant they stop being active)."""

        def purge(conn: sqlite3.Connection) -> int:
            with conn:
                cursor = conn.execute(
                    "DELETE FROM overrides WHERE expires_at IS NOT NULL AND expires_at <= ?",
                    (now,),
                )
            return cursor.rowcount

        return await self._worker.run("purge_expired", purge)

    def _decode(self, row: tuple[Any, ...]) -> Override:
        id_, kind, backend, model, factor, reason, actor, created_at, expires_at = row
        try:
            kind = OverrideKind(kind)
        except ValueError:
            # A kind this version does not know: refuse rather than route on a guess.
            raise StoreError(f"{self.path}: override {id_!r} has unknown kind {kind!r}") from None
        return Override(
            id=id_,
            kind=kind,
            backend=backend,
            model=model,
            factor=factor,
            reason=reason,
            actor=actor,
            created_at=created_at,
            expires_at=expires_at,
        )


def _select_all(conn: sqlite3.Connection) -> list[tuple[Any, ...]]:
    return conn.execute(_SELECT + " ORDER BY created_at, id").fetchall()


def _data_version(conn: sqlite3.Connection) -> int:
    return int(conn.execute("PRAGMA data_version").fetchone()[0])
