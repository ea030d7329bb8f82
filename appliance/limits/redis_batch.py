"""Calls made in the same turn of the event loop share one Redis pipeline (auto-pipelining).

Each request still waits for exactly one round trip, but under load the admissions of many
requests travel in one write and come back in one read, sparing the per-command work of the
client (a connection checkout, packing, a send and a receive system call each) that costs
far more than the script itself. A lone call is sent on the next turn of the loop: no wait.
"""

from __future__ import annotations

import asyncio
import copy
from collections.abc import Awaitable, Callable
from typing import Any

Call = tuple[list[str], list[Any]]  # the KEYS and ARGV of one EVALSHA
# Sends calls in one round trip; replies in order, a failed call's as an exception object.
Send = Callable[[list[Call]], Awaitable[list[Any]]]


class AutoPipeline:
    def __init__(self, send: Send) -> None:
        self._send = send
        self._pending: list[tuple[Call, asyncio.Future[Any]]] = []
        self._flushes: set[asyncio.Task[None]] = set()

    def call(self, call: Call) -> asyncio.Future[Any]:
        """The reply of `call`, sent with every other call made before the loop turns."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Any] = loop.create_future()
        if not self._pending:
            loop.call_soon(self._flush)
        self._pending.append((call, future))
        return future

    def _flush(self) -> None:
        batch, self._pending = self._pending, []
        task = asyncio.create_task(self._run(batch), name="limits-pipeline")
        self._flushes.add(task)  # a reference until it is done
        task.add_done_callback(self._flushes.discard)

    async def _run(self, batch: list[tuple[Call, asyncio.Future[Any]]]) -> None:
        try:
            replies = await self._send([call for call, _ in batch])
        except asyncio.CancelledError:
            for _, future in batch:
                future.cancel()  # nobody waits forever for a flush that was stopped
            raise
        except Exception as exc:  # every caller raises it (a copy each: one traceback each)
            replies = [copy.copy(exc) for _ in batch]
        for (_, future), reply in zip(batch, replies, strict=True):
            if future.done():  # the caller gave up (cancelled)
                continue
            if isinstance(reply, BaseException):
                future.set_exception(reply)
            else:
                future.set_result(reply)
