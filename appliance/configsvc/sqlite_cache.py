"""The last-known-good cache: the config service's last applied documents, in the state dir.

A router started while etcd is unreachable serves from it. One row: replaced whole on each
apply, so a crash mid-write leaves the previous snapshot (one SQLite transaction).
"""

from __future__ import annotations

import json
import sqlite3
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from functools import partial
from pathlib import Path

from appliance.sqlite_support import SqliteStore, SqliteWorker

_SCHEMA = """
BEGIN;
CREATE TABLE IF NOT EXISTS snapshot (
    id        INTEGER PRIMARY KEY CHECK (id = 1),
    revision  INTEGER NOT NULL,
    saved_at  REAL NOT NULL,
    documents TEXT NOT NULL
);
COMMIT;
"""


@dataclass(frozen=True, slots=True)
class CachedSnapshot:
    revision: int
    saved_at: float
    documents: dict[str, bytes]


class SqliteConfigCache(SqliteStore):
    def __init__(self, path: Path, clock: Callable[[], float] = time.time) -> None:
        # FULL: the cache is written once per config change, and must survive power loss.
        self._worker = SqliteWorker(
            path, schema=_SCHEMA, version=1, synchronous="FULL", name="config cache"
        )
        self._clock = clock

    async def save(self, revision: int, documents: Mapping[str, bytes]) -> None:
        text = json.dumps({k: v.decode("utf-8", "surrogateescape") for k, v in documents.items()})
        await self._worker.run(
            "save", partial(_save, revision=revision, at=self._clock(), text=text)
        )

    async def load(self) -> CachedSnapshot | None:
        return await self._worker.run("load", _load)


def _save(conn: sqlite3.Connection, *, revision: int, at: float, text: str) -> None:
    with conn:
        conn.execute(
            "INSERT OR REPLACE INTO snapshot (id, revision, saved_at, documents)"
            " VALUES (1, ?, ?, ?)",
            (revision, at, text),
        )


def _load(conn: sqlite3.Connection) -> CachedSnapshot | None:
    row = conn.execute("SELECT revision, saved_at, documents FROM snapshot").fetchone()
    if row is None:
        return None
    revision, saved_at, text = row
    documents = {k: v.encode("utf-8", "surrogateescape") for k, v in json.loads(text).items()}
    return CachedSnapshot(int(revision), float(saved_at), documents)
