"""The usage outbox on a SQLite file in the state dir: group-committed, bounded, shareable.

Durability: WAL with synchronous=NORMAL. A commit is in the WAL file (the kernel's page cache)
when it returns, so it survives SIGKILL or any crash of the router process, which is what the
usage guarantee promises. A power cut or kernel crash may lose the last commits before the
next checkpoint; FULL would fsync every commit to cover that, at a cost the hot path can't pay.

Several router processes may share the file: writes take the lock up front (BEGIN IMMEDIATE)
and wait for it (busy_timeout), and the size bound lives in the file, kept by triggers, so every
process and `routerctl buffer replay` see the same count.

The WAL is bounded: a single-record commit appends ~7 pages (~28 KB), so SQLite's default
checkpoint at 1,000 pages lets it reach ~4 MB. Here the writer runs a PASSIVE checkpoint every
CHECKPOINT_COMMITS commits, after the appends of the commit that triggered it have returned
(a checkpoint fsyncs twice: the request whose record it follows must not wait for it), and
after a delete that empties the outbox (at most once per DRAIN_CHECKPOINT_S). The commits
after it wait for it, so the log is synced first on a thread of its own while they go on:
the checkpoint's own sync is then short (at concurrency 1, a sync of the whole log in the
checkpoint put one request in 24 a millisecond late: the router's p99). SQLite's own
checkpoint at WAL_PAGES catches large group commits, and the file is cut back to
WAL_LIMIT_BYTES when it restarts. Checkpoints stay on the writer's connection: only one run
between two writes catches up with the log, which is what lets the next write restart it.
"""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import partial
from itertools import compress
from pathlib import Path
from typing import Literal

from appliance.sqlite_support import SqliteStore, SqliteWorker, StoreError
from appliance.usage.buffer_report import TOPIC_ROWS_SQL, TopicRow
from appliance.usage.disk_sync import sync_path
from appliance.usage.ports import OutboxFull, OutboxItem, OutboxStats, Topic

OnFull = Literal["reject", "drop_oldest"]

_BUSY_MS = 10_000  # another worker's commit or a prune chunk takes milliseconds
_PRUNE_CHUNK = 5_000  # rows per prune transaction, so appends are never held up for long
CHECKPOINT_COMMITS = 24  # ~0.7 MB of WAL at one record per commit
WAL_PAGES = 256  # SQLite checkpoints in the commit past this many pages (1 MiB)
WAL_LIMIT_BYTES = 1024 * 1024  # size the WAL file is cut back to when it restarts
DRAIN_CHECKPOINT_S = 1.0  # an emptied outbox is checkpointed at most this often

# seq is AUTOINCREMENT so it is never reused, even after the newest rows are deleted:
# publishers keep "last seq sent" as their whole cursor. One transaction, so workers opening
# the file at once never see the size row without its triggers.
_SCHEMA = """
BEGIN IMMEDIATE;
CREATE TABLE IF NOT EXISTS outbox (
    seq        INTEGER PRIMARY KEY AUTOINCREMENT,
    topic      TEXT NOT NULL,
    key        TEXT NOT NULL,
    record_id  TEXT NOT NULL,
    payload    BLOB NOT NULL,
    created_at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS outbox_size (
    id      INTEGER PRIMARY KEY CHECK (id = 1),
    records INTEGER NOT NULL,
    bytes   INTEGER NOT NULL
);
INSERT OR IGNORE INTO outbox_size (id, records, bytes) VALUES (1, 0, 0);
CREATE TRIGGER IF NOT EXISTS outbox_size_insert AFTER INSERT ON outbox BEGIN
    UPDATE outbox_size SET records = records + 1, bytes = bytes + length(NEW.payload);
END;
CREATE TRIGGER IF NOT EXISTS outbox_size_delete AFTER DELETE ON outbox BEGIN
    UPDATE outbox_size SET records = records - 1, bytes = bytes - length(OLD.payload);
END;
CREATE TABLE IF NOT EXISTS usage_log (
    record_id  TEXT PRIMARY KEY,
    request_id TEXT,
    org        TEXT,
    created_at REAL NOT NULL,
    payload    BLOB NOT NULL
);
CREATE INDEX IF NOT EXISTS usage_log_created_at ON usage_log (created_at);
CREATE INDEX IF NOT EXISTS usage_log_org_request ON usage_log (org, request_id);
COMMIT;
"""
_INSERT = "INSERT INTO outbox (topic, key, record_id, payload, created_at) VALUES (?, ?, ?, ?, ?)"
# The request id a client knows (its own x-request-id, or the record id) is read from the
# record itself; OR IGNORE: a re-appended record keeps its first entry.
_LOG = (
    "INSERT OR IGNORE INTO usage_log (record_id, request_id, org, created_at, payload)"
    " VALUES (?1, CASE WHEN json_valid(CAST(?2 AS TEXT))"
    " THEN json_extract(CAST(?2 AS TEXT), '$.request_id') END, ?3, ?4, ?2)"
)
_PRUNE = (
    "DELETE FROM usage_log WHERE rowid IN"
    " (SELECT rowid FROM usage_log WHERE created_at < ? LIMIT ?)"
)

