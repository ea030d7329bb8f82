"""AuditStore on a SQLite file in the state dir: durable appends, bounded size, paged by seq."""

from __future__ import annotations

import asyncio
import logging
import sqlite3
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

import msgspec

from appliance.audit.events import AuditEvent
from appliance.sqlite_support import SqliteStore, SqliteWorker, StoreError

_log = logging.getLogger(__name__)

# seq is AUTOINCREMENT so a number is never reused, even after pruning the newest rows: a
# publisher (#5) that pages with since_seq() can keep "last seq sent" as its whole cursor.
_SCHEMA = """
CREATE TABLE IF NOT EXISTS audit_events (
    seq         INTEGER PRIMARY KEY AUTOINCREMENT,
    id          TEXT NOT NULL UNIQUE,
    kind        TEXT NOT NULL,
    time        REAL NOT NULL,
    actor       TEXT,
    org         TEXT,
    key_id      TEXT,
    request_id  TEXT,
    subject     TEXT,
    reason      TEXT,
    before_json TEXT,
    after_json  TEXT
);
CREATE INDEX IF NOT EXISTS audit_events_time ON audit_events (time);
CREATE INDEX IF NOT EXISTS audit_events_org_time ON audit_events (org, time);
CREATE INDEX IF NOT EXISTS audit_events_kind_time ON audit_events (kind, time);
CREATE INDEX IF NOT EXISTS audit_events_request_id ON audit_events (request_id);
"""
_SELECT = (
    "SELECT seq, id, kind, time, actor, org, key_id, request_id, subject, reason,"
    " before_json, after_json FROM audit_events"
)
# OR IGNORE: appending the same event id twice (a retry after an ambiguous error) is a no-op.
_INSERT = (
    "INSERT OR IGNORE INTO audit_events"
    " (id, kind, time, actor, org, key_id, request_id, subject, reason, before_json, after_json)"
    " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
)
_DAY_S = 86_400.0

_Row = tuple[Any, ...]
_Waiter = tuple[_Row, asyncio.Future[None]]


