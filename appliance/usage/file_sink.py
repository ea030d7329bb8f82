"""Local sinks: a rotating JSON-lines file, stdout (for replay), and none (discard)."""

from __future__ import annotations

import asyncio
import contextlib
import os
import sys
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import BinaryIO

from appliance.usage.disk_sync import sync_path
from appliance.usage.ports import OutboxItem, SinkError


class FileSink:
    """Appends each record's JSON as one line; a batch is acknowledged once fsync'd.

    When the next record would take the file past `max_bytes`, `usage.jsonl` becomes
    `usage.jsonl.1`, `.1` becomes `.2` … up to `.keep` (older ones are deleted). All file
    I/O runs on one dedicated thread: the loop never waits on the disk, and batches are
    written in the order they were published.
    """

    name = "file"

    def __init__(self, path: str | Path, max_bytes: int, keep: int) -> None:
        if max_bytes < 1 or keep < 1:
            raise ValueError("max_bytes and keep must be at least 1")
        self.path = Path(path)
        self._max_bytes = max_bytes
        self._keep = keep
        self._executor: ThreadPoolExecutor | None = None
        self._file: BinaryIO | None = None
        self._size = 0

    async def open(self) -> None:
        """Create the directory and open the file for appending; SinkError if it cannot."""
        if self._executor is not None:
            return
        executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="usage-file-sink")
        try:
            await asyncio.get_running_loop().run_in_executor(executor, self._open_file)
        except BaseException:
            executor.shutdown(wait=False)
            raise
        self._executor = executor

    async def publish(self, items: Sequence[OutboxItem]) -> None:
        if self._executor is None:
            await self.open()
        assert self._executor is not None
        lines = [item.payload.rstrip(b"\n") + b"\n" for item in items]
        await asyncio.get_running_loop().run_in_executor(self._executor, self._write, lines)

    async def close(self) -> None:
        """Close the file after the writes already queued; idempotent."""
        executor, self._executor = self._executor, None
        if executor is None:
            return
        try:
            await asyncio.get_running_loop().run_in_executor(executor, self._close_file)
        finally:
            executor.shutdown(wait=False)

    # Everything below runs on the sink's thread.

    def _open_file(self) -> None:
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._file = self.path.open("ab")
            self._size = self._file.tell()
            sync_path(self.path.parent)  # the file's own entry must survive a crash too
        except OSError as exc:
            raise SinkError(f"{self.path}: cannot open usage file: {exc.strerror}") from None

    def _write(self, lines: list[bytes]) -> None:
        try:
            if self._file is None:
                self._open_file()
            for line in lines:
                if self._size and self._size + len(line) > self._max_bytes:
                    self._rotate()
                assert self._file is not None
                self._file.write(line)
                self._size += len(line)
            assert self._file is not None
            self._file.flush()
            os.fsync(self._file.fileno())
        except OSError as exc:
            # The file's state is unknown now: reopen at the next batch, which repeats this one.
            self._close_file()
            raise SinkError(f"{self.path}: cannot write usage file: {exc.strerror}") from None

    def _rotate(self) -> None:
        assert self._file is not None
        self._file.flush()
        os.fsync(self._file.fileno())
        self._file.close()
        self._file = None
        self._rotated(self._keep).unlink(missing_ok=True)
        for n in range(self._keep - 1, 0, -1):
            if self._rotated(n).exists():
                self._rotated(n).replace(self._rotated(n + 1))
        self.path.replace(self._rotated(1))
        self._open_file()

    def _rotated(self, n: int) -> Path:
        return self.path.with_name(f"{self.path.name}.{n}")

    def _close_file(self) -> None:
        file, self._file = self._file, None
        if file is not None:
            # Only after a failed write, which was already reported.
            with contextlib.suppress(OSError):
                file.close()


class StdoutSink:
    """Writes each record's JSON as one line to stdout (or `stream`), for `buffer replay`."""

    name = "stdout"

    def __init__(self, stream: BinaryIO | None = None) -> None:
        self._stream = stream

    async def open(self) -> None:
        return None

    async def publish(self, items: Sequence[OutboxItem]) -> None:
        data = b"".join(item.payload.rstrip(b"\n") + b"\n" for item in items)
        await asyncio.to_thread(self._write, data)

    async def close(self) -> None:
        return None

    def _write(self, data: bytes) -> None:
        stream = self._stream if self._stream is not None else sys.stdout.buffer
        try:
            stream.write(data)
            stream.flush()
        except OSError as exc:  # e.g. a closed pipe: the records must stay in the outbox
            raise SinkError(f"stdout: cannot write: {exc.strerror}") from None


class NoneSink:
    """Acknowledges and discards every record (`sink = "none"`): the outbox stays small."""

    name = "none"

    async def open(self) -> None:
        return None

    async def publish(self, items: Sequence[OutboxItem]) -> None:
        del items  # discarding is this sink's whole job

    async def close(self) -> None:
        return None
