"""One SQLite connection on one dedicated thread, shared by the SQLite-backed stores.

The router's loop must never wait on disk, so every statement runs on a worker thread. One
thread per store (not the loop's default pool) keeps the connection on the thread that made
it, which is what `sqlite3` wants, and serialises statements without a lock.
"""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Literal, Self, TypeVar

T = TypeVar("T")

Synchronous = Literal["NORMAL", "FULL"]

_WAL_PAGES = 256  # pages of 4 KiB: a checkpoint at ~1 MiB of write-ahead log
_WAL_LIMIT_BYTES = 1024 * 1024


class StoreError(RuntimeError):
    """A SQLite store could not be opened or used; the message names the file."""


class SqliteStore:
    """A store on one SqliteWorker: its path, open/close, and `async with store:`."""

    _worker: SqliteWorker

    @property
    def path(self) -> Path:
        return self._worker.path

    async def open(self) -> None:
        """Create or open the file; StoreError naming the path if it is corrupt or unwritable."""
        await self._worker.open()

    async def close(self) -> None:
        await self._worker.close()

    async def __aenter__(self) -> Self:
        await self.open()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()


class SqliteWorker:
    """Owns a connection to `path` and runs functions on it, one at a time, off the loop."""

    def __init__(
        self, path: Path, *, schema: str, version: int, synchronous: Synchronous, name: str
    ) -> None:
        self.path = path
        self._schema = schema
        self._version = version
        self._synchronous = synchronous
        self._name = name
        self._executor: ThreadPoolExecutor | None = None
        self._conn: sqlite3.Connection | None = None

    async def open(self) -> None:
        """Create parent dirs and the file, apply pragmas and schema; StoreError if it cannot."""
        if self._executor is not None:
            raise StoreError(f"{self.path}: {self._name} store is already open")
        executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"sqlite-{self._name}")
        try:
            await asyncio.get_running_loop().run_in_executor(executor, self._connect)
        except BaseException:
            executor.shutdown(wait=False)
            raise
        self._executor = executor

    async def close(self) -> None:
        """Close the connection after the statements already queued; idempotent."""
        executor, self._executor = self._executor, None
        if executor is None:
            return
        try:
            # FIFO: queued work finishes first, then the connection closes on its own thread.
            await asyncio.get_running_loop().run_in_executor(executor, self._disconnect)
        finally:
            executor.shutdown(wait=False)

    async def run(self, op: str, fn: Callable[[sqlite3.Connection], T]) -> T:
        """Run `fn(connection)` on the store's thread; sqlite3 errors become StoreError."""
        if self._executor is None:
            raise StoreError(f"{self.path}: {self._name} store is not open ({op})")
        return await asyncio.get_running_loop().run_in_executor(self._executor, self._call, op, fn)

    # Everything below runs on the worker thread.

    def _call(self, op: str, fn: Callable[[sqlite3.Connection], T]) -> T:
        if self._conn is None:
            raise StoreError(f"{self.path}: {self._name} store is not open ({op})")
        try:
            return fn(self._conn)
        except sqlite3.Error as exc:
            raise StoreError(f"{self.path}: {self._name} store: {op} failed: {exc}") from exc

    def _connect(self) -> None:
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise StoreError(
                f"{self.path}: cannot create the {self._name} store's directory: {exc}"
            ) from exc
        conn: sqlite3.Connection | None = None
        try:
            conn = sqlite3.connect(self.path, timeout=5.0)
            self._prepare(conn)
        except (sqlite3.Error, StoreError) as exc:
            if conn is not None:
                conn.close()
            if isinstance(exc, StoreError):
                raise
            raise StoreError(
                f"{self.path}: cannot open the {self._name} store "
                f"(corrupt, not a SQLite file, or not writable): {exc}"
            ) from exc
        self._conn = conn

    def _prepare(self, conn: sqlite3.Connection) -> None:
        # WAL: readers never block the writer, and a commit is one sequential append.
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute(f"PRAGMA synchronous={self._synchronous}")
        # A small state dir must not fill by itself: checkpoint at ~1 MiB of log (SQLite's
        # default is ~4 MiB) and cut the file back to that size after each checkpoint.
        conn.execute(f"PRAGMA wal_autocheckpoint={_WAL_PAGES}")
        conn.execute(f"PRAGMA journal_size_limit={_WAL_LIMIT_BYTES}")
        (found,) = conn.execute("PRAGMA user_version").fetchone()
        if found > self._version:
            raise StoreError(
                f"{self.path}: {self._name} store has schema version {found}, newer than "
                f"{self._version}; it was written by a newer routerctl"
            )
        conn.executescript(self._schema)
        # Writing the version on every open also proves the file is writable, here, not at
        # the first request that needs it.
        with conn:
            conn.execute(f"PRAGMA user_version={self._version}")

    def _disconnect(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            conn.close()