class SqliteAuditStore(SqliteStore):
    """Audit events in one table; `open()`/`close()` or `async with`.

    Appends arriving together are committed in one transaction (group commit): each append
    still returns only after its event is on disk, but a burst costs one fsync, not one each.
    Query times are `since <= time < until`. `before`/`after` come back as plain JSON values.
    """

    def __init__(
        self,
        path: Path,
        retention_days: float = 30,
        max_rows: int = 1_000_000,
        *,
        prune_every: int = 1000,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if retention_days <= 0 or max_rows < 1 or prune_every < 1:
            raise ValueError("retention_days, max_rows and prune_every must be positive")
        # FULL: the WAL is fsynced at every commit, so an appended event survives a power
        # cut, which is what "durable" promises an auditor; group commit pays for it.
        self._worker = SqliteWorker(
            path, schema=_SCHEMA, version=1, synchronous="FULL", name="audit"
        )
        self._retention_s = retention_days * _DAY_S
        self._max_rows = max_rows
        self._prune_every = prune_every
        self._clock = clock
        self._pending: list[_Waiter] = []
        self._writer: asyncio.Task[None] | None = None
        self._since_prune = 0
        self._closing = False

    async def open(self) -> None:
        self._closing = False
        await super().open()

    async def close(self) -> None:
        """Finish the appends already accepted, then close the file."""
        self._closing = True
        if self._writer is not None:
            await asyncio.wait({self._writer})  # not gather: cancelling close() must not cancel it
            self._writer = None
        await super().close()

    async def append(self, event: AuditEvent) -> None:
        """Durably record one event (committed before returning).

        TypeError if before/after are not JSON-able; StoreError if the file cannot be written.
        """
        if self._closing:
            raise StoreError(f"{self.path}: audit store is closed")
        row = _encode(event)
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._pending.append((row, done))
        if self._writer is None or self._writer.done():
            self._writer = asyncio.create_task(self._write_pending(), name="audit-writer")
        await done

    async def query(
        self,
        *,
        kind: str | None = None,
        org: str | None = None,
        request_id: str | None = None,
        since: float | None = None,
        until: float | None = None,
        limit: int = 100,
    ) -> list[AuditEvent]:
        """Events matching every given filter, newest first."""
        if limit <= 0:
            return []
        filters = [
            ("kind = ?", kind),
            ("org = ?", org),
            ("request_id = ?", request_id),
            ("time >= ?", since),
            ("time < ?", until),
        ]
        given = [(clause, value) for clause, value in filters if value is not None]
        where = " WHERE " + " AND ".join(c for c, _ in given) if given else ""
        sql = _SELECT + where + " ORDER BY time DESC, seq DESC LIMIT ?"
        params = (*(v for _, v in given), limit)
        rows = await self._worker.run("query", lambda conn: conn.execute(sql, params).fetchall())
        return [_decode(row) for row in rows]

    async def since_seq(self, seq: int, limit: int) -> list[tuple[int, AuditEvent]]:
        """Up to `limit` events with a seq greater than `seq`, in append order (for publishers)."""
        rows = await self._worker.run(
            "since_seq",
            lambda conn: conn.execute(
                _SELECT + " WHERE seq > ? ORDER BY seq LIMIT ?", (seq, max(limit, 0))
            ).fetchall(),
        )
        return [(row[0], _decode(row)) for row in rows]

    async def prune(self, now: float) -> int:
        """Delete events older than the retention, then the oldest (by seq) beyond max_rows."""
        return await self._worker.run("prune", lambda conn: self._prune(conn, now))

    async def _write_pending(self) -> None:
        # One writer task at a time drains everything queued while the last commit ran.
        while self._pending:
            batch, self._pending = self._pending, []
            due = self._since_prune + len(batch) >= self._prune_every
            try:
                await self._worker.run("append", partial(self._insert, batch=batch, prune=due))
            except Exception as exc:
                for _, done in batch:
                    if not done.done():
                        done.set_exception(exc)
                continue
            except BaseException:  # cancelled: the loop is going away
                for _, done in (*batch, *self._pending):
                    done.cancel()
                raise
            self._since_prune = 0 if due else self._since_prune + len(batch)
            for _, done in batch:
                if not done.done():  # its caller may have been cancelled meanwhile
                    done.set_result(None)

    # On the worker thread.

    def _insert(self, conn: sqlite3.Connection, *, batch: list[_Waiter], prune: bool) -> None:
        with conn:
            conn.executemany(_INSERT, [row for row, _ in batch])
        if prune:
            # Opportunistic, after the commit: a failure must not fail appends that landed.
            try:
                self._prune(conn, self._clock())
            except sqlite3.Error:
                _log.exception("audit store %s: prune failed", self.path)

    def _prune(self, conn: sqlite3.Connection, now: float) -> int:
        with conn:
            cutoff = now - self._retention_s
            removed = conn.execute("DELETE FROM audit_events WHERE time < ?", (cutoff,)).rowcount
            lo, hi = conn.execute("SELECT min(seq), max(seq) FROM audit_events").fetchone()
            # The seq span bounds the row count in O(log n); count exactly only when over.
            if lo is not None and hi - lo + 1 > self._max_rows:
                last_kept = conn.execute(
                    "SELECT seq FROM audit_events ORDER BY seq DESC LIMIT 1 OFFSET ?",
                    (self._max_rows - 1,),
                ).fetchone()
                if last_kept is not None:
                    removed += conn.execute(
                        "DELETE FROM audit_events WHERE seq < ?", last_kept
                    ).rowcount
        return removed


def _encode(event: AuditEvent) -> _Row:
    return (
        event.id,
        event.kind,
        event.time,
        event.actor,
        event.org,
        event.key_id,
        event.request_id,
        event.subject,
        event.reason,
        _to_json(event.before),
        _to_json(event.after),
    )


def _to_json(value: Any) -> str | None:
    return None if value is None else msgspec.json.encode(value).decode()


def _decode(row: _Row) -> AuditEvent:
    _seq, id_, kind, at, actor, org, key_id, request_id, subject, reason, before, after = row
    return AuditEvent(
        id=id_,
        kind=kind,
        time=at,
        actor=actor,
        org=org,
        key_id=key_id,
        request_id=request_id,
        subject=subject,
        reason=reason,
        before=None if before is None else msgspec.json.decode(before),
        after=None if after is None else msgspec.json.decode(after),
    )