_Row = tuple[Topic, str, str, bytes, float]
_Waiter = tuple[_Row, asyncio.Future[None]]


@dataclass(frozen=True, slots=True)
class _Committed:
    accepted: list[bool]  # per pending append, in order; False = refused for size
    dropped: int
    bytes: int


class SqliteOutbox(SqliteStore):
    """Outbox (see ports.py) plus the usage lookup log; `open()`/`close()` or `async with`.

    Appends arriving within `batch_window_s` of each other, or while a commit is running,
    share one transaction; each append returns only after its transaction committed.
    """

    def __init__(
        self,
        path: Path,
        max_bytes: int,
        on_full: OnFull,
        *,
        batch_window_s: float = 0.002,
        on_drop: Callable[[int], None] | None = None,
        after_commit: Callable[[], None] | None = None,
        clock: Callable[[], float] = time.time,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        if max_bytes < 1 or batch_window_s < 0:
            raise ValueError("max_bytes must be positive and batch_window_s not negative")
        self._worker = SqliteWorker(
            path, schema=_SCHEMA, version=1, synchronous="NORMAL", name="outbox"
        )
        self._max_bytes = max_bytes
        self._on_full = on_full
        self._window = batch_window_s
        self._on_drop = on_drop
        self._after_commit = after_commit  # on the worker thread, after every append
        self._clock = clock
        self._monotonic = monotonic
        self._drain_checkpoint_at = float("-inf")
        self._since_checkpoint = 0  # commits
        self._checkpointer: asyncio.Task[None] | None = None
        self._log = Path(f"{path}-wal")
        self._pending: list[_Waiter] = []
        self._writer: asyncio.Task[None] | None = None
        self._closing = False
        self._bytes = 0  # as of this process's last transaction; the file has the exact figure
        self.commits = 0  # transactions that carried appends (for metrics and tests)
        self.appended = 0  # records those transactions stored

    @property
    def size_bytes(self) -> int:
        """Payload bytes in the outbox as of the last transaction this instance ran."""
        return self._bytes

    async def open(self) -> None:
        self._closing = False
        await super().open()
        await self._worker.run("open", _configure)
        self._bytes = (await self.stats()).bytes

    async def close(self) -> None:
        """Finish the appends already accepted, then close the file."""
        self._closing = True
        if self._writer is not None:
            await asyncio.wait({self._writer})  # not gather: cancelling close() must not cancel it
            self._writer = None
        if self._checkpointer is not None:
            await asyncio.wait({self._checkpointer})
        await super().close()

    async def append(self, topic: Topic, key: str, record_id: str, payload: bytes) -> None:
        """Committed (survives SIGKILL) when it returns; OutboxFull if refused for size."""
        if self._closing:
            raise StoreError(f"{self.path}: outbox is closed")
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._pending.append(((topic, key, record_id, payload, self._clock()), done))
        if self._writer is None:
            self._writer = asyncio.create_task(self._write_pending(), name="outbox-writer")
        await done

    async def peek(self, limit: int, after_seq: int = 0) -> list[OutboxItem]:
        """The oldest items after `after_seq`, in seq order."""
        rows = await self._worker.run(
            "peek",
            lambda conn: conn.execute(
                "SELECT seq, topic, key, record_id, payload, created_at FROM outbox"
                " WHERE seq > ? ORDER BY seq LIMIT ?",
                (after_seq, max(limit, 0)),
            ).fetchall(),
        )
        return [OutboxItem(*row) for row in rows]

    async def delete(self, seqs: Sequence[int]) -> None:
        """Remove acknowledged items (unknown seqs are ignored); checkpoint once drained."""
        if not seqs:
            return
        now = self._monotonic()
        checkpoint = now - self._drain_checkpoint_at >= DRAIN_CHECKPOINT_S
        records, self._bytes = await self._worker.run(
            "delete", partial(_delete, seqs=list(seqs), checkpoint=checkpoint)
        )
        if checkpoint and records == 0:
            self._drain_checkpoint_at = now

    async def stats(self) -> OutboxStats:
        return await self._worker.run("stats", _stats)

    async def topic_rows(self) -> list[TopicRow]:
        """Per topic: records, payload bytes and the oldest record's time (buffer_report)."""
        return await self._worker.run("topic_rows", _topic_rows)

    async def lookup(self, request_id: str, org: str) -> bytes | None:
        """An org's usage record by record id or request id (newest if several), else None.

        Scoped to the org in the query itself: another org's ids are indistinguishable from
        unknown ones.
        """
        row = await self._worker.run(
            "lookup",
            lambda conn: conn.execute(
                "SELECT payload FROM usage_log WHERE org = ? AND (record_id = ? OR request_id = ?)"
                " ORDER BY created_at DESC LIMIT 1",
                (org, request_id, request_id),
            ).fetchone(),
        )
        return None if row is None else bytes(row[0])

    async def prune_log(self, now: float, retention_s: float) -> int:
        """Delete lookup entries older than `retention_s`, in chunks; the number deleted."""
        cutoff = now - retention_s
        total = 0
        while True:
            # One chunk per call: appends queued on the worker run between chunks.
            removed = await self._worker.run("prune_log", partial(_prune_chunk, cutoff=cutoff))
            total += removed
            if removed < _PRUNE_CHUNK:
                return total

    async def _write_pending(self) -> None:
        # One writer task at a time; it drains everything queued while the last commit ran.
        try:
            if self._window > 0:
                await asyncio.sleep(self._window)  # let a burst gather into one transaction
            while self._pending:
                batch, self._pending = self._pending, []
                await self._commit(batch)
        except BaseException:  # cancelled: the loop is going away; no caller may hang
            for _, done in self._pending:
                done.cancel()
            raise
        finally:
            self._writer = None

    async def _commit(self, batch: list[_Waiter]) -> None:
        insert = partial(self._insert, rows=[row for row, _ in batch])
        try:
            result = await self._worker.run("append", insert)
        except Exception as exc:
            for _, done in batch:
                if not done.done():
                    done.set_exception(exc)
            return
        except BaseException:
            for _, done in batch:
                done.cancel()
            raise
        self._bytes = result.bytes
        self.commits += 1
        self.appended += sum(result.accepted)
        if result.dropped and self._on_drop is not None:
            self._on_drop(result.dropped)
        for (row, done), ok in zip(batch, result.accepted, strict=True):
            if done.done():  # its caller was cancelled; the record is stored regardless
                continue
            if ok:
                done.set_result(None)
            else:
                done.set_exception(
                    OutboxFull(
                        f"{self.path}: usage outbox is full ({result.bytes} of"
                        f" {self._max_bytes} bytes); a {len(row[3])}-byte record was refused"
                    )
                )
        self._checkpoint_if_due()

    def _checkpoint_if_due(self) -> None:
        # Its appends have returned: the checkpoint runs beside the commits that follow.
        self._since_checkpoint += 1
        if self._since_checkpoint < CHECKPOINT_COMMITS or self._checkpointer is not None:
            return
        self._since_checkpoint = 0
        self._checkpointer = asyncio.create_task(self._checkpoint(), name="outbox-checkpoint")

    async def _checkpoint(self) -> None:
        """Sync the log on a thread of its own, then checkpoint on the worker.

        The checkpoint syncs the log before it copies it, and every commit queued behind it
        waits: synced first while commits go on, the log has only the last few commits left
        to write then, so the wait is a fraction of a millisecond instead of several.
        """
        try:
            with contextlib.suppress(OSError):  # no log yet, or gone: the checkpoint will say
                await asyncio.to_thread(sync_path, self._log, data_only=True)
            # A full disk or a busy reader: SQLite's own checkpoint still bounds the WAL.
            with contextlib.suppress(StoreError):
                await self._worker.run("checkpoint", _checkpoint)
        finally:
            self._checkpointer = None

    # On the worker thread.

    def _insert(self, conn: sqlite3.Connection, *, rows: list[_Row]) -> _Committed:
        try:
            return self._insert_rows(conn, rows)
        finally:
            if self._after_commit is not None:
                self._after_commit()  # e.g. re-measure free disk, committed or refused

    def _insert_rows(self, conn: sqlite3.Connection, rows: list[_Row]) -> _Committed:
        # IMMEDIATE: take the write lock (waiting for other processes) before reading the size,
        # so the bound is checked against the figure no one else can change meanwhile.
        conn.execute("BEGIN IMMEDIATE")
        try:
            _, size = _size(conn)
            accepted = _admit(rows, size, self._max_bytes, drop=self._on_full == "drop_oldest")
            kept = list(compress(rows, accepted))
            # executemany: one C loop per table, not two Python calls per record.
            conn.executemany(_INSERT, kept)
            conn.executemany(
                _LOG, [(r[2], r[3], r[1] or None, r[4]) for r in kept if r[0] == "usage"]
            )
            size += sum(len(r[3]) for r in kept)
            dropped = _drop_oldest(conn, size - self._max_bytes) if size > self._max_bytes else 0
            size = _size(conn)[1]
            conn.commit()
        except BaseException:
            conn.rollback()
            raise
        return _Committed(accepted, dropped, size)


def _admit(rows: list[_Row], size: int, max_bytes: int, *, drop: bool) -> list[bool]:
    """Which rows go in: those that fit under the bound, or all that can (then trimmed)."""
    accepted: list[bool] = []
    for row in rows:
        length = len(row[3])
        fits = length <= max_bytes and (drop or size + length <= max_bytes)
        accepted.append(fits)
        size += length if fits else 0
    return accepted


def _size(conn: sqlite3.Connection) -> tuple[int, int]:
    records, size = conn.execute("SELECT records, bytes FROM outbox_size").fetchone()
    return int(records), int(size)


def _drop_oldest(conn: sqlite3.Connection, excess: int) -> int:
    """Delete the oldest records whose payloads add up to at least `excess` bytes."""
    freed, last = 0, None
    cursor = conn.execute("SELECT seq, length(payload) FROM outbox ORDER BY seq")
    try:
        for seq, length in cursor:
            freed, last = freed + length, seq
            if freed >= excess:
                break
    finally:
        cursor.close()
    if last is None:
        return 0
    return conn.execute("DELETE FROM outbox WHERE seq <= ?", (last,)).rowcount


def _configure(conn: sqlite3.Connection) -> None:
    conn.execute(f"PRAGMA busy_timeout={_BUSY_MS}")
    conn.execute(f"PRAGMA wal_autocheckpoint={WAL_PAGES}")
    conn.execute(f"PRAGMA journal_size_limit={WAL_LIMIT_BYTES}")


def _delete(conn: sqlite3.Connection, *, seqs: list[int], checkpoint: bool) -> tuple[int, int]:
    with conn:
        conn.executemany("DELETE FROM outbox WHERE seq = ?", [(s,) for s in seqs])
        records, size = _size(conn)
    if checkpoint and records == 0:
        _checkpoint(conn)
    return records, size


def _checkpoint(conn: sqlite3.Connection) -> None:
    # PASSIVE never waits for readers (buffer inspect, other workers); what it cannot copy
    # now, the next checkpoint will. fetchall: run it to the end, so no read lock is left.
    conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchall()


def _stats(conn: sqlite3.Connection) -> OutboxStats:
    records, size = _size(conn)
    oldest = conn.execute("SELECT created_at FROM outbox ORDER BY seq LIMIT 1").fetchone()
    return OutboxStats(records, size, None if oldest is None else oldest[0])


def _topic_rows(conn: sqlite3.Connection) -> list[TopicRow]:
    return [(str(t), int(n), int(b), o) for t, n, b, o in conn.execute(TOPIC_ROWS_SQL)]


def _prune_chunk(conn: sqlite3.Connection, *, cutoff: float) -> int:
    with conn:
        return conn.execute(_PRUNE, (cutoff, _PRUNE_CHUNK)).rowcount
